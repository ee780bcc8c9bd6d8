//! A backup run.
//!
//! Threads:
//! - the walker visits the sources in order; files the file cache knows unchanged are
//!   settled at once, others become jobs for the workers (with the durable prefix an
//!   interrupted run recorded, when the file is unchanged since);
//! - workers (one per core) read, chunk, hash, deduplicate, compress and encrypt files and
//!   append new blobs to the shared data packer; each stages its file's cache row as soon as
//!   the file is read, in whatever order the workers finish;
//! - the assembler (the calling thread) receives the walk in order, waits for each file's
//!   chunk list, and builds directory trees bottom-up, storing new ones in the tree packer;
//!   while it waits (for the walk or for a file) it runs the checkpoints that are due;
//! - the uploader (async, several transfers at once) uploads finished packs.
//!
//! All queues are bounded, so memory does not grow with the size of the source. After the
//! walk: the last packs are uploaded, an index object lists the new packs, the file cache
//! rows of this run are published, and the snapshot is written last.
//!
//! Checkpoints bound what an interruption costs: each one makes durable every file read so
//! far (its cache row) and the chunk prefix of every file being read, whatever the walk
//! order; workers wait rather than read more than one interval past the last durable
//! checkpoint.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use crossbeam_channel::{Receiver, Sender, bounded};

use crate::crypto::MasterKey;
use crate::engine::chunker::Chunker;
use crate::engine::packer::{Dedup, Packer, Packing};
use crate::engine::upload::UploadStats;
use crate::engine::walk::{Excludes, Identity, node_from, normalise_sources};
use crate::error::{IoAt, Role};
use crate::ids::Id;
use crate::journal::{CachedFile, Journal, ObjectKind, PartialFile};
use crate::lock::hostname;
use crate::progress::Counters;
use crate::repo::Repository;
use crate::repo::format::{self, BlobKind, IndexFile, IndexPack, Node, NodeKind, Snapshot, Summary, Tree};

pub struct Settings {
    /// The job the snapshot belongs to (`default` for `[backup]`).
    pub job: String,
    pub sources: Vec<PathBuf>,
    pub excludes: Vec<String>,
    pub tags: Vec<String>,
    pub threads: usize,
    pub compression: i32,
    pub pack_size: u64,
    /// Make progress durable at least this often (time, source bytes read).
    pub checkpoint_every: std::time::Duration,
    pub checkpoint_bytes: u64,
}

pub struct Outcome {
    pub id: Id,
    pub snapshot: Snapshot,
    /// Entries that could not be backed up (the first ones, with reasons).
    pub warnings: Vec<String>,
    pub upload: UploadStats,
    /// Partial snapshots written during the run (then replaced by the complete one).
    pub checkpoints: u64,
}

/// Most warnings kept for the report; all are counted.
const MAX_WARNINGS: usize = 100;

enum FileError {
    /// This file could not be read; it is left out and the run goes on.
    Source(String),
    /// The run cannot go on (journal, packing or upload failed).
    Fatal(anyhow::Error),
}

struct FileDone {
    content: Vec<Id>,
    read: u64,
}

/// Files for one worker, in walk order. Small files travel in batches, so a folder of
/// thousands of small files costs a few hand-offs between threads, not thousands.
struct FileJob {
    files: Vec<JobFile>,
    reply: Sender<Vec<Result<FileDone, FileError>>>,
}

/// A file to read, with what the walker saw (the identity its cache row records).
struct JobFile {
    path: PathBuf,
    /// Size, mtime, ctime and inode as the walker saw them (`content` empty).
    seen: CachedFile,
    /// The durable prefix an interrupted run recorded, for this same identity.
    resume: Option<PartialFile>,
}

/// The file a worker is reading: its identity, and the chunks stored so far (`content`) of
/// its first `offset` bytes. A checkpoint records it as a [`PartialFile`].
struct Reading {
    path: Vec<u8>,
    file: CachedFile,
    offset: u64,
}

/// Holds source reads back while more than `limit` bytes read from sources are not yet
/// durable, so an interruption costs at most that much reading again, measured as bytes
/// read (the chunker's lookahead included), not as bytes chunked.
///
/// `limit` is the checkpoint interval, but at least one maximum-size chunk per worker: a
/// worker that waits here holds less than one maximum chunk of lookahead (it reads only to
/// have one), so after a checkpoint seals everything chunked, the lookahead of all workers
/// together is below the limit and every worker can read again. Bytes read and never
/// chunked (a file that failed half-way) are given back.
struct Gate {
    limit: u64,
    state: Mutex<GateState>,
    moved: Condvar,
    /// Workers waiting for room: the assembler runs a checkpoint at once when any do.
    waiting: AtomicUsize,
    /// Set when the assembler stops: nothing will move the gate any more.
    open: AtomicBool,
}

