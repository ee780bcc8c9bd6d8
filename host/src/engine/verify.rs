//! `cairn verify`: is everything restorable?
//!
//! 1. The backend's listing against the journal: missing objects, objects the journal does
//!    not know, sizes that differ, unfinished uploads.
//! 2. Index and snapshot objects: their bytes match their names and they decrypt.
//! 3. With `--read-data`: every selected pack is read (ranged reads), its bytes checked
//!    against its name, its header against the journal, and every blob authenticated and
//!    hash-checked. Verified packs get a time stamp, so `--read-data-subset` can pick the
//!    least recently verified ones first and repeated runs cover everything.
//! 4. Every snapshot's trees are walked: each folder listing must load, each entry's name
//!    must be one path component (unique in its folder), and each file's chunks must live
//!    in a pack that is present and sound. Damage is reported by snapshot and path.
//!
//! Packs found missing or corrupt are marked `damaged` in the journal, so backups store
//! their data again instead of deduplicating against it, and `repair` knows what to fix.
//! Only evidence about the bytes counts as damage: bytes that fail authentication or their
//! hash, an object the backend says does not exist, a size that differs. A plugin that
//! still fails after its retries (crash, memory cap, deadline) makes verify fail with an
//! operational error and marks nothing.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, bail};
use serde::Serialize;

use crate::engine::tree::TreeReader;
use crate::ids::Id;
use crate::journal::{ObjectKind, State};
use crate::plugin::BackendError;
use crate::repo::Repository;
use crate::repo::format::{self, NodeKind, WholeObject};
use crate::untrusted::escape;

/// Which packs `--read-data` reads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Subset {
    All,
    /// This share (0-100) of the packs, least recently verified first.
    Percent(f64),
    /// Part `n` of `t` (1-based) of the packs, by name.
    Part(u32, u32),
}

impl std::str::FromStr for Subset {
    type Err = String;
    fn from_str(s: &str) -> Result<Subset, String> {
        if let Some(p) = s.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| format!("{s:?} is not a percentage"))?;
            if !(v > 0.0 && v <= 100.0) {
                return Err(format!("{s}: the percentage must be above 0 and at most 100"));
            }
            return Ok(Subset::Percent(v));
        }
        if let Some((n, t)) = s.split_once('/') {
            let n: u32 = n.trim().parse().map_err(|_| format!("{s:?} is not of the form n/t"))?;
            let t: u32 = t.trim().parse().map_err(|_| format!("{s:?} is not of the form n/t"))?;
            if n == 0 || t == 0 || n > t {
                return Err(format!("{s}: need 1 <= n <= t"));
            }
            return Ok(Subset::Part(n, t));
        }
        Err(format!("{s:?}: give a percentage like 10% or a part like 2/5"))
    }
}

/// One thing wrong with the repository.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    /// missing, size-mismatch, unknown, damaged, unfinished-upload
    pub kind: &'static str,
    pub object: String,
    pub detail: String,
}

/// A file or folder of a snapshot that cannot be restored (fully).
#[derive(Clone, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Affected {
    pub snapshot: String,
    pub path: String,
    pub reason: String,
}

#[derive(Default, Debug, Serialize)]
pub struct Report {
    pub objects_listed: u64,
    pub snapshots_checked: u64,
    pub trees_checked: u64,
    pub packs_read: u64,
    pub bytes_read: u64,
    pub blobs_checked: u64,
    pub problems: Vec<Problem>,
    pub affected: Vec<Affected>,
    /// Data blobs (ids) with no sound copy: what `repair` tries to recover.
    #[serde(skip)]
    pub lost_blobs: HashMap<Id, String>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty() && self.affected.is_empty()
    }

    fn problem(&mut self, kind: &'static str, object: &str, detail: impl Into<String>) {
        self.problems.push(Problem { kind, object: object.to_string(), detail: detail.into() });
    }
}

/// Where `repair --quarantine` moves objects it will not delete.
pub const QUARANTINE: &str = "quarantine/";

/// `--read-data` reads packs in pieces of this size.
const PACK_READ_PIECE: u64 = 4 << 20;

