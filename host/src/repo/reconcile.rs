//! Start-of-run reconciliation: settle whatever an interrupted run left half-done.
//!
//! Runs before every command that writes, holding the journal lock, so nothing else is
//! in flight. For each object the journal left in a transient state:
//! - `uploading`: if the backend has it with the expected size and its bytes hash to the
//!   recorded hash, the upload completed: keep it (`uploaded`). Otherwise whatever is there
//!   is a partial object of ours: delete it. If the finished pack is still whole in the
//!   local `tmp/` folder, upload it from there; else forget the object and its blobs, so
//!   their data is packed again. Unfinished uploads of those names are aborted too.
//! - `deleting`: delete again (deleting is idempotent), then forget; except a pack or index
//!   object still there, whose deletion (an interrupted prune's) is cancelled: see below.
//!
//! Objects the journal has no record of are never touched here: they may belong to another
//! client. They are `cairn verify`'s and `cairn repair`'s business.

use anyhow::Result;

use crate::error::IoAt;
use crate::ids::Id;
use crate::journal::{ObjectKind, State};
use crate::repo::Repository;
use crate::repo::format::ObjectName;
use crate::untrusted::escape;

#[derive(Default, Debug)]
pub struct Report {
    /// Interrupted uploads found complete and kept.
    pub kept: u64,
    pub kept_bytes: u64,
    /// Finished packs found whole in the local tmp/ folder and uploaded from there.
    pub resumed: u64,
    /// Partial or missing objects forgotten (their data will be uploaded again).
    pub discarded: u64,
    /// Deletions completed.
    pub deleted: u64,
    /// Unfinished uploads aborted.
    pub aborted: u64,
    /// Deletions of packs and index objects an interrupted prune planned, cancelled.
    pub cancelled: u64,
}

impl Report {
    /// Whether an earlier run left anything to settle.
    pub fn interrupted(&self) -> bool {
        self.kept + self.resumed + self.discarded + self.deleted + self.aborted + self.cancelled > 0
    }
}

/// After an interruption: names remote objects the journal does not know (after syncing
/// other clients' indexes and snapshots). They are reported, never deleted here; they may
/// be another client's work in progress. `cairn verify` and `cairn repair` deal with them.
/// Names outside cairn's naming scheme are foreign: counted and shown escaped, not returned.
pub async fn report_unknown(repo: &Repository) -> Result<Vec<String>> {
    let mut unknown = Vec::new();
    let mut foreign = Vec::new();
    for prefix in ["data/", "index/", "snapshots/", "keys/"] {
        for obj in repo.backend.list(prefix).await? {
            if ObjectName::parse(&obj.name).is_none() {
                foreign.push(obj.name);
            } else if repo.journal.object(&obj.name)?.is_none() {
                unknown.push(obj.name);
            }
        }
    }
    if !unknown.is_empty() {
        tracing::warn!(
            "{} object(s) in the repository are not in this journal (another client's, or from a lost \
             journal), e.g. {}; they are left alone",
            unknown.len(),
            unknown[0]
        );
    }
    if !foreign.is_empty() {
        tracing::warn!(
            "{} name(s) in the repository are not cairn's (foreign files), e.g. {}; they are left alone",
            foreign.len(),
            escape(&foreign[0])
        );
    }
    Ok(unknown)
}