#[derive(Default)]
struct GateState {
    /// Bytes read from sources in this run (less what was given back).
    read: u64,
    /// Bytes chunked when the last completed checkpoint sealed: durable.
    durable: u64,
}

impl Gate {
    fn new(interval: u64, workers: usize, max_chunk: usize) -> Gate {
        Gate {
            limit: interval.max(workers as u64 * max_chunk as u64).max(1),
            state: Mutex::new(GateState::default()),
            moved: Condvar::new(),
            waiting: AtomicUsize::new(0),
            open: AtomicBool::new(false),
        }
    }

    /// Room to read up to `want` bytes: waits while none is left, returns how many may be
    /// read (at least 1 when `want` is).
    fn reserve(&self, want: u64) -> u64 {
        let mut st = self.state.lock().unwrap();
        loop {
            let used = st.read.saturating_sub(st.durable);
            if self.open.load(Ordering::Relaxed) || want == 0 {
                st.read += want;
                return want;
            }
            if used < self.limit {
                let n = want.min(self.limit - used);
                st.read += n;
                return n;
            }
            self.waiting.fetch_add(1, Ordering::Relaxed);
            st = self.moved.wait_timeout(st, Duration::from_millis(100)).unwrap().0;
            self.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Returns reserved bytes that were not read, or were read and will never be chunked.
    fn give_back(&self, n: u64) {
        let mut st = self.state.lock().unwrap();
        st.read = st.read.saturating_sub(n);
        drop(st);
        self.moved.notify_all();
    }

    fn waiting(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }

    fn advance(&self, to: u64) {
        self.state.lock().unwrap().durable = to;
        self.moved.notify_all();
    }

    fn release(&self) {
        self.open.store(true, Ordering::Relaxed);
        self.moved.notify_all();
    }
}

/// A source file read through the [`Gate`]: every read first reserves its room. Reads are
/// positional (`pread`), from where the file's durable prefix ends: no descriptor position
/// to keep, and each read says which bytes it covered (what tests count from outside).
struct GatedRead<'g> {
    file: std::fs::File,
    gate: &'g Gate,
    /// Where the next read starts.
    at: u64,
    /// Bytes this file returned so far.
    read: u64,
}

impl Read for GatedRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt as _;
        let room = self.gate.reserve(buf.len() as u64) as usize;
        let r = loop {
            match self.file.read_at(&mut buf[..room], self.at) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        let got = *r.as_ref().unwrap_or(&0);
        self.gate.give_back((room - got) as u64);
        self.at += got as u64;
        self.read += got as u64;
        r
    }
}

/// The results of one job, fetched once by the assembler and handed out by position.
struct Batch {
    rx: Receiver<Vec<Result<FileDone, FileError>>>,
    results: Vec<Option<Result<FileDone, FileError>>>,
}

type SharedBatch = Arc<std::sync::Mutex<Batch>>;

enum Pending {
    Ready,
    Wait { batch: SharedBatch, slot: usize },
}

/// Files up to this size are batched (they are one chunk each).
const SMALL_FILE: u64 = 256 << 10;
/// A batch closes at this many files or bytes.
const BATCH_FILES: usize = 64;
const BATCH_BYTES: u64 = 2 << 20;

enum Event {
    Enter(Node),
    Leave,
    Item(Node, Pending),
    Warn(String),
}

/// What workers and the assembler share.
struct Shared<'a> {
    key: &'a MasterKey,
    journal: &'a Journal,
    dedup: &'a Dedup,
    chunker: Chunker,
    data: &'a Packer,
    trees: &'a Packer,
    level: i32,
    counters: &'a Counters,
    files_read: AtomicU64,
    bytes_read: AtomicU64,
    data_added: AtomicU64,
    /// Bytes passed through the chunker in this run: what checkpoints pace themselves by.
    chunked: AtomicU64,
    gate: Gate,
    /// What each worker is reading (one slot per worker), updated with each stored chunk.
    reading: Vec<Mutex<Option<Reading>>>,
    /// Workers hold it (shared) while storing a chunk or staging a file's row; a
    /// checkpoint takes it exclusively, so every chunk claimed before the checkpoint is in
    /// a pack when the packer flushes, and every row and prefix it seals refers only to
    /// those chunks.
    quiesce: RwLock<()>,
}

/// What a checkpoint needs besides the shared state.
struct Run<'a> {
    repo: &'a Repository,
    rt: &'a tokio::runtime::Handle,
    settings: &'a Settings,
    sources: &'a [PathBuf],
    parent: Option<Id>,
    started: jiff::Timestamp,
    packing: &'a Packing,
}

