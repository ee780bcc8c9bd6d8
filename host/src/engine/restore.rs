//! Restoring a snapshot into a folder.
//!
//! 1. Walk the snapshot's trees (only what `--include` selects) and create folders,
//!    symlinks, fifos, and every file at its final size.
//! 2. Group the needed chunks by pack; workers read each pack with a few ranged reads,
//!    authenticate and hash-check every blob, and write it wherever it belongs. A blob that
//!    does not verify is never written: every file that needs it is reported and removed.
//!    Every file with content is written under a temporary name in its folder
//!    ([`partial_name`]); when its last byte is written it gets its owner, mode, times and a
//!    marker, and only then its final name (`renameat`). A final name therefore always
//!    holds complete, verified content, even after `kill -9`.
//! 3. Set ownership (as root), permissions and times, folders last and deepest first.
//! 4. With `--verify`, read every restored file back and check it against the chunk ids.
//!
//! Run again into the same target, a restore resumes: a file already at its final name
//! with the snapshot's size, mtime and marker is skipped (with the size and mtime but no
//! marker, its content is checked), and a partial file left by an interrupted run is
//! checked chunk by chunk so only the chunks it lacks are downloaded.
//!
//! A snapshot is untrusted data, so nothing is written outside the target: entry names
//! that are not one path component are refused when a tree is loaded (see
//! [`tree::BadName`]), and every file, folder and symlink is created and changed relative
//! to an open folder below the target, never by following a symlink ([`Target`]). The
//! target folder itself and its parent are never changed.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use anyhow::{Context, Result, anyhow, bail};

use crate::engine::tree::{self, BadName};
use crate::error::{IoAt, Role, describe_io};
use crate::ids::Id;
use crate::progress::Counters;
use crate::repo::Repository;
use crate::repo::format::{self, BlobKind, Node, NodeKind};

pub struct Settings {
    pub target: PathBuf,
    /// Absolute snapshot paths to restore (with everything below); empty: everything.
    pub includes: Vec<PathBuf>,
    pub threads: usize,
    /// Read every restored file back and check it against the snapshot's chunk ids.
    pub verify: bool,
}

/// Why one file was not restored: the repository's fault or the target's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// Its data is missing from the repository or failed verification.
    Data(String),
    /// The restore target did not take it (full, read-only, permission denied...), in words.
    Write(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Data(why) => f.write_str(why),
            Failure::Write(why) => write!(f, "cannot write: {why}"),
        }
    }
}

#[derive(Default, Debug)]
pub struct Outcome {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Files that could not be restored, with the reason. They are not left behind.
    pub failed: Vec<(String, Failure)>,
    /// Entries the snapshot holds under a name that is not one path component (or twice in
    /// one folder), where they would have gone (escaped), and why. They were skipped.
    pub refused: Vec<(String, BadName)>,
    /// Metadata that could not be applied (the content is fine).
    pub warnings: Vec<String>,
    /// Files already complete in the target (left by an earlier run), not written again.
    pub skipped: u64,
    /// Bytes of those files.
    pub skipped_bytes: u64,
    /// Bytes the backend returned for file content (pack reads).
    pub downloaded: u64,
    /// Parallel pack readers (a killed run had at most this many packs half read).
    pub workers: usize,
    /// With `--verify`: files read back.
    pub verified: u64,
    /// With `--verify`: files whose bytes in the target are not the snapshot's, and how.
    pub mismatched: Vec<(String, String)>,
}

struct FileItem {
    /// Below the target, without a leading `/`.
    rel: Vec<u8>,
    /// The temporary name its content is written under, below the target.
    tmp: Vec<u8>,
    node: Node,
    fate: Fate,
    /// What its marker must say ([`marker`]), computed while the chunk list is at hand.
    marker: [u8; 32],
}

/// What a restore does with one file, decided from what the target already holds.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Fate {
    /// Written under its temporary name, renamed when complete. `check_final`: the final
    /// name holds a file of the right size and mtime but without our marker (its content
    /// is checked before anything is downloaded); `partial`: a temporary file from an
    /// interrupted run is there (the chunks it already holds are kept).
    Write { check_final: bool, partial: bool },
    /// Already complete at its final name; only its metadata is applied again.
    Skip,
    /// No content: created at its final name during the structure walk.
    Empty,
}

/// The extended attribute that marks a file this restore completed (see [`marker`]).
const MARKER_XATTR: &CStr = c"user.cairn.restored";
/// Temporary names start with this (then 16 hex digits and the start of the final name).
const PARTIAL_PREFIX: &str = ".cairn-partial-";
/// At most this many bytes of the final name are kept in a temporary name, so it stays
/// within the 255-byte limit of file names.
const PARTIAL_NAME_KEEP: usize = 255 - PARTIAL_PREFIX.len() - 17;

/// Folder handles the structure walk keeps open, at most (one per level).
const MAX_OPEN_DIRS: usize = 128;
/// Coalesce blobs into one read when the gap between them is at most this.
const MAX_GAP: u64 = 1 << 20;
/// The largest single read.
const MAX_READ: u64 = 4 << 20;

/// Whether `path` is selected by the includes, and whether anything below it may be.
fn selected(path: &[u8], includes: &[Vec<u8>]) -> (bool, bool) {
    if includes.is_empty() {
        return (true, true);
    }
    let mut take = false;
    let mut descend = false;
    for inc in includes {
        let under = path.starts_with(inc) && (path.len() == inc.len() || path[inc.len()] == b'/');
        let above = inc.starts_with(path) && inc.len() > path.len() && inc[path.len()] == b'/';
        take |= under;
        descend |= under || above;
    }
    (take, descend)
}

/// The `--include` paths as snapshot paths: absolute, without empty or `.` components
/// (a trailing `/` too). `..` is refused: an include names a path of the snapshot, never a
/// way out of it. An include of the root selects everything (empty list).
fn normalise_includes(includes: &[PathBuf]) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for inc in includes {
        let mut norm = Vec::new();
        for part in inc.as_os_str().as_bytes().split(|&b| b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => bail!(
                    "--include {}: `..` is not allowed; give the path as the snapshot holds it (see `cairn ls`)",
                    crate::untrusted::escape_bytes(inc.as_os_str().as_bytes())
                ),
                _ => {
                    norm.push(b'/');
                    norm.extend_from_slice(part);
                }
            }
        }
        if norm.is_empty() {
            return Ok(Vec::new());
        }
        out.push(norm);
    }
    Ok(out)
}

