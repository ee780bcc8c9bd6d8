//! Restoring a snapshot into a folder.
//!
//! 1. Walk the snapshot's trees (only what `--include` selects) and create folders,
//!    symlinks, fifos, and every file at its final size.
//! 2. Group the needed chunks by pack; workers read each pack with a few ranged reads,
//!    authenticate and hash-check every blob, and write it wherever it belongs. A blob that
//!    does not verify is never written: every file that needs it is reported and removed.
//! 3. Set ownership (as root), permissions and times, folders last and deepest first.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, anyhow};
use filetime::FileTime;

use crate::engine::tree;
use crate::ids::Id;
use crate::progress::Counters;
use crate::repo::Repository;
use crate::repo::format::{self, BlobKind, Node, NodeKind};

pub struct Settings {
    pub target: PathBuf,
    /// Absolute snapshot paths to restore (with everything below); empty: everything.
    pub includes: Vec<PathBuf>,
    pub threads: usize,
}

#[derive(Default, Debug)]
pub struct Outcome {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Files that could not be restored, with the reason. They are not left behind.
    pub failed: Vec<(String, String)>,
    /// Metadata that could not be applied (the content is fine).
    pub warnings: Vec<String>,
}

struct FileItem {
    path: PathBuf,
    node: Node,
}

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

pub fn run(
    repo: &Repository,
    rt: &tokio::runtime::Handle,
    root: &Id,
    s: &Settings,
    counters: &Counters,
) -> Result<Outcome> {
    std::fs::create_dir_all(&s.target)
        .with_context(|| format!("cannot create target {}", s.target.display()))?;
    let includes: Vec<Vec<u8>> = s
        .includes
        .iter()
        .map(|p| {
            let b = p.as_os_str().as_bytes();
            let b = if b.len() > 1 { b.strip_suffix(b"/").unwrap_or(b) } else { b };
            b.to_vec()
        })
        .collect();

    let mut out = Outcome::default();
    let mut files: Vec<FileItem> = Vec::new();
    let mut dirs: Vec<(PathBuf, Node)> = Vec::new();
    let mut links: Vec<(PathBuf, Node)> = Vec::new();
    let mut matched = includes.iter().map(|_| false).collect::<Vec<_>>();

    let phase = std::time::Instant::now();
    // 1. Structure.
    tree::walk(repo, rt, root, &mut |path, node| {
        let (take, descend) = selected(path, &includes);
        for (i, inc) in includes.iter().enumerate() {
            if inc.as_slice() == path {
                matched[i] = true;
            }
        }
        let dest = s.target.join(OsStr::from_bytes(&path[1..]));
        if node.kind == NodeKind::Dir {
            if descend {
                create_dir(&dest)?;
                dirs.push((dest, node.clone()));
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
                if std::fs::symlink_metadata(&dest).is_ok_and(|m| !m.is_file()) {
                    remove_any(&dest)?;
                }
                if node.content.is_empty() {
                    create_file(&dest, node.size)
                        .with_context(|| format!("cannot create {}", dest.display()))?;
                }
                // Files with content are created by the workers, in parallel.
                counters.total_bytes.fetch_add(node.size, Ordering::Relaxed);
                counters.total_files.fetch_add(1, Ordering::Relaxed);
                files.push(FileItem { path: dest, node: node.clone() });
            }
            NodeKind::Symlink => {
                let _ = std::fs::remove_file(&dest);
                std::os::unix::fs::symlink(OsStr::from_bytes(&node.target), &dest)
                    .with_context(|| format!("cannot create symlink {}", dest.display()))?;
                links.push((dest, node.clone()));
                out.symlinks += 1;
            }
            NodeKind::Fifo => {
                let _ = std::fs::remove_file(&dest);
                let c = std::ffi::CString::new(dest.as_os_str().as_bytes())?;
                // SAFETY: a valid NUL-terminated path.
                if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("cannot create fifo {}", dest.display()));
                }
                links.push((dest, node.clone()));
            }
            NodeKind::Dir => unreachable!(),
        }
        Ok(false)
    })?;
    for (i, inc) in s.includes.iter().enumerate() {
        if !matched[i] {
            return Err(anyhow!(
                "--include {}: no such path in the snapshot (see `cairn ls`)",
                inc.display()
            ));
        }
    }

    tracing::debug!("structure: {:.2}s", phase.elapsed().as_secs_f64());
    // 2. Content, grouped by pack.
    let plan = plan(repo, &files)?;
    // The plan holds where every chunk goes; the chunk lists themselves are not needed
    // any more (they are most of the memory a restore of many files takes).
    for f in &mut files {
        f.node.content = Vec::new();
    }
    let failed: Mutex<HashMap<u32, String>> = Mutex::new(HashMap::new());
    for (file_idx, reason) in plan.missing {
        failed.lock().unwrap().entry(file_idx).or_insert(reason);
    }
    let queue = Mutex::new(plan.packs.into_iter().collect::<Vec<_>>());
    let workers = s.threads.max(repo.backend.concurrency()).max(1);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                let mut open: HashMap<u32, File> = HashMap::new();
                loop {
                    let Some((pack, blobs)) = queue.lock().unwrap().pop() else {
                        break;
                    };
                    restore_pack(repo, rt, &pack, blobs, &files, &mut open, &failed, counters);
                }
            });
        }
    });

    // Files that failed are removed: a partial file must not pass for a restored one.
    let failed = failed.into_inner().unwrap();
    for (idx, reason) in &failed {
        let f = &files[*idx as usize];
        let _ = std::fs::remove_file(&f.path);
        out.failed.push((f.path.display().to_string(), reason.clone()));
    }
    out.failed.sort();

    tracing::debug!("content: {:.2}s", phase.elapsed().as_secs_f64());
    // 3. Metadata.
    let as_root = unsafe { libc::geteuid() } == 0;
    for (i, f) in files.iter().enumerate() {
        if failed.contains_key(&(i as u32)) {
            continue;
        }
        out.files += 1;
        out.bytes += f.node.size;
        if let Err(e) = apply_meta(&f.path, &f.node, as_root) {
            out.warnings.push(format!("{}: {e}", f.path.display()));
        }
    }
    for (path, node) in &links {
        if let Err(e) = apply_meta(path, node, as_root) {
            out.warnings.push(format!("{}: {e}", path.display()));
        }
    }
    for (path, node) in dirs.iter().rev() {
        if let Err(e) = apply_meta(path, node, as_root) {
            out.warnings.push(format!("{}: {e}", path.display()));
        }
    }
    tracing::debug!("metadata: {:.2}s", phase.elapsed().as_secs_f64());
    Ok(out)
}

