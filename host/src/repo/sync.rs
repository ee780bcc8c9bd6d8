//! Bringing the journal up to date with objects other clients (or a lost journal) wrote:
//! index objects (which blobs live in which packs), snapshots, and key files
//! (`keys::sync_keys`). All are small, so this runs at every open and costs three listings
//! when nothing is new.

use anyhow::Result;

use crate::ids::Id;
use crate::journal::ObjectKind;
use crate::repo::Repository;
use crate::repo::format::{self, IndexFile, ObjectName, ReadObjectError, WholeObject};

pub async fn sync_remote(repo: &Repository) -> Result<()> {
    let journal = &repo.journal;
    let known: std::collections::HashSet<String> =
        journal.objects_of_kind(ObjectKind::Index)?.into_iter().map(|o| o.name).collect();
    for obj in repo.backend.list("index/").await? {
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
    for obj in repo.backend.list("snapshots/").await? {
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
    crate::repo::keys::sync_keys(repo).await
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
