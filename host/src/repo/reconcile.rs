//! Start-of-run reconciliation: settle whatever an interrupted run left half-done.
//!
//! Runs before every command that writes, holding the journal lock, so nothing else is
//! in flight. For each object the journal left in a transient state:
//! - `uploading`: if the backend has it with the expected size and its bytes hash to the
//!   recorded hash, the upload completed: keep it (`uploaded`). Otherwise whatever is there
//!   is a partial object of ours: delete it and forget the object and its blobs, so their
//!   data is uploaded again. Unfinished uploads of those names are aborted too.
//! - `deleting`: delete again (deleting is idempotent), then forget.
//!
//! Objects the journal has no record of are never touched here: they may belong to another
//! client. They are `cairn verify`'s and `cairn repair`'s business.

use anyhow::Result;

use crate::ids::Id;
use crate::journal::State;
use crate::repo::Repository;

#[derive(Default, Debug)]
pub struct Report {
    /// Interrupted uploads found complete and kept.
    pub kept: u64,
    pub kept_bytes: u64,
    /// Partial or missing objects forgotten (their data will be uploaded again).
    pub discarded: u64,
    /// Deletions completed.
    pub deleted: u64,
    /// Unfinished uploads aborted.
    pub aborted: u64,
}

pub async fn reconcile(repo: &Repository) -> Result<Report> {
    let mut report = Report::default();
    // Temporary packs of a dead run: their blobs were never committed as uploaded.
    let tmp = repo.tmp_dir();
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    let backend = &repo.backend;
    let journal = &repo.journal;

    let uploading = journal.objects_in_state(State::Uploading)?;
    if !uploading.is_empty() {
        let names: std::collections::HashSet<&str> =
            uploading.iter().map(|o| o.name.as_str()).collect();
        for (id, name, _) in backend.list_incomplete("").await? {
            if names.contains(name.as_str()) {
                backend.abort_incomplete(&id).await?;
                report.aborted += 1;
            }
        }
    }
    for obj in uploading {
        let complete = match backend.stat(&obj.name).await? {
            Some(info) if info.size == obj.size => match obj.hash {
                Some(hash) => {
                    let data = backend.read(&obj.name, 0, obj.size).await?;
                    Id::of_bytes(&data) == hash
                }
                None => true,
            },
            Some(_) => false,
            None => {
                journal.forget_object(&obj.name)?;
                report.discarded += 1;
                continue;
            }
        };
        if complete {
            journal.set_state(&obj.name, State::Uploaded)?;
            report.kept += 1;
            report.kept_bytes += obj.size;
        } else {
            tracing::warn!(
                "removing partial upload {} left by an interrupted run",
                obj.name
            );
            journal.set_state(&obj.name, State::Deleting)?;
            backend.delete(std::slice::from_ref(&obj.name)).await?;
            journal.forget_object(&obj.name)?;
            report.discarded += 1;
        }
    }
    for obj in journal.objects_in_state(State::Deleting)? {
        backend.delete(std::slice::from_ref(&obj.name)).await?;
        journal.forget_object(&obj.name)?;
        report.deleted += 1;
    }
    if report.kept + report.discarded + report.deleted + report.aborted > 0 {
        tracing::info!(
            "resumed after an interruption: kept {} finished upload(s) ({} bytes), discarded {} partial, \
             finished {} deletion(s), aborted {} unfinished upload(s)",
            report.kept,
            report.kept_bytes,
            report.discarded,
            report.deleted,
            report.aborted
        );
    }
    Ok(report)
}