pub fn run(
    repo: &Repository,
    rt: &tokio::runtime::Handle,
    root: &Id,
    s: &Settings,
    counters: &Counters,
) -> Result<Outcome> {
    let includes = normalise_includes(&s.includes)?;
    std::fs::create_dir_all(&s.target)
        .with_context(|| format!("cannot create target {}", s.target.display()))?;
    let target =
        Target::open(&s.target).with_context(|| format!("cannot open target {}", s.target.display()))?;
    let shown = |rel: &[u8]| {
        let mut p = s.target.as_os_str().as_bytes().to_vec();
        p.push(b'/');
        p.extend_from_slice(rel);
        crate::untrusted::escape_bytes(&p)
    };

    let mut out = Outcome::default();
    let mut files: Vec<FileItem> = Vec::new();
    // (path below the target, node), in walk order.
    let mut dirs: Vec<(Vec<u8>, Node)> = Vec::new();
    let mut links: Vec<(Vec<u8>, Node)> = Vec::new();
    let mut matched = includes.iter().map(|_| false).collect::<Vec<_>>();
    // The open folders from the target down to the one being filled (the first
    // MAX_OPEN_DIRS levels): every entry is created relative to its parent's handle, so
    // no path is resolved again. Deeper, the parent is opened again for each entry.
    let mut open_dirs: Vec<OwnedFd> = Vec::new();

    // Temporary files found in folders that were already there (an interrupted restore,
    // maybe of another snapshot or other includes): those no file of this one claims are
    // removed after the walk.
    let mut stale: HashSet<Vec<u8>> = HashSet::new();
    note_partials(&mut stale, b"", target.fd.as_fd());

    let phase = std::time::Instant::now();
    // 1. Structure.
    let reader = tree::TreeReader::new(repo, rt);
    let mut visit = |path: &[u8], node: &Node| -> Result<bool> {
        let (take, descend) = selected(path, &includes);
        for (i, inc) in includes.iter().enumerate() {
            if inc.as_slice() == path {
                matched[i] = true;
            }
        }
        let rel = &path[1..];
        // `path` is `/a/b/name`: its parent is the folder at depth (slashes - 1).
        let depth = path.iter().filter(|&&b| b == b'/').count();
        let err = |what: &str| format!("cannot create {what} {}", shown(rel));
        open_dirs.truncate(depth - 1);
        let reopened;
        let parent = if depth - 1 > open_dirs.len() {
            let parent_rel = &rel[..rel.len() - node.name.len() - 1];
            let flags = libc::O_PATH | libc::O_DIRECTORY;
            reopened = target.open_beneath(parent_rel, flags, 0).with_context(|| err("entry"))?;
            reopened.as_fd()
        } else {
            open_dirs.last().map_or(target.fd.as_fd(), |fd| fd.as_fd())
        };
        let name = CString::new(node.name.as_slice())?;
        // An entry of the snapshot is never a leftover, whatever its name.
        stale.remove(rel);
        if node.kind == NodeKind::Dir {
            if descend {
                let (fd, existed) =
                    make_dir(parent, &name).at(Role::RestoreTarget, Path::new(&shown(rel)))?;
                if existed {
                    note_partials(&mut stale, rel, fd.as_fd());
                }
                if open_dirs.len() == depth - 1 && depth <= MAX_OPEN_DIRS {
                    open_dirs.push(fd);
                }
                dirs.push((rel.to_vec(), node.clone()));
                out.dirs += 1;
            }
            return Ok(descend);
        }
        if !take {
            return Ok(false);
        }
        match node.kind {
            NodeKind::File => {
                // Never write through whatever is in the way (a symlink could point
                // outside the target).
                let tmp_name = partial_name(&node.name);
                let mut tmp = rel[..rel.len() - node.name.len()].to_vec();
                tmp.extend_from_slice(&tmp_name);
                let tmp_c = CString::new(tmp_name)?;
                stale.remove(&tmp);
                let marker = marker(repo, node);
                // A file the target refuses (an immutable one in the way, a full disk) is
                // named at the end; the rest is restored.
                let prepared = clear_for_file(parent, &name).and_then(|()| {
                    Ok(if node.content.is_empty() {
                        // A fresh inode: never truncate one the target had (it may be linked
                        // elsewhere).
                        remove_non_dir(parent, &name);
                        create_file_at(parent, &name, node.size)?;
                        Fate::Empty
                    } else {
                        match inspect_final(parent, &name, node, &marker)? {
                            FinalState::Marked => Fate::Skip,
                            found => Fate::Write {
                                check_final: found == FinalState::SameSizeAndTime,
                                partial: keep_partial(parent, &tmp_c)?,
                            },
                        }
                    })
                });
                let fate = match prepared {
                    Ok(fate) => fate,
                    Err(e) => {
                        out.failed.push((shown(rel), Failure::Write(describe_io(&e))));
                        return Ok(false);
                    }
                };
                if fate == Fate::Skip {
                    // A temporary file beside a complete one is a leftover.
                    remove_non_dir(parent, &tmp_c);
                }
                // Files with content are created by the workers, in parallel.
                counters.total_bytes.fetch_add(node.size, Ordering::Relaxed);
                counters.total_files.fetch_add(1, Ordering::Relaxed);
                files.push(FileItem { rel: rel.to_vec(), tmp, node: node.clone(), fate, marker });
            }
            NodeKind::Symlink => {
                remove_non_dir(parent, &name);
                let to = CString::new(node.target.as_slice()).with_context(|| err("symlink"))?;
                // SAFETY: valid NUL-terminated strings and an open folder.
                cvt(unsafe { libc::symlinkat(to.as_ptr(), parent.as_raw_fd(), name.as_ptr()) })
                    .with_context(|| err("symlink"))?;
                links.push((rel.to_vec(), node.clone()));
                out.symlinks += 1;
            }
            NodeKind::Fifo => {
                remove_non_dir(parent, &name);
                // SAFETY: a valid NUL-terminated name and an open folder.
                cvt(unsafe { libc::mkfifoat(parent.as_raw_fd(), name.as_ptr(), 0o600) })
                    .with_context(|| err("fifo"))?;
                links.push((rel.to_vec(), node.clone()));
            }
            NodeKind::Dir => unreachable!(),
        }
        Ok(false)
    };
    let mut refused = |path: &[u8], why: BadName| -> Result<()> {
        // Refused entries inside a folder the includes do not reach are not wanted anyway.
        let parent = &path[..path.iter().rposition(|&b| b == b'/').unwrap_or(0)];
        if parent.is_empty() || selected(parent, &includes).0 {
            out.refused.push((shown(&path[1..]), why));
        }
        Ok(())
    };
    reader.walk_checked(root, &mut visit, &mut refused)?;
    drop(open_dirs);
    for rel in &stale {
        let _ = target.at_parent(rel, |parent, name| {
            if kind_at(parent, name)? == Some(libc::S_IFREG) {
                remove_non_dir(parent, name);
            }
            Ok(())
        });
    }
    for (i, inc) in s.includes.iter().enumerate() {
        if !includes.is_empty() && !matched[i] {
            return Err(anyhow!(
                "--include {}: no such path in the snapshot (see `cairn ls`)",
                crate::untrusted::escape_bytes(inc.as_os_str().as_bytes())
            ));
        }
    }

    tracing::debug!("structure: {:.2}s", phase.elapsed().as_secs_f64());
    let workers = s.threads.max(repo.backend.concurrency()).max(1);
    // 2. Content, grouped by pack, without the chunks the target already holds.
    let mut plan = plan(repo, &files, s.verify)?;
    let present = check_existing(repo, &target, &mut files, &plan.lengths, workers);
    let skipped_bytes = files.iter().filter(|f| f.fate == Fate::Skip).map(|f| f.node.size).sum();
    counters.bytes.fetch_add(skipped_bytes, Ordering::Relaxed);
    // The plan holds where every chunk goes; the chunk lists themselves are not needed
    // any more (they are most of the memory a restore of many files takes), unless they
    // are read back at the end.
    if !s.verify {
        for f in &mut files {
            f.node.content = Vec::new();
        }
        plan.lengths = HashMap::new();
    }
    let failed: Mutex<HashMap<u32, Failure>> = Mutex::new(HashMap::new());
    for (file_idx, reason) in plan.missing {
        failed.lock().unwrap().entry(file_idx).or_insert(Failure::Data(reason));
    }
    let remaining = prune_plan(&mut plan.packs, &files, &present, &failed.lock().unwrap());
    let as_root = unsafe { libc::geteuid() } == 0;
    let warnings = Mutex::new(Vec::new());
    let downloaded = AtomicU64::new(0);
    let renames = Mutex::new(Renames::default());
    let dest = Dest {
        target: &target,
        files: &files,
        remaining: &remaining,
        as_root,
        warnings: &warnings,
        downloaded: &downloaded,
        shown: &shown,
        failed: &failed,
        renames: &renames,
    };
    // Temporary files that already hold every chunk only need their final name.
    for (i, f) in files.iter().enumerate() {
        if matches!(f.fate, Fate::Write { .. })
            && remaining[i].load(Ordering::Relaxed) == 0
            && !failed.lock().unwrap().contains_key(&(i as u32))
        {
            // Read-only: an interrupted run may have applied the file's mode already.
            match target.open_beneath(&f.tmp, libc::O_RDONLY | libc::O_NONBLOCK, 0) {
                Ok(fd) => dest.finish(i as u32, &File::from(fd)),
                Err(e) => {
                    failed
                        .lock()
                        .unwrap()
                        .insert(i as u32, Failure::Write(format!("cannot finish: {}", describe_io(&e))));
                }
            }
        }
    }
    let queue = Mutex::new(plan.packs.into_iter().collect::<Vec<_>>());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                let mut open: HashMap<u32, File> = HashMap::new();
                loop {
                    let Some((pack, blobs)) = queue.lock().unwrap().pop() else {
                        break;
                    };
                    restore_pack(repo, rt, &pack, blobs, dest, &mut open, &failed, counters);
                }
            });
        }
    });
    let last = std::mem::take(&mut renames.lock().unwrap().files);
    dest.publish(last);
    out.downloaded = downloaded.into_inner();
    out.workers = workers;
    out.warnings = warnings.into_inner().unwrap();

    // Files that failed lose their temporary file: a partial file must not pass for a
    // restored one, and whatever was at the final name before stays as it was.
    let failed = failed.into_inner().unwrap();
    for (idx, reason) in &failed {
        let f = &files[*idx as usize];
        let _ = target.at_parent(&f.tmp, |parent, name| {
            // SAFETY: a valid NUL-terminated name and an open folder.
            cvt(unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), 0) })
        });
        out.failed.push((shown(&f.rel), reason.clone()));
    }
    out.failed.sort();
    out.refused.sort_by(|a, b| a.0.cmp(&b.0));

    tracing::debug!("content: {:.2}s", phase.elapsed().as_secs_f64());
    // 3. Metadata, on entries below the target only. Written files got theirs before
    // their rename.
    let mut meta = MetaWriter { target: &target, as_root, parent: None, fchmodat2: true };
    for (i, f) in files.iter().enumerate() {
        if failed.contains_key(&(i as u32)) {
            continue;
        }
        out.files += 1;
        out.bytes += f.node.size;
        if f.fate == Fate::Skip {
            out.skipped += 1;
            out.skipped_bytes += f.node.size;
        }
        if matches!(f.fate, Fate::Write { .. }) {
            continue;
        }
        if let Err(e) = meta.apply(&f.rel, &f.node) {
            out.warnings.push(format!("{}: {e}", shown(&f.rel)));
        }
    }
    for (rel, node) in links.iter().chain(dirs.iter().rev()) {
        if let Err(e) = meta.apply(rel, node) {
            out.warnings.push(format!("{}: {e}", shown(rel)));
        }
    }
    tracing::debug!("metadata: {:.2}s", phase.elapsed().as_secs_f64());
    // 4. Read back.
    if s.verify {
        let checked = verify_files(repo, &target, &files, &failed, &plan.lengths, workers);
        out.verified = checked.0;
        out.mismatched = checked.1.into_iter().map(|(i, why)| (shown(&files[i as usize].rel), why)).collect();
        out.mismatched.sort();
        tracing::debug!("verify: {:.2}s", phase.elapsed().as_secs_f64());
    }
    Ok(out)
}

