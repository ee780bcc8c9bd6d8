//! Packing encrypted blobs into pack files.
//!
//! [`Packing`] is the one way blobs reach the repository: backup, copy, prune (repacking) and
//! repair all store through it, so every pack is written, journaled and uploaded alike.
//!
//! A pack is assembled in a temporary file in the state folder (so memory stays bounded
//! whatever the pack size, and a failed upload can be retried from disk), then handed to
//! the uploader, which records it in the journal as `uploading` with its size, hash and
//! blobs before sending its first byte.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Result, anyhow};

use crate::crypto::MasterKey;
use crate::engine::upload::{self, Job, UploadStats};
use crate::error::{IoAt, Role};
use crate::ids::Id;
use crate::journal::Journal;
use crate::repo::Repository;
use crate::repo::format::{self, BlobKind, PackEntry};

/// Tree packs are small: trees are read often (ls, restore) and are few.
pub const TREE_PACK_SIZE: u64 = 4 << 20;

/// Blobs on their way to a repository: a packer for data, one for trees, and the uploader
/// both feed.
pub struct Packing {
    pub data: Packer,
    pub trees: Packer,
    uploads: tokio::sync::mpsc::Sender<Job>,
    task: tokio::task::JoinHandle<Result<UploadStats>>,
}

impl Packing {
    /// Starts the uploader for `repo`; data packs of about `pack_size` bytes, tree packs at
    /// most [`TREE_PACK_SIZE`]. `dedup` gets back each pack's claims once it is journaled.
    pub fn start(
        repo: &Repository,
        rt: &tokio::runtime::Handle,
        dedup: Arc<Dedup>,
        pack_size: u64,
    ) -> Packing {
        let (uploads, task) =
            upload::spawn(rt, repo.backend.clone(), repo.journal.clone(), dedup, upload::QUEUE);
        let packer = |size| Packer::new(repo.key.clone(), repo.tmp_dir(), size, uploads.clone());
        Packing { data: packer(pack_size), trees: packer(TREE_PACK_SIZE.min(pack_size)), uploads, task }
    }

    /// The packer for blobs of `kind`.
    pub fn packer(&self, kind: BlobKind) -> &Packer {
        if kind == BlobKind::Tree { &self.trees } else { &self.data }
    }

    /// Waits until every pack handed over so far is uploaded and journaled as such (packs
    /// still being filled are not: flush them first).
    pub fn wait_uploaded(&self) -> Result<()> {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        self.uploads.blocking_send(Job::Barrier(done_tx)).map_err(|_| anyhow!("the uploader stopped"))?;
        done_rx.blocking_recv().map_err(|_| anyhow!("the uploader stopped"))
    }

    /// Finishes the packs being filled (when `flush`; not after a failure, whose partial
    /// packs are not wanted), then waits for every upload, also after an upload failed, so
    /// the journal's states are settled when this returns. A failed upload's error comes
    /// first: it explains why the packers stopped.
    pub fn finish(self, rt: &tokio::runtime::Handle, flush: bool) -> Result<UploadStats> {
        let flushed = if flush { self.data.flush().and_then(|_| self.trees.flush()) } else { Ok(()) };
        let Packing { data, trees, uploads, task } = self;
        drop((data, trees, uploads));
        let stats = rt.block_on(task).map_err(|e| anyhow!("the uploader panicked: {e}"))??;
        flushed?;
        Ok(stats)
    }
}

/// Decides which blobs are new. A blob is new unless the journal knows it or another worker
/// has claimed it in this run and not yet recorded it. The claim set only holds blobs of
/// packs still being filled, so it stays small.
pub struct Dedup {
    journal: Arc<Journal>,
    pending: Mutex<HashSet<Id>>,
}

impl Dedup {
    pub fn new(journal: Arc<Journal>) -> Dedup {
        Dedup { journal, pending: Mutex::new(HashSet::new()) }
    }

    /// True if `id` is new: the caller must then store it.
    pub fn claim(&self, id: &Id) -> Result<bool> {
        let mut pending = self.pending.lock().unwrap();
        if pending.contains(id) || self.journal.has_blob(id)? {
            return Ok(false);
        }
        pending.insert(*id);
        Ok(true)
    }

    /// Drops claims once the journal records the blobs (they are then found there).
    pub fn release(&self, ids: impl Iterator<Item = Id>) {
        let mut pending = self.pending.lock().unwrap();
        for id in ids {
            pending.remove(&id);
        }
    }
}