/// Settles what an interrupted run left. With `writes` false (a command that only reads)
/// nothing is changed: partial objects are left as they are (and reported by `verify`). In
/// an append-only repository (deletes not granted) nothing is deleted or aborted, but a
/// finished pack whose upload never landed is still uploaded from `tmp/` (never replacing
/// anything: the backend's upload rule sees to that).
pub async fn reconcile(repo: &Repository, writes: bool) -> Result<Report> {
    // Local temporary packs are ours to clear; remote garbage stays in an append-only
    // repository (deletes are not granted).
    let clear_tmp = writes;
    let deletes = writes && repo.backend.can_delete();
    let mut report = Report::default();
    let backend = &repo.backend;
    let journal = &repo.journal;
    let tmp = repo.tmp_dir();

    // Unfinished uploads of names the journal knows are ours: left by a dead process, or
    // by a plugin instance that crashed mid-upload before its retry succeeded.
    for (id, name, _) in backend.list_incomplete("").await? {
        if deletes && journal.object(&name)?.is_some() {
            backend.abort_incomplete(&id).await?;
            report.aborted += 1;
        }
    }
    let uploading = journal.objects_in_state(State::Uploading)?;
    for obj in uploading {
        let remote = backend.stat(&obj.name).await?;
        let complete = match (&remote, obj.hash) {
            (Some(info), Some(hash)) if info.size == obj.size => {
                Id::of_bytes(&backend.read(&obj.name, 0, obj.size).await?) == hash
            }
            (Some(info), None) => info.size == obj.size,
            _ => false,
        };
        if complete {
            journal.confirm_upload(&obj.name)?;
            report.kept += 1;
            report.kept_bytes += obj.size;
            continue;
        }
        if !writes {
            continue;
        }
        if remote.is_some() && !deletes {
            // Append-only: the partial or foreign object under this name stays (verify and
            // repair list it), and the journal stops counting on it, so its data is packed
            // again under another name rather than deduplicated against bytes that are not there.
            tracing::warn!(
                "{} holds other bytes than the interrupted run uploaded, and this repository is append-only: \
                 left as it is; its data will be stored again",
                obj.name
            );
            journal.forget_object(&obj.name)?;
            report.discarded += 1;
            continue;
        }
        if remote.is_some() {
            tracing::warn!("removing partial upload {} left by an interrupted run", obj.name);
            journal.begin_discard(&obj.name)?;
            backend.delete(std::slice::from_ref(&obj.name)).await?;
            journal.upload_again(&obj.name)?;
        }
        // A pack that was finished locally but not (fully) uploaded is still in tmp/:
        // upload it rather than pack its data again.
        if obj.kind == ObjectKind::Pack
            && let Some(hash) = obj.hash
            && let Some(local) = intact_local_pack(&tmp, &hash, obj.size)
        {
            backend.upload_file(&obj.name, &local, obj.size, false).await?;
            if backend.stat(&obj.name).await?.is_some_and(|i| i.size == obj.size) {
                journal.confirm_upload(&obj.name)?;
                report.resumed += 1;
                report.kept_bytes += obj.size;
                continue;
            }
        }
        journal.forget_object(&obj.name)?;
        report.discarded += 1;
    }
    for obj in journal.objects_in_state(State::Deleting)? {
        if !deletes {
            break;
        }
        if matches!(obj.kind, ObjectKind::Pack | ObjectKind::Index) && whole(repo, &obj).await? {
            // An interrupted prune's deletion of a whole object is cancelled, not rolled
            // forward: since it was planned, its exclusive lock went stale and other machines
            // may have backed up against what the plan found unused (prune deletes index
            // objects before packs, so every pack a remaining index lists still exists). The
            // next prune plans again. (A partial upload that `repair` was deleting is not
            // whole: its deletion goes on.)
            journal.cancel_delete(&obj.name)?;
            report.cancelled += 1;
            continue;
        }
        backend.delete(std::slice::from_ref(&obj.name)).await?;
        journal.confirm_delete(&obj.name)?;
        report.deleted += 1;
    }
    // Whatever is left in tmp/ belongs to no recorded object: packs being filled when the
    // run died. Their data is read again from the sources.
    if clear_tmp && tmp.exists() {
        std::fs::remove_dir_all(&tmp).at(crate::error::Role::TemporaryPacks, &tmp)?;
    }
    if report.interrupted() {
        tracing::info!(
            "resumed after an interruption: kept {} finished upload(s), uploaded {} finished pack(s) from \
             local disk ({} bytes in all), discarded {} partial, finished {} deletion(s), cancelled {} \
             deletion(s) of an interrupted prune (the next prune plans again), aborted {} unfinished upload(s)",
            report.kept,
            report.resumed,
            report.kept_bytes,
            report.discarded,
            report.deleted,
            report.cancelled,
            report.aborted
        );
    }
    Ok(report)
}

/// Whether the backend holds `obj` whole: the recorded size, and bytes that hash to the
/// recorded hash.
async fn whole(repo: &Repository, obj: &crate::journal::ObjectRow) -> Result<bool> {
    let Some(hash) = obj.hash else { return Ok(false) };
    match repo.backend.stat(&obj.name).await? {
        Some(info) if info.size == obj.size && obj.size > 0 => {
            Ok(Id::of_bytes(&repo.backend.read(&obj.name, 0, obj.size).await?) == hash)
        }
        _ => Ok(false),
    }
}

/// The local copy of a finished pack, if it is whole (right size and hash).
fn intact_local_pack(tmp: &std::path::Path, hash: &Id, size: u64) -> Option<std::path::PathBuf> {
    let path = tmp.join(crate::engine::packer::finished_file_name(hash));
    let meta = std::fs::metadata(&path).ok()?;
    if meta.len() != size {
        return None;
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(&path).ok()?).ok()?;
    (Id(*hasher.finalize().as_bytes()) == *hash).then_some(path)
}