/// Adds the temporary-looking names in folder `dir` (at `dir_rel` below the target) to
/// `stale`. A folder that cannot be listed keeps its leftovers.
fn note_partials(stale: &mut HashSet<Vec<u8>>, dir_rel: &[u8], dir: BorrowedFd<'_>) {
    for name in partial_names(dir).unwrap_or_default() {
        let mut rel = dir_rel.to_vec();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(&name);
        stale.insert(rel);
    }
}

/// The temporary name a file's content is written under: hidden, recognisably cairn's,
/// unique per final name (a hash of it), and within the 255-byte name limit.
fn partial_name(name: &[u8]) -> Vec<u8> {
    let hash = blake3::hash(name);
    let mut keep = &name[..name.len().min(PARTIAL_NAME_KEEP)];
    // Cut on a character boundary where the name is text.
    if let Err(e) = std::str::from_utf8(keep)
        && std::str::from_utf8(&name[..e.valid_up_to()]).is_ok()
        && e.error_len().is_none()
    {
        keep = &keep[..e.valid_up_to()];
    }
    let mut out = format!("{PARTIAL_PREFIX}{}-", hex16(&hash.as_bytes()[..8])).into_bytes();
    out.extend_from_slice(keep);
    out
}

fn hex16(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The marker a completed file carries: a keyed hash of its size, mtime and chunk ids.
/// With the right size and mtime it says this file was written complete by a restore of
/// this content; a user's edit changes the mtime (or drops the attribute).
fn marker(repo: &Repository, node: &Node) -> [u8; 32] {
    let mut h = repo.key.id_hasher();
    h.update(b"cairn restored file v1\0");
    h.update(&node.size.to_le_bytes());
    h.update(&node.mtime_ns.to_le_bytes());
    for id in &node.content {
        h.update(&id.0);
    }
    *h.finalize().as_bytes()
}

/// Marks an open file as complete. Where the filesystem has no user extended attributes
/// (or the file is read-only to us) nothing is marked, and the next run reads the file to
/// check it.
fn set_marker(f: &impl AsRawFd, marker: &[u8; 32]) {
    // SAFETY: an open descriptor, a valid name and a buffer of the given size.
    unsafe { libc::fsetxattr(f.as_raw_fd(), MARKER_XATTR.as_ptr(), marker.as_ptr().cast(), marker.len(), 0) };
}

/// What the final name of a file with content holds.
#[derive(Clone, Copy, PartialEq, Debug)]
enum FinalState {
    /// Nothing usable: absent, or another size or mtime.
    Other,
    /// A regular file with the snapshot's size and mtime, without our marker.
    SameSizeAndTime,
    /// The same, with the marker for this content: complete.
    Marked,
}

fn inspect_final(dir: BorrowedFd<'_>, name: &CStr, node: &Node, marker: &[u8; 32]) -> io::Result<FinalState> {
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK;
    let fd = match openat(dir, name, flags, 0) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(FinalState::Other),
        r => r?,
    };
    let f = File::from(fd);
    let m = f.metadata()?;
    use std::os::unix::fs::MetadataExt;
    let mtime = m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128;
    if !m.is_file() || m.len() != node.size || mtime != node.mtime_ns as i128 {
        return Ok(FinalState::Other);
    }
    let mut buf = [0u8; 33];
    // SAFETY: an open descriptor, a valid name and a buffer of the given size.
    let n =
        unsafe { libc::fgetxattr(f.as_raw_fd(), MARKER_XATTR.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    Ok(if n == 32 && &buf[..32] == marker { FinalState::Marked } else { FinalState::SameSizeAndTime })
}

/// Whether a temporary file of an interrupted run is at `tmp` (a regular file, kept to be
/// continued); anything else there is removed.
fn keep_partial(dir: BorrowedFd<'_>, tmp: &CStr) -> io::Result<bool> {
    match kind_at(dir, tmp)? {
        None => Ok(false),
        Some(libc::S_IFREG) => Ok(true),
        Some(_) => clear_for_file(dir, tmp).map(|_| false),
    }
}

/// Which chunks of `f` hold what the snapshot says: the offset of every chunk whose bytes
/// have its id (keyed hash). Reading stops at the end of the file.
fn chunks_present(
    repo: &Repository,
    f: &File,
    content: &[Id],
    lengths: &HashMap<Id, u32>,
) -> io::Result<Vec<u64>> {
    let mut present = Vec::new();
    let mut buf = Vec::new();
    let mut offset = 0u64;
    for id in content {
        let Some(&len) = lengths.get(id) else { break };
        buf.resize(len as usize, 0);
        match f.read_exact_at(&mut buf, offset) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            r => r?,
        }
        if repo.key.blob_id(&buf) == *id {
            present.push(offset);
        }
        offset += len as u64;
    }
    Ok(present)
}

/// Looks at what an earlier run left for the files to write: a final-named file with the
/// right size and mtime but no marker is read and, when every chunk matches, skipped; a
/// temporary file is read and the chunks it holds are kept. Returns those chunks as (file,
/// offset). Unreadable leftovers are simply written again.
fn check_existing(
    repo: &Repository,
    target: &Target,
    files: &mut [FileItem],
    lengths: &HashMap<Id, u32>,
    workers: usize,
) -> HashSet<(u32, u64)> {
    let todo: Vec<u32> = (0..files.len() as u32)
        .filter(|&i| {
            matches!(files[i as usize].fate, Fate::Write { check_final, partial } if check_final || partial)
        })
        .collect();
    let next = AtomicUsize::new(0);
    let complete = Mutex::new(Vec::new());
    let present = Mutex::new(HashSet::new());
    let files_ro: &[FileItem] = files;
    std::thread::scope(|scope| {
        for _ in 0..workers.min(todo.len()) {
            scope.spawn(|| {
                while let Some(&i) = todo.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let f = &files_ro[i as usize];
                    let Fate::Write { check_final, partial } = f.fate else { continue };
                    let read = |rel: &[u8]| {
                        let fd = target.open_beneath(rel, libc::O_RDONLY | libc::O_NONBLOCK, 0)?;
                        chunks_present(repo, &File::from(fd), &f.node.content, lengths)
                    };
                    if check_final && read(&f.rel).is_ok_and(|p| p.len() == f.node.content.len()) {
                        // Marked now, the next run need not read it again.
                        if let Ok(fd) = target.open_beneath(&f.rel, libc::O_RDONLY | libc::O_NONBLOCK, 0) {
                            set_marker(&fd, &f.marker);
                        }
                        complete.lock().unwrap().push(i);
                        continue;
                    }
                    if partial && let Ok(p) = read(&f.tmp) {
                        present.lock().unwrap().extend(p.into_iter().map(|off| (i, off)));
                    }
                }
            });
        }
    });
    let mut present = present.into_inner().unwrap();
    for i in complete.into_inner().unwrap() {
        let f = &mut files[i as usize];
        if let Fate::Write { partial: true, .. } = f.fate {
            let _ = target.at_parent(&f.tmp, |parent, name| {
                remove_non_dir(parent, name);
                Ok(())
            });
        }
        f.fate = Fate::Skip;
        present.retain(|&(j, _)| j != i);
    }
    present
}

