//! Bringing the journal up to date with objects other clients (or a lost journal) wrote:
//! index objects (which blobs live in which packs) and snapshots. Both are small, so this
//! runs at every open and costs two listings when nothing is new.

use anyhow::{Context, Result, bail};

use crate::ids::Id;
use crate::journal::ObjectKind;
use crate::repo::Repository;
use crate::repo::format::{self, IndexFile, Snapshot};

pub async fn sync_remote(repo: &Repository) -> Result<()> {
    let journal = &repo.journal;
    let known: std::collections::HashSet<String> =
        journal.objects_of_kind(ObjectKind::Index)?.into_iter().map(|o| o.name).collect();
    for obj in repo.backend.list("index/").await? {
        if known.contains(&obj.name) {
            continue;
        }
        let (id, bytes) = fetch_checked(repo, &obj.name).await?;
        let index: IndexFile = format::open_object(&repo.key, format::AAD_INDEX, &bytes, false)
            .with_context(|| format!("index {} is damaged; run `cairn verify`", obj.name))?;
        let mut packs = Vec::new();
        for p in &index.packs {
            let name = format::pack_name(&p.id);
            journal.record_present(&name, ObjectKind::Pack, p.size, Some(&p.id), &p.entries)?;
            packs.push(name);
        }
        journal.record_present(&obj.name, ObjectKind::Index, obj.size, Some(&id), &[])?;
        journal.mark_indexed(&packs, &obj.name)?;
    }

    let known: std::collections::HashSet<Id> = journal.snapshots()?.into_iter().map(|(id, _)| id).collect();
    for obj in repo.backend.list("snapshots/").await? {
        let Some(id) = format::id_of_name(&obj.name) else {
            continue;
        };
        if known.contains(&id) {
            continue;
        }
        let (_, bytes) = fetch_checked(repo, &obj.name).await?;
        let snap: Snapshot = format::open_object(&repo.key, format::AAD_SNAPSHOT, &bytes, false)
            .with_context(|| format!("snapshot {} is damaged", obj.name))?;
        journal.add_snapshot(&id, &snap)?;
        journal.record_present(&obj.name, ObjectKind::Snapshot, obj.size, Some(&id), &[])?;
    }
    Ok(())
}

/// Reads a content-addressed object and checks that its bytes match its name.
pub async fn fetch_checked(repo: &Repository, name: &str) -> Result<(Id, Vec<u8>)> {
    let bytes = repo.backend.read_all(name).await?;
    let id = Id::of_bytes(&bytes);
    if format::id_of_name(name) != Some(id) {
        bail!("object {name} does not match its name (its content was altered); run `cairn verify`");
    }
    Ok((id, bytes))
}