pub fn run(
    repo: &Repository,
    rt: &tokio::runtime::Handle,
    read_data: Option<Subset>,
    threads: usize,
) -> Result<Report> {
    let mut report = Report::default();
    let journal = &repo.journal;

    // 1. Listing against the journal.
    let mut remote: HashMap<String, u64> = HashMap::new();
    for obj in rt.block_on(repo.backend.list(""))? {
        // What `repair --quarantine` set aside is not part of the repository any more, and
        // locks are not part of the data (nor in the journal).
        if !obj.name.starts_with(QUARANTINE) && !obj.name.starts_with(format::LOCKS_PREFIX) {
            remote.insert(obj.name, obj.size);
        }
    }
    report.objects_listed = remote.len() as u64;
    let objects = journal.all_objects()?;
    let known: HashSet<&str> = objects.iter().map(|o| o.name.as_str()).collect();
    for obj in &objects {
        let stored = remote.get(&obj.name).copied();
        match (obj.state, stored) {
            (State::Uploaded | State::Verified | State::Damaged, None) => {
                report.problem(
                    "missing",
                    &obj.name,
                    format!("the journal records {} bytes; the backend has nothing", obj.size),
                );
                if obj.kind == ObjectKind::Pack {
                    let why = format!("its pack {} is missing", obj.name);
                    let blobs: Vec<(Id, String)> =
                        journal.pack_entries(&obj.name)?.into_iter().map(|e| (e.id, why.clone())).collect();
                    journal.mark_damaged(&obj.name, "missing", &blobs)?;
                }
            }
            (State::Uploaded | State::Verified | State::Damaged, Some(size))
                if size != obj.size && obj.kind != ObjectKind::Config =>
            {
                report.problem(
                    "size-mismatch",
                    &obj.name,
                    format!("{} bytes recorded, {size} stored", obj.size),
                );
                if obj.kind == ObjectKind::Pack {
                    // Blobs past the stored end are gone; the rest may still be readable.
                    let why = format!("its pack {} is cut short ({size} of {} bytes)", obj.name, obj.size);
                    let blobs: Vec<(Id, String)> = journal
                        .pack_entries(&obj.name)?
                        .into_iter()
                        .filter(|e| e.offset + e.length as u64 > size)
                        .map(|e| (e.id, why.clone()))
                        .collect();
                    journal.mark_damaged(&obj.name, "size mismatch", &blobs)?;
                }
            }
            (State::Damaged, Some(_)) => {
                let note = journal.damage_note(&obj.name)?.unwrap_or_else(|| "damaged".into());
                report.problem(
                    "damaged",
                    &obj.name,
                    format!("{note} (found earlier; `cairn repair` recovers what it can)"),
                );
            }
            (State::Uploading | State::Deleting, _) => {
                report.problem(
                    "unfinished",
                    &obj.name,
                    format!("left {} by an interrupted run", obj.state.as_str()),
                );
            }
            _ => {}
        }
    }
    let mut unknown: Vec<&String> = remote.keys().filter(|n| !known.contains(n.as_str())).collect();
    unknown.sort();
    for name in unknown {
        let detail = if format::ObjectName::parse(name).is_some() {
            "not in the journal (another client's work in progress, a lost journal, or a foreign file)"
        } else {
            "a foreign file: not a name cairn writes (cairn never reads, moves or deletes it)"
        };
        report.problem("unknown", name, detail);
    }
    for (_, name, size) in rt.block_on(repo.backend.list_incomplete(""))? {
        // A lock object is a few bytes written whole by a command as it starts: an
        // unfinished one is a command killed while taking its lock (or one taking it right
        // now). It holds no data and claims nothing, so it is not damage.
        if name.starts_with("locks/") {
            continue;
        }
        report.problem("unfinished-upload", &name, format!("an unfinished upload of {size} bytes"));
    }

    // 2. Index and snapshot objects must match their names and decrypt.
    let reported: HashSet<String> = report.problems.iter().map(|p| p.object.clone()).collect();
    for obj in objects.iter().filter(|o| matches!(o.kind, ObjectKind::Index | ObjectKind::Snapshot)) {
        if !matches!(obj.state, State::Uploaded | State::Verified)
            || !remote.contains_key(&obj.name)
            || reported.contains(&obj.name)
        {
            continue;
        }
        let kind = if obj.kind == ObjectKind::Index { WholeObject::Index } else { WholeObject::Snapshot };
        let bytes = match rt.block_on(format::read_object(&repo.backend, kind, &obj.name)) {
            Ok(bytes) => bytes,
            Err(e @ format::ReadObjectError::TooLarge { .. }) => {
                report.problem("too-large", &obj.name, e.to_string());
                continue;
            }
            Err(format::ReadObjectError::Backend(e)) => return Err(e.into()),
        };
        let decodes = match obj.kind {
            ObjectKind::Index => {
                format::open_object::<format::IndexFile>(&repo.key, format::AAD_INDEX, &bytes, false).is_ok()
            }
            _ => format::NewerSnapshot::is_authentic(&format::open_snapshot(&repo.key, &bytes)),
        };
        if format::id_of_name(&obj.name) != Some(Id::of_bytes(&bytes)) {
            report.problem("damaged", &obj.name, "its bytes do not match its name");
        } else if !decodes {
            report.problem("damaged", &obj.name, "it does not decrypt (authentication failed)");
        }
    }

    // 3. Pack contents.
    if let Some(subset) = read_data {
        let chosen = choose_packs(repo, subset, &remote)?;
        let queue = Mutex::new(chosen);
        let results = Mutex::new(Vec::new());
        let (bytes_read, blobs_checked) = (AtomicU64::new(0), AtomicU64::new(0));
        std::thread::scope(|scope| {
            for _ in 0..threads.max(1) {
                scope.spawn(|| {
                    loop {
                        let Some((name, size)) = queue.lock().unwrap().pop() else { break };
                        let r = check_pack(repo, rt, &name, size, &bytes_read, &blobs_checked);
                        results.lock().unwrap().push((name, r));
                    }
                });
            }
        });
        report.bytes_read = bytes_read.into_inner();
        report.blobs_checked = blobs_checked.into_inner();
        let mut plugin_failures: Vec<(String, BackendError)> = Vec::new();
        for (name, r) in results.into_inner().unwrap() {
            report.packs_read += 1;
            let was_damaged = journal.object(&name)?.is_some_and(|o| o.state == State::Damaged);
            match r {
                Ok(check) if check.is_sound() => {
                    if was_damaged {
                        journal.clear_damage(&name)?;
                        // Read whole and sound now: the earlier finding no longer holds.
                        report.problems.retain(|p| !(p.kind == "damaged" && p.object == name));
                    } else {
                        journal.mark_verified(&name)?;
                    }
                }
                Ok(check) => {
                    let detail = check.describe();
                    report.problem("damaged", &name, detail.clone());
                    let why = |id: &Id| format!("chunk {} fails authentication in pack {name}", id.short());
                    let blobs: Vec<(Id, String)> = check.bad_blobs.iter().map(|id| (*id, why(id))).collect();
                    journal.mark_damaged(&name, &detail, &blobs)?;
                }
                Err(PackError::Damaged(detail)) => {
                    report.problem("damaged", &name, format!("cannot be read: {detail}"));
                    let why = format!("its pack {name} cannot be read");
                    let blobs: Vec<(Id, String)> =
                        journal.pack_entries(&name)?.into_iter().map(|e| (e.id, why.clone())).collect();
                    journal.mark_damaged(&name, "unreadable", &blobs)?;
                }
                Err(PackError::Plugin(e)) => plugin_failures.push((name, e)),
                Err(PackError::Local(e)) => return Err(e),
            }
        }
        if let Some((_, first)) = plugin_failures.first() {
            // The plugin told us nothing about these packs: nothing is marked damaged.
            bail!(
                "could not check {} packs: plugin {} failed: {first}; nothing was marked damaged; \
                 run `cairn verify --read-data` again (if the plugin runs out of memory, raise \
                 repository.grants.memory_mib)",
                plugin_failures.len(),
                escape(&first.plugin)
            );
        }
    }
    if journal.all_objects()?.iter().any(|o| o.state == State::Damaged) {
        // Cached chunk lists may point into damaged packs: read every file again next time.
        journal.clear_file_cache()?;
    }

    // 4. Every snapshot, by path.
    let damage = snapshot_damage(repo, rt, &|id| journal.blob_lost(id))?;
    report.snapshots_checked = damage.snapshots;
    report.trees_checked = damage.trees;
    report.lost_blobs = damage.lost_blobs;
    for (snap, path, reason) in damage.entries {
        report.affected.push(Affected { snapshot: snap.short(), path: display_path(&path), reason });
    }
    report.affected.sort();
    Ok(report)
}

