//! The mark: which blobs the snapshots need, recorded on disk, never in a big in-memory set.
//!
//! Every snapshot's trees are walked; each tree and each content chunk is recorded in a
//! scratch SQLite database in the state folder's `tmp/` (no journal, no fsync: it is thrown
//! away after the run, and cleared with `tmp/` by the next writing command if a run dies).
//! The journal is attached read-only in spirit: the mark and the plan only read it, so a
//! mark for `stats` or `prune --dry-run` never changes what the journal means.
//!
//! Blobs are marked per group (a number chosen by the caller: one group for prune, one per
//! snapshot group for stats); `needed` is their union.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use rusqlite::{Connection, params};

use crate::engine::tree::TreeReader;
use crate::ids::Id;
use crate::repo::Repository;
use crate::repo::format::{BlobKind, Snapshot};

pub struct Mark {
    pub db: Connection,
    path: PathBuf,
}

impl Drop for Mark {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Why a mark could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum MarkError {
    /// A folder listing of a snapshot could not be read: nothing may be deleted on a mark
    /// that missed what that snapshot references.
    #[error(
        "cannot read the folder listings of snapshot {snapshot}: {why}; nothing was deleted \
         (a mark that misses a snapshot's data must not decide what to delete): run \
         `cairn verify` and `cairn repair`, or forget that snapshot"
    )]
    UnreadableTree { snapshot: String, why: String },
}

impl Mark {
    /// A new, empty mark with the journal attached as `j`.
    pub fn new(repo: &Repository) -> Result<Mark> {
        let dir = repo.tmp_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut rnd = [0u8; 8];
        getrandom::fill(&mut rnd)?;
        let path = dir.join(format!("mark-{}.sqlite", hex::encode(rnd)));
        let db = Connection::open(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let mark = Mark { db, path };
        mark.db.busy_timeout(std::time::Duration::from_secs(10))?;
        mark.db.execute_batch(
            "PRAGMA journal_mode = OFF;
             PRAGMA synchronous = OFF;
             PRAGMA temp_store = FILE;
             PRAGMA cache_size = -8000;
             CREATE TABLE used (grp INTEGER NOT NULL, kind INTEGER NOT NULL, id BLOB NOT NULL,
                PRIMARY KEY (grp, kind, id)) WITHOUT ROWID;
             CREATE TABLE seen (grp INTEGER NOT NULL, id BLOB NOT NULL, PRIMARY KEY (grp, id)) WITHOUT ROWID;
             CREATE TABLE needed (kind INTEGER NOT NULL, id BLOB NOT NULL, PRIMARY KEY (kind, id)) WITHOUT ROWID;",
        )?;
        mark.db.execute("ATTACH DATABASE ?1 AS j", [repo.journal.path.to_string_lossy()])?;
        Ok(mark)
    }

    /// Marks every tree and chunk the snapshot reaches, in group `grp`. Trees already seen in
    /// this group are not read again (snapshots share most of their folders).
    pub fn snapshot(&self, reader: &TreeReader<'_>, id: &Id, snap: &Snapshot, grp: i64) -> Result<u64> {
        let tx = self.db.unchecked_transaction()?;
        let mut trees = 0u64;
        {
            let mut seen = tx.prepare_cached("INSERT OR IGNORE INTO seen (grp, id) VALUES (?1, ?2)")?;
            let mut used =
                tx.prepare_cached("INSERT OR IGNORE INTO used (grp, kind, id) VALUES (?1, ?2, ?3)")?;
            let mut stack = vec![snap.tree];
            while let Some(tree_id) = stack.pop() {
                if seen.execute(params![grp, &tree_id.0[..]])? == 0 {
                    continue;
                }
                trees += 1;
                used.execute(params![grp, BlobKind::Tree as u8, &tree_id.0[..]])?;
                // Raw: entries a restore refuses still reference data; the mark keeps it.
                let tree = reader
                    .load_raw(&tree_id)
                    .map_err(|e| MarkError::UnreadableTree { snapshot: id.short(), why: format!("{e:#}") })?;
                for node in &tree.nodes {
                    for chunk in &node.content {
                        used.execute(params![grp, BlobKind::Data as u8, &chunk.0[..]])?;
                    }
                    if let Some(sub) = node.subtree {
                        stack.push(sub);
                    }
                }
            }
        }
        tx.commit()?;
        Ok(trees)
    }

    /// Paths in this machine's file cache (`file_cache`, `partial_files`) whose chunks are
    /// not all needed: the next backup would reuse those chunks without reading the file,
    /// so their rows must go before the chunks can. Call after [`Mark::finish`].
    pub fn stale_cache_rows(&self) -> Result<Vec<Vec<u8>>> {
        let mut needed = self.db.prepare_cached("SELECT 1 FROM needed WHERE kind = ?1 AND id = ?2")?;
        let mut out = Vec::new();
        for table in ["file_cache", "partial_files"] {
            let mut rows = self.db.prepare(&format!("SELECT path, content FROM j.{table}"))?;
            let mut rows = rows.query([])?;
            while let Some(row) = rows.next()? {
                let content: Vec<u8> = row.get(1)?;
                for id in content.chunks_exact(32) {
                    if !needed.exists(params![BlobKind::Data as u8, id])? {
                        out.push(row.get(0)?);
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Fills `needed`, the union of every group's blobs. Call once marking is done.
    pub fn finish(&self) -> Result<()> {
        self.db.execute_batch("INSERT OR IGNORE INTO needed (kind, id) SELECT kind, id FROM used;")?;
        Ok(())
    }

    pub fn count(&self, sql: &str) -> Result<u64> {
        let n: i64 = self.db.query_row(sql, [], |r| r.get(0)).map_err(|e| anyhow!("{sql}: {e}"))?;
        Ok(n as u64)
    }
}