/// Drops from the plan what is not to be downloaded (files skipped or already failed,
/// chunks a temporary file holds) and returns the bytes left to write per file.
fn prune_plan(
    packs: &mut HashMap<Id, Vec<BlobPlan>>,
    files: &[FileItem],
    present: &HashSet<(u32, u64)>,
    failed: &HashMap<u32, Failure>,
) -> Vec<AtomicU64> {
    let remaining: Vec<AtomicU64> = files.iter().map(|_| AtomicU64::new(0)).collect();
    packs.retain(|_, blobs| {
        blobs.retain_mut(|b| {
            b.targets.retain(|&(i, off)| {
                let wanted = matches!(files[i as usize].fate, Fate::Write { .. })
                    && !failed.contains_key(&i)
                    && !present.contains(&(i, off));
                if wanted {
                    remaining[i as usize].fetch_add(b.raw_length as u64, Ordering::Relaxed);
                }
                wanted
            });
            !b.targets.is_empty()
        });
        !blobs.is_empty()
    });
    remaining
}

/// Reads every restored file back and checks its size and each chunk against the
/// snapshot. Returns how many files were read and the mismatches (file index, what).
fn verify_files(
    repo: &Repository,
    target: &Target,
    files: &[FileItem],
    failed: &HashMap<u32, Failure>,
    lengths: &HashMap<Id, u32>,
    workers: usize,
) -> (u64, Vec<(u32, String)>) {
    let next = AtomicUsize::new(0);
    let checked = AtomicU64::new(0);
    let bad = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(f) = files.get(i) else { break };
                    if failed.contains_key(&(i as u32)) {
                        continue;
                    }
                    checked.fetch_add(1, Ordering::Relaxed);
                    let verdict = verify_one(repo, target, f, lengths);
                    let why = match verdict {
                        Ok(None) => continue,
                        Ok(Some(why)) => why,
                        Err(e) => format!("cannot read: {e}"),
                    };
                    // The marker no longer holds: the next restore writes the file again.
                    let _ = target.at_parent(&f.rel, |parent, name| {
                        let flags = libc::O_RDONLY | libc::O_NONBLOCK;
                        let fd = openat(parent, name, flags | libc::O_NOFOLLOW, 0)?;
                        // SAFETY: an open descriptor and a valid name.
                        unsafe { libc::fremovexattr(fd.as_raw_fd(), MARKER_XATTR.as_ptr()) };
                        Ok(())
                    });
                    bad.lock().unwrap().push((i as u32, why));
                }
            });
        }
    });
    (checked.into_inner(), bad.into_inner().unwrap())
}