/// A snapshot path as printable text: names come from the repository, so they are escaped.
pub fn display_path(path: &[u8]) -> String {
    if path.is_empty() { "/".to_string() } else { crate::untrusted::escape_bytes(path) }
}

/// Damaged entries below a tree: (path relative to it, reason).
type TreeDamage = Rc<Vec<(Vec<u8>, String)>>;

/// What cannot be restored, snapshot by snapshot.
#[derive(Default)]
pub struct SnapshotDamage {
    /// (snapshot, absolute path, reason); a path of a folder means its listing is lost.
    pub entries: Vec<(Id, Vec<u8>, String)>,
    /// Lost blobs that some snapshot needs, with the reason.
    pub lost_blobs: HashMap<Id, String>,
    pub snapshots: u64,
    pub trees: u64,
}

/// Walks every snapshot and lists the files whose chunks `lost` reports lost, the entries
/// whose name is refused, and the folders whose listing cannot be read.
pub fn snapshot_damage(
    repo: &Repository,
    rt: &tokio::runtime::Handle,
    lost: &dyn Fn(&Id) -> Result<Option<String>>,
) -> Result<SnapshotDamage> {
    let reader = TreeReader::new(repo, rt);
    let mut memo: HashMap<Id, TreeDamage> = HashMap::new();
    let mut out = SnapshotDamage { entries: Vec::new(), lost_blobs: HashMap::new(), snapshots: 0, trees: 0 };
    for (snap_id, snap) in repo.journal.snapshots()? {
        out.snapshots += 1;
        let damage = check_tree(&reader, &snap.tree, &mut memo, &mut out.trees, lost, &mut out.lost_blobs)?;
        for (path, reason) in damage.iter() {
            out.entries.push((snap_id, path.clone(), reason.clone()));
        }
    }
    Ok(out)
}