/// Opens (creating if needed) a file to restore into, at its final size. Several workers
/// may do this for one file: each sets the same size, so no data they wrote is cut.
fn create_file(path: &Path, size: u64) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = OpenOptions::new().write(true).create(true).custom_flags(libc::O_NOFOLLOW).open(path)?;
    if f.metadata()?.len() != size {
        f.set_len(size)?;
    }
    Ok(f)
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => Ok(()),
    }
}

fn create_dir(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            std::fs::remove_file(path)?;
            std::fs::create_dir(path)?;
        }
        Err(_) => {
            std::fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?
        }
    }
    // Writable while we fill it; the real mode is applied at the end.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

fn apply_meta(path: &Path, node: &Node, as_root: bool) -> Result<()> {
    let mtime = FileTime::from_unix_time(
        node.mtime_ns.div_euclid(1_000_000_000),
        node.mtime_ns.rem_euclid(1_000_000_000) as u32,
    );
    if as_root {
        std::os::unix::fs::lchown(path, Some(node.uid), Some(node.gid))?;
    }
    if node.kind != NodeKind::Symlink {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(node.mode))?;
    }
    // utimensat without following links: never opens the path, so fifos are safe too.
    filetime::set_symlink_file_times(path, mtime, mtime)?;
    Ok(())
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
}

fn plan(repo: &Repository, files: &[FileItem]) -> Result<Plan> {
    let mut by_blob: HashMap<Id, usize> = HashMap::new();
    let mut packs: HashMap<Id, Vec<BlobPlan>> = HashMap::new();
    let mut where_: Vec<(Id, usize)> = Vec::new(); // blob -> (pack, index in pack list)
    let mut missing = Vec::new();
    for (i, f) in files.iter().enumerate() {
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
    Ok(Plan { packs, missing })
}

#[allow(clippy::too_many_arguments)]
fn restore_pack(
    repo: &Repository,
    rt: &tokio::runtime::Handle,
    pack: &Id,
    mut blobs: Vec<BlobPlan>,
    files: &[FileItem],
    open: &mut HashMap<u32, File>,
    failed: &Mutex<HashMap<u32, String>>,
    counters: &Counters,
) {
    let name = format::pack_name(pack);
    blobs.sort_by_key(|b| b.offset);
    let fail = |targets: &[(u32, u64)], reason: &str| {
        let mut f = failed.lock().unwrap();
        for (idx, _) in targets {
            f.entry(*idx).or_insert_with(|| reason.to_string());
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
                Err(reason) => fail(&b.targets, &reason),
                Ok(plain) => {
                    for &(idx, off) in &b.targets {
                        if failed.lock().unwrap().contains_key(&idx) {
                            continue;
                        }
                        if let Err(e) = write_at(open, files, idx, off, &plain) {
                            fail(&[(idx, off)], &format!("cannot write: {e}"));
                        }
                        counters.bytes.fetch_add(plain.len() as u64, Ordering::Relaxed);
                    }
                }
            }
        }
        i = j;
    }
}

fn write_at(
    open: &mut HashMap<u32, File>,
    files: &[FileItem],
    idx: u32,
    off: u64,
    data: &[u8],
) -> std::io::Result<()> {
    if !open.contains_key(&idx) {
        if open.len() >= 64 {
            open.clear();
        }
        let f = create_file(&files[idx as usize].path, files[idx as usize].node.size)?;
        open.insert(idx, f);
    }
    open[&idx].write_all_at(data, off)
}

#[cfg(test)]
mod tests {
    use super::selected;

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