/// How restored file `f` differs from the snapshot (size, or the first chunk that does
/// not match), or `None` when it does not.
fn verify_one(
    repo: &Repository,
    target: &Target,
    f: &FileItem,
    lengths: &HashMap<Id, u32>,
) -> io::Result<Option<String>> {
    let file = File::from(target.open_beneath(&f.rel, libc::O_RDONLY | libc::O_NONBLOCK, 0)?);
    let len = file.metadata()?.len();
    if len != f.node.size {
        return Ok(Some(format!("size is {len} bytes, the snapshot has {}", f.node.size)));
    }
    // `present` lists the offsets of the matching chunks in order: the first chunk whose
    // offset is not at its place is the first difference.
    let present = chunks_present(repo, &file, &f.node.content, lengths)?;
    let mut off = 0u64;
    for (n, id) in f.node.content.iter().enumerate() {
        if present.get(n) != Some(&off) {
            return Ok(Some(format!("content differs from byte {off}")));
        }
        off += lengths.get(id).copied().unwrap_or(0) as u64;
    }
    Ok(None)
}

/// The target folder, open. Paths below it are resolved by the kernel without leaving it
/// and without following any symlink: `openat2` with `RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS` where the kernel has it, otherwise one `O_NOFOLLOW` component at a
/// time.
struct Target {
    fd: OwnedFd,
    /// Cleared the first time the kernel says it has no `openat2`.
    openat2: AtomicBool,
}

impl Target {
    fn open(path: &Path) -> io::Result<Target> {
        let c = CString::new(path.as_os_str().as_bytes())?;
        // SAFETY: a valid NUL-terminated path; the result is checked.
        let fd =
            cvt(unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) })?;
        // SAFETY: a fresh descriptor that nothing else owns.
        Ok(Target { fd: unsafe { OwnedFd::from_raw_fd(fd) }, openat2: AtomicBool::new(true) })
    }

    /// Opens `rel` (components joined by `/`, each a checked tree entry name) below the
    /// target; `O_NOFOLLOW` and `O_CLOEXEC` are always added.
    fn open_beneath(&self, rel: &[u8], flags: i32, mode: u32) -> io::Result<OwnedFd> {
        if !rel.split(|&b| b == b'/').all(|part| tree::check_name(part).is_ok()) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a path of tree entry names"));
        }
        let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        if self.openat2.load(Ordering::Relaxed) {
            match openat2_beneath(self.fd.as_fd(), rel, flags, mode) {
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                    self.openat2.store(false, Ordering::Relaxed)
                }
                // Some seccomp filters answer EPERM for a system call they do not know; the
                // walk is as safe, and gives the real error if there is one.
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
                r => return r,
            }
        }
        self.open_walking(rel, flags, mode)
    }

    /// `open_beneath` without `openat2`: every folder on the way is opened with
    /// `O_NOFOLLOW | O_DIRECTORY`, so a symlink anywhere fails the open.
    fn open_walking(&self, rel: &[u8], flags: i32, mode: u32) -> io::Result<OwnedFd> {
        let mut parts = rel.split(|&b| b == b'/');
        let last = parts.next_back().unwrap_or_default();
        let mut dir: Option<OwnedFd> = None;
        for part in parts {
            let at = dir.as_ref().map_or(self.fd.as_fd(), |d| d.as_fd());
            let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
            dir = Some(openat(at, &component(part)?, flags, 0)?);
        }
        let at = dir.as_ref().map_or(self.fd.as_fd(), |d| d.as_fd());
        openat(at, &component(last)?, flags, mode)
    }

    /// Runs `f` with the open parent folder of `rel` and its last name.
    fn at_parent<R>(
        &self,
        rel: &[u8],
        f: impl FnOnce(BorrowedFd<'_>, &CStr) -> io::Result<R>,
    ) -> io::Result<R> {
        match rel.iter().rposition(|&b| b == b'/') {
            None => f(self.fd.as_fd(), &component(rel)?),
            Some(i) => {
                let parent = self.open_beneath(&rel[..i], libc::O_PATH | libc::O_DIRECTORY, 0)?;
                f(parent.as_fd(), &component(&rel[i + 1..])?)
            }
        }
    }
}

/// One path component as a C string; anything else is refused (tree names are checked at
/// load, so this only guards against a bug).
fn component(name: &[u8]) -> io::Result<CString> {
    if tree::check_name(name).is_err() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a single path component"));
    }
    CString::new(name).map_err(io::Error::other)
}

fn openat2_beneath(dir: BorrowedFd<'_>, rel: &[u8], flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = CString::new(rel)?;
    // SAFETY: open_how is plain data; zeroed is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.mode = if flags & libc::O_CREAT != 0 { mode as u64 } else { 0 };
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
    // SAFETY: valid pointers for the duration of the call; the result is checked.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: a valid NUL-terminated name and an open folder; the result is checked.
    let fd = cvt(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC, mode) })?;
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

/// What is at `name` in `dir`, without following a symlink: `None` when nothing is.
fn kind_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<libc::mode_t>> {
    // SAFETY: stat is plain data, filled by the call.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid name, an open folder and a stat to fill.
    match cvt(unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) }) {
        Ok(_) => Ok(Some(st.st_mode & libc::S_IFMT)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes whatever is at `name` in `dir` unless it is a folder (then creating there fails).
fn remove_non_dir(dir: BorrowedFd<'_>, name: &CStr) {
    // SAFETY: a valid NUL-terminated name and an open folder.
    unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
}

/// Makes room for a regular file at `name` in `dir`: anything else there is removed, a
/// folder with everything in it. The removal goes through `dir` itself
/// (`/proc/self/fd/N/name`), so no symlink on the way is followed.
fn clear_for_file(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    match kind_at(dir, name)? {
        None => Ok(()),
        Some(libc::S_IFREG) => Ok(()),
        Some(libc::S_IFDIR) => {
            let path = format!("/proc/self/fd/{}/", dir.as_raw_fd());
            let mut path = path.into_bytes();
            path.extend_from_slice(name.to_bytes());
            std::fs::remove_dir_all(std::ffi::OsStr::from_bytes(&path))
        }
        Some(_) => {
            // SAFETY: a valid NUL-terminated name and an open folder.
            cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) }).map(drop)
        }
    }
}

/// Creates (or keeps) the folder `name` in `dir` and opens it, writable while we fill it;
/// its real mode is applied at the end. Whatever else is there (a symlink, a file) is
/// replaced, never followed.
/// Returns its handle and whether it was there already.
fn make_dir(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<(OwnedFd, bool)> {
    // SAFETY: a valid NUL-terminated name and an open folder.
    let made = cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o700) });
    let existed = match made {
        Ok(_) => false,
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => true,
        Err(e) => return Err(e),
    };
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    let fd = match openat(dir, name, flags, 0) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)) => {
            // SAFETY: as above.
            cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) })?;
            // SAFETY: as above.
            cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o700) })?;
            openat(dir, name, flags, 0)?
        }
        r => r?,
    };
    // SAFETY: an open descriptor.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), 0o700) })?;
    Ok((fd, existed))
}