/// The packs `--read-data` reads: (name, size). Damaged packs that are back at their full
/// size are read again, so a pack restored from a copy is noticed.
fn choose_packs(
    repo: &Repository,
    subset: Subset,
    remote: &HashMap<String, u64>,
) -> Result<Vec<(String, u64)>> {
    let mut packs: Vec<(String, u64)> =
        repo.journal.packs_by_verification()?.into_iter().map(|(p, _)| (p.name, p.size)).collect();
    for obj in repo.journal.all_objects()? {
        if obj.kind == ObjectKind::Pack
            && obj.state == State::Damaged
            && remote.get(&obj.name) == Some(&obj.size)
        {
            packs.insert(0, (obj.name, obj.size));
        }
    }
    Ok(match subset {
        Subset::All => packs,
        Subset::Percent(pct) => {
            let n = ((packs.len() as f64) * pct / 100.0).ceil() as usize;
            packs.into_iter().take(n).collect()
        }
        Subset::Part(n, t) => {
            packs.sort();
            let len = packs.len();
            let (from, to) = ((n as usize - 1) * len / t as usize, n as usize * len / t as usize);
            packs.into_iter().skip(from).take(to - from).collect()
        }
    })
}

/// The damaged entries below tree `id`, as paths relative to it (`/a/b`), memoised: the
/// trees of successive snapshots are mostly the same.
fn check_tree(
    reader: &TreeReader<'_>,
    id: &Id,
    memo: &mut HashMap<Id, TreeDamage>,
    trees: &mut u64,
    lost: &dyn Fn(&Id) -> Result<Option<String>>,
    lost_blobs: &mut HashMap<Id, String>,
) -> Result<TreeDamage> {
    if let Some(r) = memo.get(id) {
        return Ok(r.clone());
    }
    *trees += 1;
    let mut out = Vec::new();
    match reader.load_checked(id) {
        Err(e) => {
            if let Some(reason) = lost(id)? {
                lost_blobs.insert(*id, reason);
            }
            out.push((Vec::new(), format!("folder listing {} cannot be read: {e:#}", id.short())));
        }
        Ok((tree, rejected)) => {
            // Entries refused at load: a restore skips them, so they are damage too.
            for r in &rejected {
                let mut path = b"/".to_vec();
                path.extend_from_slice(&r.name);
                out.push((path, format!("{}; a restore skips it", r.why)));
            }
            for node in &tree.nodes {
                let mut path = b"/".to_vec();
                path.extend_from_slice(&node.name);
                match node.kind {
                    NodeKind::File => {
                        // Every lost chunk is recorded (repair needs them all); the file is
                        // reported once, with the first reason.
                        let mut first = None;
                        for chunk in &node.content {
                            if let Some(reason) = lost(chunk)? {
                                first.get_or_insert_with(|| reason.clone());
                                lost_blobs.insert(*chunk, reason);
                            }
                        }
                        if let Some(reason) = first {
                            out.push((path.clone(), reason));
                        }
                    }
                    NodeKind::Dir => {
                        if let Some(sub) = &node.subtree {
                            for (p, reason) in check_tree(reader, sub, memo, trees, lost, lost_blobs)?.iter()
                            {
                                let mut full = path.clone();
                                full.extend_from_slice(p);
                                out.push((full, reason.clone()));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let out = Rc::new(out);
    memo.insert(*id, out.clone());
    Ok(out)
}

/// What reading a whole pack found.
pub struct PackCheck {
    pub hash_ok: bool,
    pub header_ok: bool,
    pub bad_blobs: Vec<Id>,
    pub blobs: usize,
}

impl PackCheck {
    pub fn is_sound(&self) -> bool {
        self.hash_ok && self.header_ok && self.bad_blobs.is_empty()
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.hash_ok {
            parts.push("its bytes do not match its name".to_string());
        }
        if !self.header_ok {
            parts.push("its header is unreadable or disagrees with the index".to_string());
        }
        if !self.bad_blobs.is_empty() {
            parts.push(format!("{} of its {} chunks fail authentication", self.bad_blobs.len(), self.blobs));
        }
        parts.join("; ")
    }
}

/// Why a pack could not be read to its end.
pub enum PackError {
    /// Evidence about the pack itself: the backend says it does not exist, or it ends early.
    Damaged(String),
    /// The plugin failed (crashed, ran out of memory or time, broke the contract, ...) after
    /// its retries: that says nothing about the stored bytes.
    Plugin(BackendError),
    /// A local failure (the journal).
    Local(anyhow::Error),
}

impl From<anyhow::Error> for PackError {
    fn from(e: anyhow::Error) -> Self {
        PackError::Local(e)
    }
}

impl From<BackendError> for PackError {
    fn from(e: BackendError) -> Self {
        if e.kind.is_verdict_on_data() { PackError::Damaged(e.to_string()) } else { PackError::Plugin(e) }
    }
}

/// Reads a whole pack as a stream, in pieces, checking as it goes: its bytes against its name,
/// every blob the journal places in it (authenticated and hash-checked), and its header
/// against the journal. Memory stays at a piece plus the largest blob, however big the pack.
pub fn check_pack(
    repo: &Repository,
    rt: &tokio::runtime::Handle,
    name: &str,
    size: u64,
    bytes_read: &AtomicU64,
    blobs_checked: &AtomicU64,
) -> Result<PackCheck, PackError> {
    let mut entries = repo.journal.pack_entries(name)?;
    entries.sort_by_key(|e| e.offset);
    // Where the blobs end and the header begins, as far as the journal knows.
    let data_end = entries.iter().map(|e| e.offset + e.length as u64).max().unwrap_or(0);
    let mut hasher = blake3::Hasher::new();
    // Bytes [window_start, read) of the pack that a blob or the header still needs.
    let mut window: Vec<u8> = Vec::new();
    let mut window_start = 0u64;
    let mut read = 0u64;
    let mut next = 0;
    let mut bad_blobs = Vec::new();
    while read < size {
        let want = (size - read).min(PACK_READ_PIECE);
        let piece = rt.block_on(repo.backend.read(name, read, want))?;
        if piece.is_empty() {
            break;
        }
        hasher.update(&piece);
        read += piece.len() as u64;
        window.extend_from_slice(&piece);
        drop(piece);
        while let Some(e) = entries.get(next)
            && e.offset + e.length as u64 <= read
        {
            let from = (e.offset - window_start) as usize;
            let blob = &window[from..from + e.length as usize];
            if format::decode_blob(&repo.key, e.kind, &e.id, blob, e.raw_length as usize).is_err() {
                bad_blobs.push(e.id);
            }
            blobs_checked.fetch_add(1, Ordering::Relaxed);
            next += 1;
        }
        let keep_from = entries.get(next).map_or(data_end, |e| e.offset).clamp(window_start, read);
        window.drain(..(keep_from - window_start) as usize);
        window_start = keep_from;
    }
    bytes_read.fetch_add(read, Ordering::Relaxed);
    if read < size {
        return Err(PackError::Damaged(format!("only {read} of {size} bytes could be read")));
    }
    let hash_ok = format::id_of_name(name) == Some(Id(*hasher.finalize().as_bytes()));
    // What remains is the header and the trailer.
    let header_ok = match format::read_pack_header(&repo.key, &window, size) {
        Ok(mut header) => {
            header.sort_by_key(|e| e.offset);
            header == entries
        }
        Err(_) => false,
    };
    Ok(PackCheck { hash_ok, header_ok, bad_blobs, blobs: entries.len() })
}

#[cfg(test)]
mod tests {
    use super::Subset;

    #[test]
    fn subsets_parse() {
        assert_eq!("10%".parse::<Subset>().unwrap(), Subset::Percent(10.0));
        assert_eq!("2/5".parse::<Subset>().unwrap(), Subset::Part(2, 5));
        assert!("0%".parse::<Subset>().is_err());
        assert!("6/5".parse::<Subset>().is_err());
        assert!("abc".parse::<Subset>().is_err());
    }
}
