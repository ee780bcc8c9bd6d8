//! Bringing the journal up to date with objects other clients (or a lost journal) wrote:
//! index objects (which blobs live in which packs), snapshots, and key files
//! (`keys::sync_keys`). All are small, so this runs at every open and costs three listings
//! when nothing is new.
//!
//! Under a repository lock the sync also forgets: index objects the journal knows but the
//! listing no longer has (another machine's prune replaced them), the packs no remaining
//! index lists (deduplication must never trust a pruned pack), and snapshots forgotten
//! elsewhere. New index objects are learned first, since they may list kept packs again.
//! Without a lock (listing snapshots) nothing is forgotten: a prune may be half way.

use anyhow::Result;

use crate::ids::Id;
use std::collections::HashSet;

use crate::journal::{ObjectKind, State};
use crate::plugin::ObjectInfo;
use crate::repo::Repository;
use crate::repo::format::{self, IndexFile, ObjectName, ReadObjectError, WholeObject};

pub async fn sync_remote(repo: &Repository) -> Result<()> {
    let journal = &repo.journal;
    let known: std::collections::HashSet<String> =
        journal.objects_of_kind(ObjectKind::Index)?.into_iter().map(|o| o.name).collect();
    let listed_indexes = repo.backend.list("index/").await?;
    for obj in &listed_indexes {
        // Foreign names are never read: `verify` reports them.
        if known.contains(&obj.name) || !matches!(ObjectName::parse(&obj.name), Some(ObjectName::Index(_))) {
            continue;
        }
        let Some((id, bytes)) = fetch_checked(repo, WholeObject::Index, &obj.name).await? else {
            continue;
        };
        match format::open_object::<IndexFile>(&repo.key, format::AAD_INDEX, &bytes, false) {
            Ok(index) if format::id_of_name(&obj.name) == Some(id) => {
                journal.record_index(&obj.name, obj.size, &id, &index)?
            }

            // A damaged object must not stop every command: skip it, and say so.
            _ => tracing::warn!("skipping damaged index object {}; `cairn repair` deals with it", obj.name),
        }
    }

    let known: std::collections::HashSet<Id> = journal.snapshots()?.into_iter().map(|(id, _)| id).collect();
    let listed_snapshots = repo.backend.list("snapshots/").await?;
    for obj in &listed_snapshots {
        let Some(ObjectName::Snapshot(id)) = ObjectName::parse(&obj.name) else {
            continue;
        };
        if known.contains(&id) {
            continue;
        }
        let Some((actual, bytes)) = fetch_checked(repo, WholeObject::Snapshot, &obj.name).await? else {
            continue;
        };
        match format::open_snapshot(&repo.key, &bytes) {
            Ok(snap) if actual == id => {
                journal.add_snapshot(&id, &snap)?;
                journal.record_present(&obj.name, ObjectKind::Snapshot, obj.size, Some(&id), &[])?;
            }
            Err(e) if actual == id && e.downcast_ref::<format::NewerSnapshot>().is_some() => {
                tracing::warn!("skipping snapshot object {}: {e}", obj.name)
            }
            _ => {
                tracing::warn!("skipping damaged snapshot object {}; `cairn repair` deals with it", obj.name)
            }
        }
    }
    if repo.holds_remote_lock() {
        forget_vanished(repo, &listed_indexes, &listed_snapshots).await?;
    }
    crate::repo::keys::sync_keys(repo).await
}

/// The forgetting half of the sync (see the module doc). Only objects in a settled state
/// are forgotten: `uploading` and `deleting` ones are reconcile's.
async fn forget_vanished(repo: &Repository, indexes: &[ObjectInfo], snapshots: &[ObjectInfo]) -> Result<()> {
    let journal = &repo.journal;
    let settled =
        |state: State| matches!(state, State::Uploaded | State::Verified | State::Damaged | State::Retired);
    let listed: HashSet<&str> = indexes.iter().chain(snapshots).map(|o| o.name.as_str()).collect();
    let gone_indexes: Vec<String> = journal
        .objects_of_kind(ObjectKind::Index)?
        .into_iter()
        .filter(|o| settled(o.state) && !listed.contains(o.name.as_str()))
        .map(|o| o.name)
        .collect();
    let mut gone_snapshots = Vec::new();
    for (id, _) in journal.snapshots()? {
        let name = format::snapshot_name(&id);
        let state = journal.object(&name)?.map(|o| o.state);
        if !listed.contains(name.as_str()) && state.is_none_or(settled) {
            gone_snapshots.push(id);
        }
    }
    // This client's packs that wait for their first index (a run died before writing it):
    // no index of another machine's lists them, so a prune may have taken them as garbage.
    let mut gone_packs = Vec::new();
    for pack in journal.unindexed_packs()? {
        if repo.backend.stat(&pack.name).await?.is_none() {
            gone_packs.push(pack.name);
        }
    }
    for pack in &gone_packs {
        journal.forget_object(pack)?;
    }
    if gone_indexes.is_empty() && gone_snapshots.is_empty() {
        return Ok(());
    }
    let f = journal.forget_vanished(&gone_indexes, &gone_snapshots)?;
    tracing::info!(
        "the repository changed elsewhere: forgot {} index object(s), {} pack(s) no index lists any more, {} snapshot(s); \
         {} file(s) whose chunks are gone will be read again",
        f.indexes,
        f.packs + gone_packs.len() as u64,
        f.snapshots,
        f.cached_files
    );
    Ok(())
}

pub fn sync_remote_blocking(repo: &Repository, rt: &tokio::runtime::Handle) -> Result<()> {
    rt.block_on(sync_remote(repo))
}

/// Reads a content-addressed object: its bytes and their hash (which should be its name).
/// `None` (with a warning) when it is larger than its kind may be: like a damaged object, it
/// must not stop every command, and it is never downloaded.
pub async fn fetch_checked(
    repo: &Repository,
    kind: WholeObject,
    name: &str,
) -> Result<Option<(Id, Vec<u8>)>> {
    match format::read_object(&repo.backend, kind, name).await {
        Ok(bytes) => Ok(Some((Id::of_bytes(&bytes), bytes))),
        Err(e @ ReadObjectError::TooLarge { .. }) => {
            tracing::warn!("skipping {}: {e}; `cairn repair` deals with it", crate::untrusted::escape(name));
            Ok(None)
        }
        Err(ReadObjectError::Backend(e)) => Err(e.into()),
    }
}