/// The names in the open folder `dir` that look like a restore's temporary files.
fn partial_names(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let own = openat(dir, c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    // SAFETY: a fresh descriptor, given to the stream (closed by closedir).
    let stream = unsafe { libc::fdopendir(std::os::fd::IntoRawFd::into_raw_fd(own)) };
    if stream.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut names = Vec::new();
    loop {
        // SAFETY: an open stream; the entry is valid until the next readdir.
        let entry = unsafe { libc::readdir(stream) };
        if entry.is_null() {
            break;
        }
        // SAFETY: d_name is NUL-terminated.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) }.to_bytes();
        if name.starts_with(PARTIAL_PREFIX.as_bytes()) {
            names.push(name.to_vec());
        }
    }
    // SAFETY: an open stream, closed once.
    unsafe { libc::closedir(stream) };
    Ok(names)
}

/// Sets a file being restored to its final size. Several workers may open one file: each
/// sets the same size, so no data they wrote is cut.
fn set_size(f: &File, size: u64) -> io::Result<()> {
    if f.metadata()?.len() != size {
        f.set_len(size)?;
    }
    Ok(())
}

/// Creates (or opens) the file `name` in `dir` at its final size; never through a symlink.
fn create_file_at(dir: BorrowedFd<'_>, name: &CStr, size: u64) -> io::Result<File> {
    let f = File::from(openat(dir, name, libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW, 0o600)?);
    set_size(&f, size)?;
    Ok(f)
}

/// Applies owner (as root), mode and times to entries below the target, each through its
/// open parent folder with `AT_SYMLINK_NOFOLLOW` (`fchmodat2` for the mode). Entries come
/// mostly grouped by folder, so the last parent opened is kept.
struct MetaWriter<'a> {
    target: &'a Target,
    as_root: bool,
    /// The last parent folder opened: its path below the target, and its handle.
    parent: Option<(Vec<u8>, OwnedFd)>,
    /// Cleared the first time the kernel says it has no `fchmodat2`.
    fchmodat2: bool,
}

impl MetaWriter<'_> {
    fn apply(&mut self, rel: &[u8], node: &Node) -> io::Result<()> {
        let (parent_rel, name) = match rel.iter().rposition(|&b| b == b'/') {
            Some(i) => (&rel[..i], &rel[i + 1..]),
            None => (&b""[..], rel),
        };
        let name = component(name)?;
        if !parent_rel.is_empty() && self.parent.as_ref().is_none_or(|(p, _)| p != parent_rel) {
            let fd = self.target.open_beneath(parent_rel, libc::O_PATH | libc::O_DIRECTORY, 0)?;
            self.parent = Some((parent_rel.to_vec(), fd));
        }
        let dir = match &self.parent {
            Some((_, fd)) if !parent_rel.is_empty() => fd.as_raw_fd(),
            _ => self.target.fd.as_raw_fd(),
        };
        let nofollow = libc::AT_SYMLINK_NOFOLLOW;
        if self.as_root {
            // SAFETY: a valid NUL-terminated name and an open folder.
            cvt(unsafe { libc::fchownat(dir, name.as_ptr(), node.uid, node.gid, nofollow) })?;
        }
        if node.kind != NodeKind::Symlink {
            self.chmod(dir, &name, node.mode)?;
        }
        let t = libc::timespec {
            tv_sec: node.mtime_ns.div_euclid(1_000_000_000),
            tv_nsec: node.mtime_ns.rem_euclid(1_000_000_000),
        };
        // SAFETY: a valid name, an open folder and two timespecs.
        cvt(unsafe { libc::utimensat(dir, name.as_ptr(), [t, t].as_ptr(), nofollow) })?;
        Ok(())
    }

    /// Sets the mode of `name` in `dir`, never through a symlink: `fchmodat2` with
    /// `AT_SYMLINK_NOFOLLOW`, or (kernels before 6.6) an `O_NOFOLLOW` open and `fchmod`.
    fn chmod(&mut self, dir: libc::c_int, name: &CStr, mode: u32) -> io::Result<()> {
        if self.fchmodat2 {
            // SAFETY: a valid NUL-terminated name and an open folder.
            let r = unsafe {
                libc::syscall(libc::SYS_fchmodat2, dir, name.as_ptr(), mode, libc::AT_SYMLINK_NOFOLLOW)
            };
            match cvt(r as libc::c_int) {
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
                    self.fchmodat2 = false
                }
                r => return r.map(drop),
            }
        }
        let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: `dir` is open for the duration of the call.
        let fd = openat(unsafe { BorrowedFd::borrow_raw(dir) }, name, flags, 0)?;
        // SAFETY: an open descriptor.
        cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode) }).map(drop)
    }
}

/// One blob of a pack and where its plaintext goes.
struct BlobPlan {
    id: Id,
    offset: u64,
    length: u32,
    raw_length: u32,
    /// (file index, offset in the file)
    targets: Vec<(u32, u64)>,
}

struct Plan {
    packs: HashMap<Id, Vec<BlobPlan>>,
    missing: Vec<(u32, String)>,
    /// The plaintext length of every chunk planned, to read files back chunk by chunk.
    lengths: HashMap<Id, u32>,
}

/// Where every chunk of the files to write comes from. With `all_lengths`, the lengths of
/// the chunks of skipped files are looked up too (to read them back).
fn plan(repo: &Repository, files: &[FileItem], all_lengths: bool) -> Result<Plan> {
    let mut by_blob: HashMap<Id, usize> = HashMap::new();
    let mut packs: HashMap<Id, Vec<BlobPlan>> = HashMap::new();
    let mut where_: Vec<(Id, usize)> = Vec::new(); // blob -> (pack, index in pack list)
    let mut missing = Vec::new();
    let mut other_lengths = HashMap::new();
    for (i, f) in files.iter().enumerate() {
        if !matches!(f.fate, Fate::Write { .. }) {
            if all_lengths {
                for id in &f.node.content {
                    if !other_lengths.contains_key(id)
                        && let Some(loc) = repo.journal.blob_location(id, BlobKind::Data)?
                    {
                        other_lengths.insert(*id, loc.raw_length);
                    }
                }
            }
            continue;
        }
        let mut offset = 0u64;
        for id in &f.node.content {
            let slot = match by_blob.get(id) {
                Some(&s) => Some(s),
                None => match repo.journal.blob_location(id, BlobKind::Data)? {
                    Some(loc) => {
                        let list = packs.entry(loc.pack).or_default();
                        list.push(BlobPlan {
                            id: *id,
                            offset: loc.offset,
                            length: loc.length,
                            raw_length: loc.raw_length,
                            targets: Vec::new(),
                        });
                        where_.push((loc.pack, list.len() - 1));
                        by_blob.insert(*id, where_.len() - 1);
                        Some(where_.len() - 1)
                    }
                    None => None,
                },
            };
            match slot {
                Some(s) => {
                    let (pack, idx) = where_[s];
                    let bp = &mut packs.get_mut(&pack).unwrap()[idx];
                    bp.targets.push((i as u32, offset));
                    offset += bp.raw_length as u64;
                }
                None => {
                    missing.push((i as u32, format!("chunk {} is in no known pack", id.short())));
                    break;
                }
            }
        }
    }
    let mut lengths = other_lengths;
    lengths.extend(packs.values().flatten().map(|b| (b.id, b.raw_length)));
    Ok(Plan { packs, missing, lengths })
}

