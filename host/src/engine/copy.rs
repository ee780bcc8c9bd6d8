//! Copying snapshots into another repository (`cairn copy`).
//!
//! Blob ids are keyed with each repository's own id key, so the same chunk has different ids
//! in the two repositories: a copied snapshot's trees are rewritten bottom-up with the
//! target's ids. Each chunk is read from the source (authenticated), hashed and sealed with
//! the target's key and stored only when the target lacks it, through the same packer,
//! uploader and journal states as a backup; then index objects; then the snapshot object,
//! last. A copy killed at any point is finished by the next run: uploaded packs are in the
//! target's journal (their chunks are not sent again), and a snapshot already in the target
//! is recognised and skipped.
//!
//! So that a rerun or the copy of a next snapshot does not download chunks the target
//! already has, the target's state folder keeps a map from source ids to target ids (a
//! cache: a lost or stale map only costs reading the chunk again).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rusqlite::{OptionalExtension, params};

use crate::engine::backup::{write_index, write_snapshot};
use crate::engine::packer::{Dedup, Packing};
use crate::engine::tree::{TreeReader, read_blob};
use crate::engine::upload::UploadStats;
use crate::ids::Id;
use crate::repo::Repository;
use crate::repo::format::{self, BlobKind, Snapshot, Tree};
use crate::untrusted::escape_bytes;

pub struct Settings {
    pub compression: i32,
    pub pack_size: u64,
}

/// What a copy did.
#[derive(Default)]
pub struct Outcome {
    /// Source snapshot id and the id of its copy in the target.
    pub copied: Vec<(Id, Id)>,
    /// Source snapshots the target already held a copy of.
    pub skipped: Vec<Id>,
    pub upload: UploadStats,
    /// Chunks (data and trees) the target lacked, and their plaintext bytes.
    pub blobs_added: u64,
    pub bytes_added: u64,
}

/// What identifies a snapshot across repositories: its tree id differs (ids are keyed per
/// repository) and its parent is not carried over, but time (in nanoseconds), host, user,
/// sources, tags and whether it is partial are copied as they are.
fn same_snapshot(a: &Snapshot, b: &Snapshot) -> bool {
    (a.time_ns, &a.hostname, &a.username, &a.sources, &a.tags, a.partial)
        == (b.time_ns, &b.hostname, &b.username, &b.sources, &b.tags, b.partial)
}

/// Copies `chosen` source snapshots (oldest first) into `target`, skipping those it holds.
pub fn run(
    source: &Repository,
    target: &Repository,
    rt: &tokio::runtime::Handle,
    mut chosen: Vec<(Id, Snapshot)>,
    settings: &Settings,
) -> Result<Outcome> {
    if source.params.id == target.params.id {
        bail!("the target is the source repository (id {}); nothing was copied", source.params.id);
    }
    chosen.sort_by_key(|(id, s)| (s.time_ns, *id));
    let map = CopyMap::open(&target.dir.join(format!("copy-from-{}.sqlite", source.params.id)))?;
    let mut out = Outcome::default();
    for (id, snap) in chosen {
        let held = target.journal.snapshots()?;
        if held.iter().any(|(_, t)| same_snapshot(t, &snap)) {
            out.skipped.push(id);
            continue;
        }
        let copied = copy_one(source, target, rt, &map, &snap, settings, &mut out)
            .with_context(|| format!("copying snapshot {}", id.short()))?;
        out.copied.push((id, copied));
        crate::testing::pause_point("copy-snapshot-written");
    }
    Ok(out)
}

/// One snapshot: its trees rewritten and its missing chunks stored, then index objects, then
/// the snapshot object.
fn copy_one(
    source: &Repository,
    target: &Repository,
    rt: &tokio::runtime::Handle,
    map: &CopyMap,
    snap: &Snapshot,
    settings: &Settings,
    out: &mut Outcome,
) -> Result<Id> {
    let dedup = Arc::new(Dedup::new(target.journal.clone()));
    let packing = Packing::start(target, rt, dedup.clone(), settings.pack_size);
    let mut copier = Copier {
        source,
        target,
        rt,
        reader: TreeReader::new(source, rt),
        map,
        dedup: &dedup,
        packing: &packing,
        level: settings.compression,
        blobs_added: 0,
        bytes_added: 0,
    };
    let walked = copier.copy_tree(&snap.tree, b"");
    let (blobs_added, bytes_added) = (copier.blobs_added, copier.bytes_added);
    drop(copier);
    let upload = packing.finish(rt, walked.is_ok())?;
    let root = walked?;
    map.commit()?;
    out.upload.packs += upload.packs;
    out.upload.bytes += upload.bytes;
    out.blobs_added += blobs_added;
    out.bytes_added += bytes_added;

    crate::testing::pause_point("copy-packed");
    write_index(target, rt)?;
    crate::testing::pause_point("copy-indexed");
    let copy = Snapshot { tree: root, parent: None, ..snap.clone() };
    write_snapshot(target, rt, &copy)
}