pub fn run(
    repo: &Repository,
    rt: &tokio::runtime::Handle,
    s: &Settings,
    counters: &Counters,
) -> Result<Outcome> {
    let sources = normalise_sources(&s.sources)?;
    let mut excludes = s.excludes.clone();
    // Never back up our own state (journal, temporary packs).
    excludes.push(repo.dir.to_string_lossy().into_owned());
    let excludes = Excludes::new(&excludes)?;

    let parent = latest_for(&repo.journal, &s.job, &sources)?;
    let started = jiff::Timestamp::now();
    let dedup = Arc::new(Dedup::new(repo.journal.clone()));
    let packing = Packing::start(repo, rt, dedup.clone(), s.pack_size);
    let shared = Shared {
        key: &repo.key,
        journal: &repo.journal,
        dedup: &dedup,
        chunker: Chunker::new(&repo.params.chunker),
        data: &packing.data,
        trees: &packing.trees,
        level: s.compression,
        counters,
        files_read: AtomicU64::new(0),
        bytes_read: AtomicU64::new(0),
        data_added: AtomicU64::new(0),
        chunked: AtomicU64::new(0),
        gate: Gate::new(s.checkpoint_bytes, s.threads.max(1), repo.params.chunker.max_size as usize),
        reading: (0..s.threads.max(1)).map(|_| Mutex::new(None)).collect(),
        quiesce: RwLock::new(()),
    };
    let run = Run { repo, rt, settings: s, sources: &sources, parent, started, packing: &packing };

    let phase = Instant::now();
    let scan = std::thread::scope(|scope| -> Result<(Id, Summary, Vec<String>, u64)> {
        let (job_tx, job_rx) = bounded::<FileJob>(s.threads * 2);
        let (ev_tx, ev_rx) = bounded::<Event>(4096);
        for slot in 0..s.threads.max(1) {
            let jobs = job_rx.clone();
            let shared = &shared;
            scope.spawn(move || {
                worker(jobs, shared, slot);
                tracing::debug!("worker thread: {:.2}s CPU", thread_cpu());
            });
        }
        drop(job_rx);
        let (sources, excludes, shared_ref) = (&sources, &excludes, &shared);
        let walker = scope.spawn(move || {
            let mut w = Walker {
                excludes,
                sh: shared_ref,
                jobs: job_tx,
                events: ev_tx,
                batch: Vec::new(),
                batch_bytes: 0,
            };
            let r = w.walk_sources(sources);
            tracing::debug!("walker thread: {:.2}s CPU", thread_cpu());
            r
        });
        let assembled = assemble(ev_rx, &shared, &run);
        // Nothing moves the gate any more: let waiting workers finish or see the stop.
        shared.gate.release();
        tracing::debug!("assembler thread: {:.2}s CPU", thread_cpu());
        let walked = walker.join().map_err(|_| anyhow!("the walker thread panicked"))?;
        let assembled = assembled?;
        walked?;
        Ok(assembled)
    });

    // Finish the packs in progress, then wait for every upload, also after a failure, so
    // the journal states are settled before we return.
    tracing::debug!("walk and pack: {:.2}s", phase.elapsed().as_secs_f64());
    drop(shared);
    // A failed upload stops the producers too; its error is the one that explains.
    let upload = packing.finish(rt, scan.is_ok())?;
    let (root, mut summary, warnings, checkpoints) = scan?;

    tracing::debug!("uploads finished: {:.2}s", phase.elapsed().as_secs_f64());
    write_index(repo, rt)?;
    repo.journal.publish_staged_files()?;
    // The walk is complete: every file below the sources was read whole or found unchanged,
    // so no durable prefix recorded for a path below them is of use any more (the file was
    // read whole since, changed, or is gone).
    repo.journal.forget_partial_files_under(&sources)?;
    tracing::debug!("index and file cache: {:.2}s", phase.elapsed().as_secs_f64());
    if tracing::enabled!(tracing::Level::DEBUG) {
        log_thread_times();
    }

    summary.packed_bytes = upload.bytes;
    let snapshot = new_snapshot(&sources, s, parent, root, started, summary, false);
    crate::testing::hold_point("before-snapshot");
    let id = write_snapshot(repo, rt, &snapshot)?;
    remove_partials(repo, rt, &s.job, &sources, &id)?;
    Ok(Outcome { id, snapshot, warnings, upload, checkpoints })
}

/// Deletes the partial snapshots of this job and these sources from this host: the complete
/// snapshot `keep` supersedes them (those of this run, and those an interrupted run left).
/// Another job's partial snapshots stay, whatever folders it covers.
fn remove_partials(
    repo: &Repository,
    rt: &tokio::runtime::Handle,
    job: &str,
    sources: &[PathBuf],
    keep: &Id,
) -> Result<()> {
    if !repo.backend.can_delete() {
        // Append-only: the partial snapshots stay; they are valid, older views of the data.
        return Ok(());
    }
    let host = hostname();
    for (id, s) in repo.journal.snapshots()? {
        if id == *keep || !s.partial || s.hostname != host || s.job != job || !same_sources(&s, sources) {
            continue;
        }
        rt.block_on(repo.delete_snapshots(&[id]))?;
    }
    Ok(())
}