/// The temporary file of a finished pack, in the state folder's `tmp/`.
pub fn finished_file_name(id: &Id) -> String {
    format!("{}.pack", id.hex())
}

/// A finished pack on local disk, waiting to be recorded as `uploading` and uploaded.
pub struct FinishedPack {
    pub name: String,
    pub id: Id,
    pub path: PathBuf,
    pub size: u64,
    pub entries: Vec<PackEntry>,
}

struct PackWriter {
    file: BufWriter<File>,
    path: PathBuf,
    entries: Vec<PackEntry>,
    size: u64,
    hasher: blake3::Hasher,
}

impl PackWriter {
    fn create(dir: &std::path::Path) -> Result<PackWriter> {
        std::fs::create_dir_all(dir).at(Role::TemporaryPacks, dir)?;
        let mut rnd = [0u8; 12];
        getrandom::fill(&mut rnd)?;
        let path = dir.join(format!("pack-{}", hex::encode(rnd)));
        let file = File::create_new(&path).at(Role::TemporaryPacks, &path)?;
        Ok(PackWriter {
            file: BufWriter::with_capacity(1 << 20, file),
            path,
            entries: Vec::new(),
            size: 0,
            hasher: blake3::Hasher::new(),
        })
    }

    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        self.file.write_all(bytes).at(Role::TemporaryPacks, &self.path)?;
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
        Ok(())
    }
}

pub struct Packer {
    key: Arc<MasterKey>,
    tmp_dir: PathBuf,
    target_size: u64,
    current: Mutex<Option<PackWriter>>,
    out: tokio::sync::mpsc::Sender<Job>,
}

impl Packer {
    pub fn new(
        key: Arc<MasterKey>,
        tmp_dir: PathBuf,
        target_size: u64,
        out: tokio::sync::mpsc::Sender<Job>,
    ) -> Packer {
        Packer { key, tmp_dir, target_size, current: Mutex::new(None), out }
    }

    /// Adds one sealed blob (claimed through [`Dedup::claim`]). Finishes and hands over the
    /// pack when it reaches the target size; blocks while the uploader is behind.
    pub fn add(&self, kind: BlobKind, id: Id, sealed: &[u8], raw_length: usize) -> Result<()> {
        let full = {
            let mut cur = self.current.lock().unwrap();
            let w = match cur.as_mut() {
                Some(w) => w,
                None => cur.insert(PackWriter::create(&self.tmp_dir)?),
            };
            let offset = w.size;
            w.append(sealed)?;
            w.entries.push(PackEntry {
                kind,
                id,
                offset,
                length: u32::try_from(sealed.len())?,
                raw_length: u32::try_from(raw_length)?,
            });
            if w.size >= self.target_size { cur.take() } else { None }
        };
        match full {
            Some(w) => self.seal_and_send(w),
            None => Ok(()),
        }
    }

    /// Finishes the pack being filled, if any.
    pub fn flush(&self) -> Result<()> {
        let w = self.current.lock().unwrap().take();
        match w {
            Some(w) => self.seal_and_send(w),
            None => Ok(()),
        }
    }

    fn seal_and_send(&self, mut w: PackWriter) -> Result<()> {
        let trailer = format::pack_trailer(&self.key, &w.entries)?;
        w.append(&trailer)?;
        let file = w.file.into_inner().map_err(|e| e.into_error()).at(Role::TemporaryPacks, &w.path)?;
        // The temporary pack need not survive a crash (it is rebuilt from the sources), so
        // no fsync here.
        drop(file);
        let id = Id(*w.hasher.finalize().as_bytes());
        let name = format::pack_name(&id);
        // Named by its id, so after a crash the next run can find it and upload it instead
        // of discarding it.
        let path = self.tmp_dir.join(finished_file_name(&id));
        std::fs::rename(&w.path, &path).at(Role::TemporaryPacks, &path)?;
        // The uploader records it in the journal (off this worker's path: a commit waits
        // for fsync) and then releases its blobs' claims.
        let pack = FinishedPack { name, id, path, size: w.size, entries: w.entries };
        self.out.blocking_send(Job::Pack(pack)).map_err(|_| anyhow!("the uploader stopped"))?;
        Ok(())
    }
}