#[allow(clippy::too_many_arguments)]
fn restore_pack(
    repo: &Repository,
    rt: &tokio::runtime::Handle,
    pack: &Id,
    mut blobs: Vec<BlobPlan>,
    dest: Dest<'_>,
    open: &mut HashMap<u32, File>,
    failed: &Mutex<HashMap<u32, Failure>>,
    counters: &Counters,
) {
    let name = format::pack_name(pack);
    blobs.sort_by_key(|b| b.offset);
    let fail = |targets: &[(u32, u64)], reason: Failure| {
        let mut f = failed.lock().unwrap();
        for (idx, _) in targets {
            f.entry(*idx).or_insert_with(|| reason.clone());
        }
    };
    let mut i = 0;
    while i < blobs.len() {
        // One read covering blobs i..j.
        let start = blobs[i].offset;
        let mut end = start + blobs[i].length as u64;
        let mut j = i + 1;
        while j < blobs.len() {
            let b = &blobs[j];
            if b.offset > end + MAX_GAP || b.offset + b.length as u64 - start > MAX_READ {
                break;
            }
            end = end.max(b.offset + b.length as u64);
            j += 1;
        }
        let data = rt.block_on(repo.backend.read(&name, start, end - start));
        if let Ok(d) = &data {
            dest.downloaded.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
        for b in &blobs[i..j] {
            let plain = match &data {
                Err(e) => Err(format!("{e}")),
                Ok(d) => {
                    let from = (b.offset - start) as usize;
                    let to = from + b.length as usize;
                    if to > d.len() {
                        Err(format!("pack {name} is truncated"))
                    } else {
                        format::decode_blob(
                            &repo.key,
                            BlobKind::Data,
                            &b.id,
                            &d[from..to],
                            b.raw_length as usize,
                        )
                        .map_err(|e| format!("{e} in pack {name}"))
                    }
                }
            };
            match plain {
                Err(reason) => fail(&b.targets, Failure::Data(reason)),
                Ok(plain) => {
                    for &(idx, off) in &b.targets {
                        if failed.lock().unwrap().contains_key(&idx) {
                            continue;
                        }
                        if let Err(e) = write_at(open, dest, idx, off, &plain) {
                            fail(&[(idx, off)], Failure::Write(describe_io(&e)));
                            // Give back what the temporary file holds now, not at the end: on
                            // a full disk the other files may still fit.
                            open.remove(&idx);
                            let _ = dest.target.at_parent(&dest.files[idx as usize].tmp, |parent, name| {
                                // SAFETY: a valid NUL-terminated name and an open folder.
                                cvt(unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), 0) })
                            });
                            continue;
                        }
                        counters.bytes.fetch_add(plain.len() as u64, Ordering::Relaxed);
                        // The worker that writes a file's last byte gives it its name.
                        let len = plain.len() as u64;
                        if dest.remaining[idx as usize].fetch_sub(len, Ordering::AcqRel) == len {
                            let f = open.remove(&idx).expect("written just now");
                            dest.finish(idx, &f);
                        }
                    }
                }
            }
        }
        i = j;
    }
}

/// Where the workers write: the target and the files being restored, with what they
/// need to finish a file.
#[derive(Clone, Copy)]
struct Dest<'a> {
    target: &'a Target,
    files: &'a [FileItem],
    /// Bytes still to write, per file; the write that takes it to 0 finishes the file.
    remaining: &'a [AtomicU64],
    as_root: bool,
    warnings: &'a Mutex<Vec<String>>,
    downloaded: &'a AtomicU64,
    shown: &'a (dyn Fn(&[u8]) -> String + Sync),
    failed: &'a Mutex<HashMap<u32, Failure>>,
    renames: &'a Mutex<Renames>,
}

/// Complete files waiting for their final name (see [`Dest::publish`]).
#[derive(Default)]
struct Renames {
    files: Vec<u32>,
    bytes: u64,
    /// When the first file of the batch was complete.
    since: Option<std::time::Instant>,
}

/// A batch of complete files is made durable and renamed once it holds this many files
/// or bytes, or its first file has waited this long (and at the end): a few `syncfs` a
/// second at most, and a complete file soon shows under its name.
const RENAME_BATCH_FILES: usize = 4096;
const RENAME_BATCH_BYTES: u64 = 256 << 20;
const RENAME_BATCH_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

impl Dest<'_> {
    /// Finishes file `idx`, complete and verified in its temporary file `f`: marker,
    /// owner (as root), mode and times go on the open file, then it waits for its final
    /// name ([`Dest::publish`]). Metadata that cannot be applied is a warning.
    fn finish(&self, idx: u32, f: &File) {
        let item = &self.files[idx as usize];
        let node = &item.node;
        let fd = f.as_raw_fd();
        let warn = |what: &str, r: io::Result<libc::c_int>| {
            if let Err(e) = r {
                self.warnings.lock().unwrap().push(format!("{}: {what}: {e}", (self.shown)(&item.rel)));
            }
        };
        set_marker(f, &item.marker);
        if self.as_root {
            // SAFETY: an open descriptor.
            warn("owner", cvt(unsafe { libc::fchown(fd, node.uid, node.gid) }));
        }
        // SAFETY: an open descriptor.
        warn("mode", cvt(unsafe { libc::fchmod(fd, node.mode) }));
        let t = libc::timespec {
            tv_sec: node.mtime_ns.div_euclid(1_000_000_000),
            tv_nsec: node.mtime_ns.rem_euclid(1_000_000_000),
        };
        // SAFETY: an open descriptor and two timespecs.
        warn("times", cvt(unsafe { libc::futimens(fd, [t, t].as_ptr()) }));
        let batch = {
            let mut r = self.renames.lock().unwrap();
            r.files.push(idx);
            r.bytes += node.size;
            let since = *r.since.get_or_insert_with(std::time::Instant::now);
            if r.files.len() < RENAME_BATCH_FILES
                && r.bytes < RENAME_BATCH_BYTES
                && since.elapsed() < RENAME_BATCH_WAIT
            {
                return;
            }
            r.bytes = 0;
            r.since = None;
            std::mem::take(&mut r.files)
        };
        self.publish(batch);
    }

    /// Gives complete files their final names, replacing whatever regular file was there.
    /// Their bytes and metadata are made durable first (one `syncfs` for the batch), so
    /// after a power loss a final name never holds bytes that did not reach the disk. A
    /// failed rename fails the file.
    fn publish(&self, batch: Vec<u32>) {
        if batch.is_empty() {
            return;
        }
        // SAFETY: an open descriptor.
        if let Err(e) = cvt(unsafe { libc::syncfs(self.target.fd.as_raw_fd()) }) {
            let mut failed = self.failed.lock().unwrap();
            for idx in batch {
                failed.entry(idx).or_insert_with(|| Failure::Write(describe_io(&e)));
            }
            return;
        }
        for idx in batch {
            if let Err(e) = self.rename(idx) {
                self.failed.lock().unwrap().entry(idx).or_insert_with(|| Failure::Write(describe_io(&e)));
            }
        }
    }

    fn rename(&self, idx: u32) -> io::Result<()> {
        let item = &self.files[idx as usize];
        let (parent_rel, name) = match item.rel.iter().rposition(|&b| b == b'/') {
            Some(i) => (&item.rel[..i], &item.rel[i + 1..]),
            None => (&b""[..], &item.rel[..]),
        };
        let tmp_name = component(&item.tmp[parent_rel.len() + usize::from(!parent_rel.is_empty())..])?;
        let name = component(name)?;
        let parent = if parent_rel.is_empty() {
            None
        } else {
            Some(self.target.open_beneath(parent_rel, libc::O_PATH | libc::O_DIRECTORY, 0)?)
        };
        let dir = parent.as_ref().map_or(self.target.fd.as_raw_fd(), |p| p.as_raw_fd());
        // SAFETY: valid NUL-terminated names and an open folder.
        cvt(unsafe { libc::renameat(dir, tmp_name.as_ptr(), dir, name.as_ptr()) }).map(drop)
    }
}