fn same_sources(s: &Snapshot, sources: &[PathBuf]) -> bool {
    s.sources.iter().map(|b| b.as_slice()).eq(sources.iter().map(|p| p.as_os_str().as_bytes()))
}

/// The newest snapshot of the same job and sources from this host: the parent of the new
/// one. Partial snapshots count: resuming an interrupted run starts from its last checkpoint.
fn latest_for(journal: &Journal, job: &str, sources: &[PathBuf]) -> Result<Option<Id>> {
    let host = hostname();
    Ok(journal
        .snapshots()?
        .into_iter()
        .filter(|(_, s)| s.hostname == host && s.job == job && same_sources(s, sources))
        .max_by_key(|(_, s)| s.time_ns)
        .map(|(id, _)| id))
}

fn worker(jobs: Receiver<FileJob>, shared: &Shared<'_>, slot: usize) {
    let mut scratch = Scratch::default();
    for job in jobs {
        let mut results = Vec::with_capacity(job.files.len());
        for file in job.files {
            let r = back_up_file(file, &mut scratch, shared, &shared.reading[slot]);
            let fatal = matches!(r, Err(FileError::Fatal(_)));
            results.push(r);
            if fatal {
                break;
            }
        }
        let _ = job.reply.send(results);
    }
}

/// A worker's reusable buffers: the chunker's window and the sealed blob.
#[derive(Default)]
struct Scratch {
    window: Vec<u8>,
    sealed: Vec<u8>,
}