struct Copier<'a> {
    source: &'a Repository,
    target: &'a Repository,
    rt: &'a tokio::runtime::Handle,
    reader: TreeReader<'a>,
    map: &'a CopyMap,
    dedup: &'a Dedup,
    packing: &'a Packing,
    level: i32,
    blobs_added: u64,
    bytes_added: u64,
}

impl Copier<'_> {
    /// The target id of source tree `id`, its folders and chunks stored first (depth-first,
    /// one tree per level in memory). Every tree is read: a target tree blob being present
    /// does not prove that everything below it is (an interrupted run may have stored it
    /// and lost a data pack).
    fn copy_tree(&mut self, id: &Id, path: &[u8]) -> Result<Id> {
        let (mut tree, rejected) = self.reader.load_checked(id)?;
        for r in &rejected {
            tracing::warn!(
                "not copying {}/{}: {} (a restore would refuse it too)",
                escape_bytes(path),
                escape_bytes(&r.name),
                r.why
            );
        }
        for node in &mut tree.nodes {
            let mut child = path.to_vec();
            child.push(b'/');
            child.extend_from_slice(&node.name);
            for chunk in &mut node.content {
                *chunk = self.copy_chunk(chunk)?;
            }
            if let Some(sub) = &node.subtree {
                node.subtree = Some(self.copy_tree(sub, &child)?);
            }
        }
        let bytes = postcard::to_stdvec(&Tree { version: 1, nodes: tree.nodes })?;
        let new = self.target.key.blob_id(&bytes);
        if self.dedup.claim(&new)? {
            let sealed =
                format::encode_blob(&self.target.key, BlobKind::Tree, &new, &bytes, self.level.max(1));
            self.packing.trees.add(BlobKind::Tree, new, &sealed, bytes.len())?;
            self.blobs_added += 1;
            self.bytes_added += bytes.len() as u64;
        }
        Ok(new)
    }

    /// The target id of source chunk `id`, stored in the target when it lacks it. Read from
    /// the source only when the map does not already say which target chunk it is and that
    /// the target holds it.
    fn copy_chunk(&mut self, id: &Id) -> Result<Id> {
        let mapped = self.map.get(id)?;
        if let Some(dst) = mapped
            && !self.dedup.claim(&dst)?
        {
            return Ok(dst);
        }
        let plain = read_blob(self.source, self.rt, BlobKind::Data, id)?;
        let dst = self.target.key.blob_id(&plain);
        if mapped != Some(dst) {
            if let Some(stale) = mapped {
                // Claimed above for a mapping that turned out wrong: give the claim back.
                self.dedup.release(std::iter::once(stale));
            }
            self.map.put(id, &dst)?;
            if !self.dedup.claim(&dst)? {
                return Ok(dst);
            }
        }
        let sealed = format::encode_blob(&self.target.key, BlobKind::Data, &dst, &plain, self.level);
        self.packing.data.add(BlobKind::Data, dst, &sealed, plain.len())?;
        self.blobs_added += 1;
        self.bytes_added += plain.len() as u64;
        Ok(dst)
    }
}

/// Source chunk id -> target chunk id, for one source repository, in the target's state
/// folder. Only a cache of `target.blob_id(plaintext)`; written in batches.
struct CopyMap {
    conn: rusqlite::Connection,
    pending: std::cell::Cell<u32>,
}

impl CopyMap {
    fn open(path: &Path) -> Result<CopyMap> {
        let conn =
            rusqlite::Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS chunks (src BLOB PRIMARY KEY, dst BLOB NOT NULL) WITHOUT ROWID;
             BEGIN;",
        )?;
        Ok(CopyMap { conn, pending: std::cell::Cell::new(0) })
    }

    fn get(&self, src: &Id) -> Result<Option<Id>> {
        let dst: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT dst FROM chunks WHERE src = ?1", [&src.0[..]], |r| r.get(0))
            .optional()?;
        Ok(dst.and_then(|d| Id::from_slice(&d)))
    }

    fn put(&self, src: &Id, dst: &Id) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO chunks (src, dst) VALUES (?1, ?2)",
            params![&src.0[..], &dst.0[..]],
        )?;
        self.pending.set(self.pending.get() + 1);
        if self.pending.get() >= 4096 {
            self.commit()?;
        }
        Ok(())
    }

    fn commit(&self) -> Result<()> {
        self.conn.execute_batch("COMMIT; BEGIN;")?;
        self.pending.set(0);
        Ok(())
    }
}