fn write_at(
    open: &mut HashMap<u32, File>,
    dest: Dest<'_>,
    idx: u32,
    off: u64,
    data: &[u8],
) -> io::Result<()> {
    if !open.contains_key(&idx) {
        if open.len() >= 64 {
            open.clear();
        }
        let item = &dest.files[idx as usize];
        let flags = libc::O_WRONLY | libc::O_CREAT;
        let f = File::from(dest.target.open_beneath(&item.tmp, flags, 0o600)?);
        set_size(&f, item.node.size)?;
        open.insert(idx, f);
    }
    open[&idx].write_all_at(data, off)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both resolvers (`openat2`, and the component walk used where the kernel lacks it)
    /// open what is below the target and refuse any symlink on the way or at the end.
    #[test]
    fn target_paths_never_follow_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("f"), b"outside").unwrap();
        let root = dir.path().join("target");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f"), b"inside").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a/out")).unwrap();
        std::os::unix::fs::symlink(outside.join("f"), root.join("a/lf")).unwrap();
        std::os::unix::fs::symlink("b", root.join("a/rel")).unwrap();
        for use_openat2 in [true, false] {
            let t = Target::open(&root).unwrap();
            t.openat2.store(use_openat2, Ordering::Relaxed);
            let f = File::from(t.open_beneath(b"a/b/f", libc::O_RDONLY, 0).unwrap());
            let mut s = String::new();
            std::io::Read::read_to_string(&mut &f, &mut s).unwrap();
            assert_eq!(s, "inside");
            for rel in [&b"a/out/f"[..], b"a/lf", b"a/rel/f", b"a/out"] {
                let e = t.open_beneath(rel, libc::O_WRONLY | libc::O_CREAT, 0o600).unwrap_err();
                // ELOOP for a symlink opened; ENOTDIR for one walked through as a folder.
                let code = e.raw_os_error();
                assert!(
                    matches!(code, Some(libc::ELOOP | libc::ENOTDIR)),
                    "{e} {}",
                    String::from_utf8_lossy(rel)
                );
            }
            for rel in [&b"../outside/f"[..], b"/etc/passwd", b"a/./b/f", b""] {
                assert!(t.open_beneath(rel, libc::O_RDONLY, 0).is_err());
            }
            assert_eq!(std::fs::read(outside.join("f")).unwrap(), b"outside");
            assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
        }
    }

    /// Modes and times go to the entry itself; a symlink where a file was is never followed,
    /// with `fchmodat2` or without it (older kernels).
    #[test]
    fn metadata_never_follows_a_symlink() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside.txt");
        std::fs::write(&outside, b"x").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).unwrap();
        let root = dir.path().join("target");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::write(root.join("a/f"), b"inside").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a/l")).unwrap();
        let before = std::fs::metadata(&outside).unwrap();
        for fchmodat2 in [true, false] {
            let t = Target::open(&root).unwrap();
            let mut meta = MetaWriter { target: &t, as_root: false, parent: None, fchmodat2 };
            let mut node = crate::repo::format::Node {
                name: serde_bytes::ByteBuf::from(b"f".to_vec()),
                kind: NodeKind::File,
                mode: 0o640,
                uid: 0,
                gid: 0,
                mtime_ns: 1_000_000_000_123,
                size: 6,
                content: Vec::new(),
                subtree: None,
                target: serde_bytes::ByteBuf::new(),
            };
            meta.apply(b"a/f", &node).unwrap();
            let m = std::fs::metadata(root.join("a/f")).unwrap();
            assert_eq!((m.mode() & 0o7777, m.mtime(), m.mtime_nsec()), (0o640, 1000, 123));
            node.mode = 0o777;
            assert!(meta.apply(b"a/l", &node).is_err());
            let after = std::fs::metadata(&outside).unwrap();
            assert_eq!(
                (after.mode(), after.mtime(), after.mtime_nsec()),
                (before.mode(), before.mtime(), before.mtime_nsec())
            );
        }
    }

    /// Temporary names fit the 255-byte limit, stay one valid component, keep text whole
    /// and differ for names that share a long start.
    #[test]
    fn partial_names_are_short_unique_components() {
        let long = "é".repeat(127) + "x";
        let other = "é".repeat(127) + "y";
        for name in [b"a.txt".to_vec(), long.clone().into_bytes(), vec![0xff; 255]] {
            let p = partial_name(&name);
            assert!(p.len() <= 255 && p.starts_with(PARTIAL_PREFIX.as_bytes()), "{}", p.len());
            assert!(tree::check_name(&p).is_ok());
        }
        let (a, b) = (partial_name(long.as_bytes()), partial_name(other.as_bytes()));
        assert_ne!(a, b);
        assert!(std::str::from_utf8(&a).is_ok());
        assert_eq!(partial_name(b"a.txt"), partial_name(b"a.txt"));
        assert!(partial_name(b"a.txt").ends_with(b"-a.txt"));
    }

    #[test]
    fn includes_are_normalised_and_confined() {
        let n = |v: &[&str]| normalise_includes(&v.iter().map(PathBuf::from).collect::<Vec<_>>());
        assert_eq!(n(&["/home//me/./docs/"]).unwrap(), vec![b"/home/me/docs".to_vec()]);
        assert_eq!(n(&["home/me"]).unwrap(), vec![b"/home/me".to_vec()]);
        assert!(n(&["/a", "/"]).unwrap().is_empty());
        let e = n(&["/home/../etc"]).unwrap_err().to_string();
        assert!(e.contains("`..` is not allowed"), "{e}");
    }

    #[test]
    fn include_selection() {
        let inc = vec![b"/home/me/docs".to_vec()];
        assert_eq!(selected(b"/home", &inc), (false, true));
        assert_eq!(selected(b"/home/me/docs", &inc), (true, true));
        assert_eq!(selected(b"/home/me/docs/a.txt", &inc), (true, true));
        assert_eq!(selected(b"/home/me/docs2", &inc), (false, false));
        assert_eq!(selected(b"/home/other", &inc), (false, false));
        assert_eq!(selected(b"/anything", &[]), (true, true));
    }
}