/// Reads one file (from its durable prefix when it has one), stores its new chunks, and
/// stages its cache row if it was read whole at the size the walker saw.
fn back_up_file(
    job: JobFile,
    scratch: &mut Scratch,
    sh: &Shared<'_>,
    slot: &Mutex<Option<Reading>>,
) -> Result<FileDone, FileError> {
    let path = &job.path;
    let source = |e: &dyn std::fmt::Display| FileError::Source(format!("{}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| source(&e))?;
    let prefix = match job.resume {
        Some(p) if usable_prefix(&p, sh).map_err(FileError::Fatal)? => {
            tracing::debug!("{}: continuing at byte {}", path.display(), p.offset);
            p
        }
        _ => PartialFile { file: CachedFile { content: Vec::new(), ..job.seen.clone() }, offset: 0 },
    };
    let resumed_at = prefix.offset;
    *slot.lock().unwrap() = Some(Reading {
        path: path.as_os_str().as_bytes().to_vec(),
        file: prefix.file,
        offset: prefix.offset,
    });
    let mut fatal = None;
    let sealed = &mut scratch.sealed;
    let mut gated = GatedRead { file, gate: &sh.gate, at: resumed_at, read: 0 };
    let mut chunked_here = 0u64;
    let read = sh.chunker.chunk(&mut gated, &mut scratch.window, |chunk| {
        chunked_here += chunk.len() as u64;
        let id = sh.key.blob_id(chunk);
        let stored = (|| -> Result<()> {
            let _storing = sh.quiesce.read().unwrap();
            if sh.dedup.claim(&id)? {
                format::encode_blob_into(sh.key, BlobKind::Data, &id, chunk, sh.level, sealed);
                sh.data.add(BlobKind::Data, id, sealed, chunk.len())?;
                sh.data_added.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            if let Some(r) = slot.lock().unwrap().as_mut() {
                r.file.content.push(id);
                r.offset += chunk.len() as u64;
            }
            Ok(())
        })();
        sh.chunked.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        sh.counters.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        stored.map_err(|e| {
            fatal = Some(e);
            anyhow!("stopped")
        })
    });
    // Taking the file out of the slot and staging its row happen together between two
    // checkpoint seals: a checkpoint sees the file either as partial or as staged.
    let storing = sh.quiesce.read().unwrap();
    let reading = slot.lock().unwrap().take();
    // What was read and will never be chunked (a read that failed half-way) is not owed.
    sh.gate.give_back(gated.read - chunked_here);
    let read = match (read, fatal) {
        (Ok(read), _) => read,
        (Err(_), Some(f)) => return Err(FileError::Fatal(f)),
        (Err(e), None) => return Err(source(&e)),
    };
    let content = reading.map(|r| r.file.content).unwrap_or_default();
    let total = resumed_at + read;
    if total == job.seen.size {
        let row = CachedFile { content: content.clone(), ..job.seen };
        sh.journal.stage_file(path.as_os_str().as_bytes().to_vec(), row).map_err(FileError::Fatal)?;
    }
    drop(storing);
    sh.files_read.fetch_add(1, Ordering::Relaxed);
    sh.bytes_read.fetch_add(read, Ordering::Relaxed);
    Ok(FileDone { content, read: total })
}

/// Whether an interrupted run's prefix can be continued: it ends inside the file, and every
/// chunk of it is still in a pack the journal knows (a lookup each, no download).
fn usable_prefix(p: &PartialFile, sh: &Shared<'_>) -> Result<bool> {
    if p.offset > p.file.size {
        return Ok(false);
    }
    for id in &p.file.content {
        if !sh.journal.has_blob(id)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Walks the sources and sends the walk to the assembler as events, in order; files to
/// read go to the workers first.
struct Walker<'a, 'b> {
    excludes: &'a Excludes,
    sh: &'a Shared<'b>,
    jobs: Sender<FileJob>,
    events: Sender<Event>,
    /// Small files waiting to be sent as one job: node, path, identity, durable prefix.
    batch: Vec<(Node, PathBuf, Identity, Option<PartialFile>)>,
    batch_bytes: u64,
}

impl Walker<'_, '_> {
    /// Sends an event, after any batch waiting before it (order is everything).
    fn emit(&mut self, e: Event) -> Result<()> {
        self.flush()?;
        self.events.send(e).map_err(|_| anyhow!("backup stopped"))
    }

    /// Sends the waiting batch: the job first, then its events, so the assembler never
    /// waits for a job that was not sent.
    fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let (tx, rx) = bounded(1);
        let files = self
            .batch
            .iter_mut()
            .map(|(node, path, identity, resume)| JobFile {
                path: path.clone(),
                seen: CachedFile {
                    size: node.size,
                    mtime_ns: node.mtime_ns,
                    ctime_ns: identity.ctime_ns,
                    inode: identity.inode,
                    content: Vec::new(),
                },
                resume: resume.take(),
            })
            .collect();
        self.jobs.send(FileJob { files, reply: tx }).map_err(|_| anyhow!("backup stopped"))?;
        let batch = Arc::new(std::sync::Mutex::new(Batch { rx, results: Vec::new() }));
        self.batch_bytes = 0;
        for (slot, (node, ..)) in self.batch.drain(..).enumerate() {
            let pending = Pending::Wait { batch: batch.clone(), slot };
            self.events.send(Event::Item(node, pending)).map_err(|_| anyhow!("backup stopped"))?;
        }
        Ok(())
    }

    /// Queues a file that must be read. Large files go alone, with the durable prefix an
    /// interrupted run recorded if the file is unchanged since (small files are one chunk).
    fn read_file(&mut self, node: Node, path: &Path, identity: Identity) -> Result<()> {
        let small = node.size <= SMALL_FILE;
        let mut resume = None;
        if !small {
            self.flush()?;
            resume = self.sh.journal.partial_file(path.as_os_str().as_bytes())?.filter(|p| {
                p.file.size == node.size
                    && p.file.mtime_ns == node.mtime_ns
                    && p.file.ctime_ns == identity.ctime_ns
                    && p.file.inode == identity.inode
            });
        }
        self.batch_bytes += node.size;
        self.batch.push((node, path.to_path_buf(), identity, resume));
        if !small || self.batch.len() >= BATCH_FILES || self.batch_bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// The folders above each source are entered as plain folders, so the snapshot mirrors
    /// absolute paths.
    fn walk_sources(&mut self, sources: &[PathBuf]) -> Result<()> {
        let mut open: Vec<PathBuf> = Vec::new();
        for src in sources {
            let above: Vec<PathBuf> =
                src.ancestors().skip(1).filter(|p| p.parent().is_some()).map(Path::to_path_buf).collect();
            let above: Vec<PathBuf> = above.into_iter().rev().collect();
            let common = open.iter().zip(&above).take_while(|(a, b)| a == b).count();
            while open.len() > common {
                open.pop();
                self.emit(Event::Leave)?;
            }
            for dir in &above[common..] {
                let meta = std::fs::symlink_metadata(dir).at(Role::Source, dir)?;
                let name = dir.file_name().unwrap_or(OsStr::new("")).as_bytes();
                let (node, _) =
                    node_from(name, &meta).ok_or_else(|| anyhow!("{} is not a folder", dir.display()))?;
                self.emit(Event::Enter(node))?;
                open.push(dir.clone());
            }
            match src.file_name() {
                Some(name) => {
                    let meta = std::fs::symlink_metadata(src).at(Role::Source, src)?;
                    self.walk_entry(src, name, &meta)?;
                }
                // The root folder itself: its entries go straight into the snapshot's root.
                None => self.walk_children(src)?,
            }
        }
        while open.pop().is_some() {
            self.emit(Event::Leave)?;
        }
        self.flush()
    }

    fn walk_children(&mut self, dir: &Path) -> Result<()> {
        let mut entries: Vec<(std::ffi::OsString, PathBuf)> = match std::fs::read_dir(dir) {
            Ok(rd) => {
                let mut v = Vec::new();
                for e in rd {
                    match e {
                        Ok(e) => v.push((e.file_name(), e.path())),
                        Err(e) => self.emit(Event::Warn(format!("{}: {e}", dir.display())))?,
                    }
                }
                v
            }
            Err(e) => {
                return self.emit(Event::Warn(format!("{}: cannot list folder: {e}", dir.display())));
            }
        };
        entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (name, path) in entries {
            if self.excludes.is_excluded(&path, &name) {
                continue;
            }
            match std::fs::symlink_metadata(&path) {
                Ok(meta) => self.walk_entry(&path, &name, &meta)?,
                Err(e) => self.emit(Event::Warn(format!("{}: {e}", path.display())))?,
            }
        }
        Ok(())
    }

    fn walk_entry(&mut self, path: &Path, name: &OsStr, meta: &std::fs::Metadata) -> Result<()> {
        let Some((mut node, identity)) = node_from(name.as_bytes(), meta) else {
            tracing::info!("skipping {}: sockets and device files are not backed up", path.display());
            return Ok(());
        };
        match node.kind {
            NodeKind::Dir => {
                self.emit(Event::Enter(node))?;
                self.walk_children(path)?;
                self.emit(Event::Leave)?;
            }
            NodeKind::Symlink => {
                match std::fs::read_link(path) {
                    Ok(t) => node.target = serde_bytes::ByteBuf::from(t.as_os_str().as_bytes().to_vec()),
                    Err(e) => {
                        return self.emit(Event::Warn(format!("{}: cannot read link: {e}", path.display())));
                    }
                }
                self.emit(Event::Item(node, Pending::Ready))?;
            }
            NodeKind::Fifo => self.emit(Event::Item(node, Pending::Ready))?,
            NodeKind::File => {
                if node.size == 0 {
                    return self.emit(Event::Item(node, Pending::Ready));
                }
                if let Some(c) = self.sh.journal.cached_file(path.as_os_str().as_bytes())?
                    && c.size == node.size
                    && c.mtime_ns == node.mtime_ns
                    && c.ctime_ns == identity.ctime_ns
                    && c.inode == identity.inode
                {
                    self.sh.counters.bytes.fetch_add(node.size, Ordering::Relaxed);
                    node.content = c.content;
                    return self.emit(Event::Item(node, Pending::Ready));
                }
                self.read_file(node, path, identity)?;
            }
        }
        Ok(())
    }
}

/// A folder being assembled: its node (none for the snapshot root) and children so far.
struct Frame {
    node: Option<Node>,
    children: Vec<Node>,
}

/// How often the assembler looks at the checkpoint clock while it waits.
const TICK: Duration = Duration::from_millis(20);

/// When the next checkpoint is due: after `every`, or once half an interval of bytes was
/// chunked since the last one (so reading rarely waits at the [`Gate`], which holds reads a
/// whole interval past the last durable checkpoint), or at once when a worker waits there.
struct Pace {
    last: Instant,
    chunked_at_last: u64,
    count: u64,
}

impl Pace {
    fn due(&self, sh: &Shared<'_>, run: &Run<'_>) -> bool {
        let read = sh.chunked.load(Ordering::Relaxed) - self.chunked_at_last;
        self.last.elapsed() >= run.settings.checkpoint_every
            || read >= run.settings.checkpoint_bytes.div_ceil(2)
            || (sh.gate.waiting() && read > 0)
    }

    /// Runs a checkpoint of `stack` if one is due.
    fn tick(&mut self, stack: &[Frame], sh: &Shared<'_>, run: &Run<'_>, summary: &Summary) -> Result<()> {
        if self.due(sh, run) {
            let sealed_at = checkpoint(stack, sh, run, summary)?;
            sh.gate.advance(sealed_at);
            self.count += 1;
            self.last = Instant::now();
            self.chunked_at_last = sealed_at;
        }
        Ok(())
    }
}

/// Builds the trees from the walk, in order, with checkpoints on the way (also while it
/// waits for the walk or for a file). Returns the root tree id, the summary, warnings, and
/// the number of checkpoints.
fn assemble(
    events: Receiver<Event>,
    sh: &Shared<'_>,
    run: &Run<'_>,
) -> Result<(Id, Summary, Vec<String>, u64)> {
    let mut stack = vec![Frame { node: None, children: Vec::new() }];
    let mut pace = Pace { last: Instant::now(), chunked_at_last: 0, count: 0 };
    let mut summary = Summary::default();
    let mut warnings = Vec::new();
    let mut warn = |msg: String, summary: &mut Summary| {
        tracing::warn!("{msg}");
        summary.errors += 1;
        if warnings.len() < MAX_WARNINGS {
            warnings.push(msg);
        }
    };
    loop {
        let ev = match events.recv_timeout(TICK) {
            Ok(ev) => ev,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                pace.tick(&stack, sh, run, &summary)?;
                continue;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        };
        match ev {
            Event::Enter(node) => {
                summary.dirs += 1;
                stack.push(Frame { node: Some(node), children: Vec::new() });
            }
            Event::Leave => {
                let frame = stack.pop().ok_or_else(|| anyhow!("unbalanced walk"))?;
                let mut node = frame.node.ok_or_else(|| anyhow!("unbalanced walk"))?;
                node.subtree = Some(store_tree(frame.children, sh)?);
                stack.last_mut().ok_or_else(|| anyhow!("unbalanced walk"))?.children.push(node);
            }
            Event::Item(mut node, pending) => {
                if let Pending::Wait { batch, slot } = pending {
                    let result = {
                        let mut b = batch.lock().unwrap();
                        while b.results.is_empty() {
                            match b.rx.recv_timeout(TICK) {
                                Ok(r) => b.results = r.into_iter().map(Some).collect(),
                                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                                    pace.tick(&stack, sh, run, &summary)?
                                }
                                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                                    return Err(anyhow!("a backup worker stopped unexpectedly"));
                                }
                            }
                        }
                        b.results.get_mut(slot).and_then(Option::take)
                    };
                    let result = result.ok_or_else(|| anyhow!("a backup worker stopped early"))?;
                    match result {
                        Ok(done) => {
                            node.size = done.read;
                            node.content = done.content;
                        }
                        Err(FileError::Source(msg)) => {
                            warn(msg, &mut summary);
                            continue;
                        }
                        Err(FileError::Fatal(e)) => return Err(e),
                    }
                }
                if node.kind == NodeKind::File {
                    summary.files += 1;
                    summary.bytes += node.size;
                    sh.counters.files.fetch_add(1, Ordering::Relaxed);
                }
                stack.last_mut().ok_or_else(|| anyhow!("unbalanced walk"))?.children.push(node);
            }
            Event::Warn(msg) => warn(msg, &mut summary),
        }
        pace.tick(&stack, sh, run, &summary)?;
    }
    if stack.len() != 1 {
        return Err(anyhow!("the walk ended early"));
    }
    let root = stack.pop().unwrap();
    let id = store_tree(root.children, sh)?;
    fill_counts(&mut summary, sh);
    Ok((id, summary, warnings, pace.count))
}

fn fill_counts(summary: &mut Summary, sh: &Shared<'_>) {
    summary.files_read = sh.files_read.load(Ordering::Relaxed);
    summary.bytes_read = sh.bytes_read.load(Ordering::Relaxed);
    summary.data_added = sh.data_added.load(Ordering::Relaxed);
}

/// Makes everything read so far durable, and what was assembled restorable:
/// - seals, while no chunk is being stored: the cache rows of every file read so far (in
///   any walk order) and the chunk prefix of every file being read, then flushes the packs;
/// - once every pack is uploaded: an index, those rows and prefixes in the journal, and a
///   partial snapshot whose tree is the part of the walk assembled so far (its summary
///   counts what that tree holds).
///
/// A run interrupted later resumes from here. Returns the bytes chunked at the seal.
fn checkpoint(stack: &[Frame], sh: &Shared<'_>, run: &Run<'_>, summary: &Summary) -> Result<u64> {
    // Close the open folders virtually, deepest first, with what they hold so far.
    let mut carry: Option<Node> = None;
    let mut root = None;
    for frame in stack.iter().rev() {
        let mut children = frame.children.clone();
        children.extend(carry.take());
        let id = store_tree(children, sh)?;
        match &frame.node {
            Some(node) => {
                let mut n = node.clone();
                n.subtree = Some(id);
                carry = Some(n);
            }
            None => root = Some(id),
        }
    }
    let root = root.ok_or_else(|| anyhow!("no root frame"))?;
    let (seal, partials, sealed_at) = {
        let _quiet = sh.quiesce.write().unwrap();
        let seal = sh.journal.seal_staged();
        let partials: Vec<(Vec<u8>, PartialFile)> = sh
            .reading
            .iter()
            .filter_map(|slot| {
                let slot = slot.lock().unwrap();
                let r = slot.as_ref().filter(|r| r.offset > 0 && r.file.size > SMALL_FILE)?;
                Some((r.path.clone(), PartialFile { file: r.file.clone(), offset: r.offset }))
            })
            .collect();
        sh.data.flush()?;
        (seal, partials, sh.chunked.load(Ordering::Relaxed))
    };
    sh.trees.flush()?;
    run.packing.wait_uploaded()?;
    write_index(run.repo, run.rt)?;
    run.repo.journal.publish_checkpoint(seal, &partials)?;
    let mut summary = summary.clone();
    fill_counts(&mut summary, sh);
    let snap = new_snapshot(run.sources, run.settings, run.parent, root, run.started, summary, true);
    let id = write_snapshot(run.repo, run.rt, &snap)?;
    tracing::info!(
        "checkpoint: partial snapshot {} saved ({} files in its tree; every file read so far and {} partly read ones resumable)",
        id.short(),
        snap.summary.files,
        partials.len()
    );
    Ok(sealed_at)
}

fn new_snapshot(
    sources: &[PathBuf],
    s: &Settings,
    parent: Option<Id>,
    tree: Id,
    started: jiff::Timestamp,
    summary: Summary,
    partial: bool,
) -> Snapshot {
    Snapshot {
        version: format::SNAPSHOT_VERSION,
        time_ns: started.as_nanosecond() as i64,
        hostname: hostname(),
        username: std::env::var("USER").unwrap_or_default(),
        sources: sources
            .iter()
            .map(|p| serde_bytes::ByteBuf::from(p.as_os_str().as_bytes().to_vec()))
            .collect(),
        tags: s.tags.clone(),
        parent,
        tree,
        partial,
        summary,
        program: format!("cairn {}", env!("CARGO_PKG_VERSION")),
        job: s.job.clone(),
    }
}

fn store_tree(mut nodes: Vec<Node>, sh: &Shared<'_>) -> Result<Id> {
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let bytes = postcard::to_stdvec(&Tree { version: 1, nodes })?;
    let id = sh.key.blob_id(&bytes);
    if sh.dedup.claim(&id)? {
        let sealed = format::encode_blob(sh.key, BlobKind::Tree, &id, &bytes, sh.level.max(1));
        sh.trees.add(BlobKind::Tree, id, &sealed, bytes.len())?;
    }
    Ok(id)
}

/// Uploads index objects for every uploaded pack no index lists yet.
pub fn write_index(repo: &Repository, rt: &tokio::runtime::Handle) -> Result<()> {
    let packs = repo.journal.unindexed_packs()?;
    let mut index = IndexFile { version: 1, packs: Vec::new() };
    let mut names = Vec::new();
    let mut entries = 0usize;
    for p in &packs {
        let pack_entries = repo.journal.pack_entries(&p.name)?;
        entries += pack_entries.len();
        index.packs.push(IndexPack {
            id: crate::journal::pack_id(&p.name)?,
            size: p.size,
            entries: pack_entries,
        });
        names.push(p.name.clone());
        if entries >= INDEX_ENTRIES {
            upload_index(repo, rt, &index, &names)?;
            index.packs.clear();
            names.clear();
            entries = 0;
        }
    }
    if !names.is_empty() {
        upload_index(repo, rt, &index, &names)?;
    }
    Ok(())
}

/// Blobs per index object, at most (one pack may exceed it): keeps index objects a few
/// MiB, so reading one never needs much memory.
pub const INDEX_ENTRIES: usize = 65_536;

pub fn upload_index(
    repo: &Repository,
    rt: &tokio::runtime::Handle,
    index: &IndexFile,
    packs: &[String],
) -> Result<()> {
    let bytes = format::seal_object(&repo.key, format::AAD_INDEX, index, false)?;
    let id = Id::of_bytes(&bytes);
    let name = format::index_name(&id);
    repo.journal.begin_upload(&name, ObjectKind::Index, bytes.len() as u64, &id, &[])?;
    rt.block_on(repo.backend.upload_bytes(&name, &bytes, false))?;
    repo.journal.confirm_upload(&name)?;
    repo.journal.mark_indexed(packs, &name)?;
    Ok(())
}

/// Uploads a snapshot object and records it.
pub fn write_snapshot(repo: &Repository, rt: &tokio::runtime::Handle, snap: &Snapshot) -> Result<Id> {
    let bytes = format::seal_snapshot(&repo.key, snap)?;
    let id = Id::of_bytes(&bytes);
    let name = format::snapshot_name(&id);
    // Without the repository lock a prune may be deleting what this snapshot references.
    rt.block_on(repo.check_lock())?;
    repo.journal.begin_upload(&name, ObjectKind::Snapshot, bytes.len() as u64, &id, &[])?;
    rt.block_on(repo.backend.upload_bytes(&name, &bytes, true))?;
    repo.journal.confirm_upload(&name)?;
    repo.journal.add_snapshot(&id, snap)?;
    Ok(id)
}

/// Debug aid: CPU seconds per thread of this process, to see which stage is the bottleneck.
fn log_thread_times() {
    let tick = 100.0; // USER_HZ
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return };
    let mut by_name: std::collections::BTreeMap<String, (u32, f64)> = Default::default();
    for t in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else { continue };
        let Some(close) = stat.rfind(')') else { continue };
        let name = stat[stat.find('(').unwrap_or(0) + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let cpu = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
            + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
        let e = by_name.entry(name).or_default();
        e.0 += 1;
        e.1 += cpu / tick;
    }
    for (name, (n, secs)) in by_name {
        tracing::debug!("thread {name} x{n}: {secs:.2}s CPU");
    }
}

/// CPU time of the calling thread, in seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}
