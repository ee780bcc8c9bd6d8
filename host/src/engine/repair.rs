//! `cairn repair`: heal the repository without ever destroying what can be recovered.
//!
//! It starts from a `verify` (listing, snapshots, and with `--read-data` every byte), then:
//! - objects the journal does not know are adopted when they are valid cairn objects (pack
//!   headers, index and snapshot objects, key files); anything else is listed and left
//!   alone, or moved to `quarantine/` with `--quarantine`;
//! - lost index objects are written again from the journal; lost or damaged snapshot
//!   objects are uploaded again from the journal's copy;
//! - chunks of missing or corrupt packs are recovered: intact chunks of a damaged pack are
//!   copied to a new pack, and lost ones are read again from source files that still hold
//!   them (the chunk id, a keyed hash, proves it is the same data). What cannot be
//!   recovered is listed by snapshot and path; `--purge-broken` rewrites those snapshots
//!   without it, naming every path it drops;
//! - unfinished uploads and partial objects that are provably cairn's own are deleted only
//!   with `--delete-unrecoverable`.
//!
//! With `--dry-run` it prints the plan and changes nothing in the repository.

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Result, anyhow, bail};

use crate::crypto::KeyFile;
use crate::engine::backup::{write_index, write_snapshot};
use crate::engine::chunker::Chunker;
use crate::engine::packer::{Dedup, Packing};
use crate::engine::tree::TreeReader;
use crate::engine::verify::{self, Affected, QUARANTINE, Subset, display_path, snapshot_damage};
use crate::ids::Id;
use crate::journal::{ObjectKind, State};
use crate::plugin::ErrorKind;
use crate::repo::Repository;
use crate::repo::format::{self, BlobKind, IndexFile, NodeKind, ObjectName, Snapshot, Tree, WholeObject};
use crate::untrusted::escape;

#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub dry_run: bool,
    pub quarantine: bool,
    pub delete_unrecoverable: bool,
    pub purge_broken: bool,
    pub read_data: bool,
    /// Size of the data packs it writes (the config's `pack_size`).
    pub pack_size: u64,
}

impl Options {
    fn destructive(&self) -> bool {
        self.quarantine || self.delete_unrecoverable || self.purge_broken
    }
}

#[derive(Default, Debug)]
pub struct Outcome {
    /// What was done (or, in a dry run, would be done), one line each.
    pub actions: Vec<String>,
    /// Objects listed and left alone, with why.
    pub left_alone: Vec<String>,
    /// Still unrecoverable after the repair.
    pub unrecoverable: Vec<Affected>,
    /// Removed from snapshots by `--purge-broken`.
    pub purged: Vec<Affected>,
    pub salvaged_chunks: u64,
    pub recovered_chunks: u64,
}

/// Blobs a repair stores again (salvaged, read again from sources, rewritten trees), each
/// once, through the packer and uploader backup and prune use. A dry run only counts them.
struct Stored<'a> {
    rt: &'a tokio::runtime::Handle,
    packing: Option<Packing>,
    ids: HashSet<Id>,
}

impl<'a> Stored<'a> {
    fn start(repo: &Repository, rt: &'a tokio::runtime::Handle, opts: Options) -> Self {
        let packing = (!opts.dry_run)
            .then(|| Packing::start(repo, rt, Arc::new(Dedup::new(repo.journal.clone())), opts.pack_size));
        Stored { rt, packing, ids: HashSet::new() }
    }

    fn has(&self, id: &Id) -> bool {
        self.ids.contains(id)
    }

    fn add(&mut self, kind: BlobKind, id: Id, sealed: &[u8], raw_length: u32) -> Result<()> {
        if self.ids.insert(id)
            && let Some(p) = &self.packing
        {
            p.packer(kind).add(kind, id, sealed, raw_length as usize)?;
        }
        Ok(())
    }

    /// Every blob added so far is uploaded (a snapshot about to reference them may be written).
    fn settle(&self) -> Result<()> {
        if let Some(p) = &self.packing {
            p.data.flush()?;
            p.trees.flush()?;
            p.wait_uploaded()?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        match self.packing.take() {
            Some(p) => p.finish(self.rt, true).map(|_| ()),
            None => Ok(()),
        }
    }
}

/// `sources` are this config's backup sources: lost chunks are read again only from files
/// below them. A snapshot is untrusted data (another machine sharing the key may have
/// written it): its paths must not make repair read, and store, any other local file.
pub fn run(
    repo: &Repository,
    rt: &tokio::runtime::Handle,
    opts: Options,
    stale: &[(Id, Snapshot)],
    sources: &[PathBuf],
    threads: usize,
) -> Result<Outcome> {
    if opts.destructive() && !stale.is_empty() {
        let newest =
            stale.iter().map(|(_, s)| crate::engine::snapshots::display_time(s)).max().unwrap_or_default();
        bail!(
            "refusing --quarantine, --delete-unrecoverable and --purge-broken: the repository has {} snapshot(s) \
             (newest {newest}) that this journal did not know (another client, or this journal is an old copy), \
             so objects that look unknown may be theirs; run `cairn repair` without those options first (it \
             learns their snapshots and indexes), then again with them",
            stale.len()
        );
    }
    refuse_if_append_only(opts, repo.backend.can_delete())?;
    let journal = &repo.journal;
    let mut out = Outcome::default();
    let verb = |done: &str, planned: &str| if opts.dry_run { planned.to_string() } else { done.to_string() };

    let report = verify::run(repo, rt, opts.read_data.then_some(Subset::All), threads)?;

    // Unknown objects: adopt what is ours, list (or quarantine) the rest.
    let mut adopted_anything = false;
    let mut quarantine: Vec<(String, String)> = Vec::new();
    for p in report.problems.iter().filter(|p| p.kind == "unknown") {
        if ObjectName::parse(&p.object).is_none() {
            out.left_alone.push(foreign(&p.object));
            continue;
        }
        match classify(repo, rt, &p.object)? {
            Some(what) => {
                adopted_anything = true;
                if !opts.dry_run {
                    adopt(repo, rt, &p.object, &what)?;
                }
                out.actions.push(format!("{} {} ({what})", verb("adopted", "would adopt"), p.object));
            }
            None => quarantine.push((p.object.clone(), "not a valid cairn object".into())),
        }
    }
    if adopted_anything && !opts.dry_run {
        crate::repo::sync::sync_remote_blocking(repo, rt)?;
    }

    // Damaged or lost index objects: the journal knows their packs, so index them again.
    let by_name: HashMap<String, crate::journal::ObjectRow> =
        journal.all_objects()?.into_iter().map(|o| (o.name.clone(), o)).collect();
    let mut reindex = false;
    for p in &report.problems {
        let Some(obj) = by_name.get(&p.object) else { continue };
        let bad = matches!(p.kind, "missing" | "size-mismatch" | "damaged");
        if !bad {
            continue;
        }
        match obj.kind {
            ObjectKind::Index => {
                reindex = true;
                if !opts.dry_run {
                    journal.unindex(&obj.name)?;
                    retire_or_forget(repo, &obj.name, p.kind == "missing")?;
                }
                if p.kind != "missing" {
                    quarantine.push((obj.name.clone(), "damaged index (replaced)".into()));
                }
                out.actions.push(format!(
                    "{} the packs listed by {} ({})",
                    verb("indexed again", "would index again"),
                    obj.name,
                    p.kind
                ));
            }
            ObjectKind::Snapshot => {
                let Some(id) = format::id_of_name(&obj.name) else { continue };
                let Some((_, snap)) = journal.snapshots()?.into_iter().find(|(s, _)| *s == id) else {
                    continue;
                };
                if !opts.dry_run {
                    let new = write_snapshot(repo, rt, &snap)?;
                    journal.rename_snapshot(&id, &new, &snap)?;
                    retire_or_forget(repo, &obj.name, p.kind == "missing")?;
                    out.actions.push(format!(
                        "uploaded snapshot {} again from the journal as {}",
                        id.short(),
                        new.short()
                    ));
                } else {
                    out.actions.push(format!(
                        "would upload snapshot {} again from the journal ({})",
                        id.short(),
                        p.kind
                    ));
                }
                if p.kind != "missing" {
                    quarantine.push((obj.name.clone(), "damaged snapshot object (replaced)".into()));
                }
            }
            _ => {}
        }
    }

    // Lost chunks: salvage intact ones from damaged packs, read the rest from the sources.
    let mut again = Stored::start(repo, rt, opts);
    let damaged_packs: Vec<crate::journal::ObjectRow> = journal
        .all_objects()?
        .into_iter()
        .filter(|o| o.kind == ObjectKind::Pack && o.state == State::Damaged)
        .collect();
    for pack in &damaged_packs {
        for e in journal.pack_entries(&pack.name)? {
            if journal
                .packs_holding(&e.id)?
                .iter()
                .any(|(p, st)| p != &pack.name && matches!(st, State::Uploaded | State::Verified))
            {
                continue;
            }
            if journal.blob_lost(&e.id)?.is_some() {
                continue; // its copy in this pack is known bad
            }
            let stored = rt.block_on(repo.backend.read(&pack.name, e.offset, e.length as u64));
            let Ok(stored) = stored else { continue };
            if stored.len() == e.length as usize
                && format::decode_blob(&repo.key, e.kind, &e.id, &stored, e.raw_length as usize).is_ok()
            {
                again.add(e.kind, e.id, &stored, e.raw_length)?;
                out.salvaged_chunks += 1;
            }
        }
    }

    // Chunks that are still lost: from source files that still hold them.
    // Walking every snapshot again is only needed when something is lost (the verify
    // above found it; adoption or salvage since may have changed the picture).
    let anything_lost = !report.affected.is_empty() || !damaged_packs.is_empty();
    let damage = if anything_lost {
        snapshot_damage(repo, rt, &|id| journal.blob_lost(id))?
    } else {
        verify::SnapshotDamage::default()
    };
    let mut wanted: HashSet<Id> = damage.lost_blobs.keys().copied().filter(|id| !again.has(id)).collect();
    if !wanted.is_empty() {
        let chunker = Chunker::new(&repo.params.chunker);
        let mut seen_paths = HashSet::new();
        let mut window = Vec::new();
        let mut sealed = Vec::new();
        for (_, path, _) in &damage.entries {
            if wanted.is_empty() || !seen_paths.insert(path.clone()) {
                continue;
            }
            let p = Path::new(std::ffi::OsStr::from_bytes(path));
            if !below_a_source(p, sources) {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(p) else { continue };
            if !meta.is_file() {
                continue;
            }
            let Ok(mut file) = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(p)
            else {
                continue;
            };
            let mut found = Vec::new();
            let r = chunker.chunk(&mut file, &mut window, |chunk| {
                let id = repo.key.blob_id(chunk);
                if wanted.contains(&id) {
                    format::encode_blob_into(&repo.key, BlobKind::Data, &id, chunk, 1, &mut sealed);
                    found.push((id, sealed.clone(), chunk.len() as u32));
                }
                Ok(())
            });
            if r.is_err() {
                continue;
            }
            for (id, bytes, raw) in found {
                if wanted.remove(&id) {
                    again.add(BlobKind::Data, id, &bytes, raw)?;
                    out.recovered_chunks += 1;
                }
            }
        }
    }
    again.finish()?;
    if out.salvaged_chunks > 0 {
        out.actions.push(format!(
            "{} {} intact chunk(s) out of damaged packs into new packs",
            verb("copied", "would copy"),
            out.salvaged_chunks
        ));
    }
    if out.recovered_chunks > 0 {
        out.actions.push(format!(
            "{} {} lost chunk(s) from source files that still hold them",
            verb("stored again", "would store again"),
            out.recovered_chunks
        ));
    }

    // What is still lost, snapshot by snapshot.
    let recovered = again.ids;
    let still = if anything_lost {
        snapshot_damage(repo, rt, &|id| {
            if recovered.contains(id) { Ok(None) } else { journal.blob_lost(id) }
        })?
    } else {
        verify::SnapshotDamage::default()
    };
    let mut broken: HashMap<Id, HashSet<Vec<u8>>> = HashMap::new();
    for (snap, path, reason) in &still.entries {
        out.unrecoverable.push(Affected {
            snapshot: snap.short(),
            path: display_path(path),
            reason: reason.clone(),
        });
        broken.entry(*snap).or_default().insert(path.clone());
    }
    out.unrecoverable.sort();

    if opts.purge_broken && !broken.is_empty() {
        let mut trees = Stored::start(repo, rt, opts);
        for (snap_id, paths) in &broken {
            let Some((_, snap)) = journal.snapshots()?.into_iter().find(|(s, _)| s == snap_id) else {
                continue;
            };
            let reader = TreeReader::new(repo, rt);
            let mut dropped = Vec::new();
            let root = rewrite_tree(repo, &reader, &snap.tree, b"", paths, &mut trees, &mut dropped)?
                .ok_or_else(|| anyhow!("the root folder listing of snapshot {} is lost", snap_id.short()))?;
            for path in dropped {
                out.purged.push(Affected {
                    snapshot: snap_id.short(),
                    path: display_path(&path),
                    reason: "removed from the snapshot (--purge-broken)".into(),
                });
            }
            if opts.dry_run {
                out.actions
                    .push(format!("would rewrite snapshot {} without its broken files", snap_id.short()));
                continue;
            }
            trees.settle()?;
            let mut new_snap = snap.clone();
            new_snap.tree = root;
            if !new_snap.tags.iter().any(|t| t == "repaired") {
                new_snap.tags.push("repaired".into());
            }
            let new_id = write_snapshot(repo, rt, &new_snap)?;
            rt.block_on(repo.delete_snapshots(&[*snap_id]))?;
            out.actions.push(format!(
                "rewrote snapshot {} as {} without its broken files",
                snap_id.short(),
                new_id.short()
            ));
        }
        trees.finish()?;
        out.purged.sort();
        if !opts.dry_run {
            out.unrecoverable.clear();
        }
    }

    // Damaged packs whose intact content now lives elsewhere are retired (kept, unused);
    // missing ones are forgotten.
    for pack in &damaged_packs {
        let present = rt.block_on(repo.backend.stat(&pack.name))?.is_some();
        if !opts.dry_run {
            retire_or_forget(repo, &pack.name, !present)?;
        }
        if present {
            quarantine.push((pack.name.clone(), "damaged pack (its intact chunks were copied)".into()));
        }
        out.actions.push(format!(
            "{} {}",
            verb(
                if present { "retired damaged pack" } else { "forgot missing pack" },
                if present { "would retire damaged pack" } else { "would forget missing pack" }
            ),
            pack.name
        ));
    }

    // Unfinished uploads and partial objects: ours provably, deleted only on request.
    let incomplete = rt.block_on(repo.backend.list_incomplete(""))?;
    for (id, name, size) in incomplete {
        if ObjectName::parse(&name).is_none() {
            out.left_alone.push(format!("unfinished upload of {}", foreign(&name)));
            continue;
        }
        let ours = journal.object(&name)?.is_some() || rt.block_on(repo.backend.stat(&name))?.is_some();
        if ours && opts.delete_unrecoverable {
            if !opts.dry_run {
                rt.block_on(repo.backend.abort_incomplete(&id))?;
            }
            out.actions.push(format!(
                "{} the unfinished upload of {name} ({size} bytes)",
                verb("deleted", "would delete")
            ));
        } else if ours {
            out.left_alone.push(format!(
                "unfinished upload of {name} ({size} bytes): cairn's own; --delete-unrecoverable deletes it"
            ));
        } else {
            out.left_alone.push(format!(
                "unfinished upload of {name} ({size} bytes): not provably cairn's (another client may be writing it)"
            ));
        }
    }
    for obj in journal
        .objects_in_state(State::Uploading)?
        .into_iter()
        .chain(journal.objects_in_state(State::Deleting)?)
    {
        if opts.delete_unrecoverable {
            if !opts.dry_run {
                rt.block_on(repo.delete_objects(&[(obj.name.clone(), obj.kind)]))?;
            }
            out.actions.push(format!("{} the partial upload {}", verb("deleted", "would delete"), obj.name));
        } else {
            out.left_alone.push(format!(
                "{}: a partial upload of cairn's own ({}); --delete-unrecoverable deletes it",
                obj.name,
                obj.state.as_str()
            ));
        }
    }

    // Objects retired by an earlier repair are set aside on request.
    if opts.quarantine {
        for obj in journal.objects_in_state(State::Retired)? {
            if !quarantine.iter().any(|(n, _)| n == &obj.name)
                && rt.block_on(repo.backend.stat(&obj.name))?.is_some()
            {
                quarantine.push((obj.name, "retired by an earlier repair".into()));
            }
        }
    }

    // Foreign and replaced objects: left alone, or set aside.
    for (name, why) in quarantine {
        let Some(parsed) = ObjectName::parse(&name) else {
            out.left_alone.push(foreign(&name));
            continue;
        };
        if opts.quarantine {
            if opts.dry_run {
                out.actions.push(format!("would move {name} to {QUARANTINE} ({why})"));
            } else {
                let target = move_to_quarantine(repo, rt, &parsed)?;
                out.actions.push(format!("moved {name} to {target} ({why})"));
            }
        } else {
            out.left_alone.push(format!("{name}: {why}; --quarantine moves it to {QUARANTINE}"));
        }
    }

    if !opts.dry_run {
        write_index(repo, rt)?;
        if reindex || !damaged_packs.is_empty() || out.recovered_chunks > 0 {
            journal.clear_file_cache()?;
        }
    }
    Ok(out)
}

/// Refuses the options that delete in an append-only repository. Said before anything is
/// uploaded (the command checks it before it even takes its lock), so nothing is half done.
pub fn refuse_if_append_only(opts: Options, can_delete: bool) -> Result<()> {
    if opts.destructive() && !can_delete {
        // Moving to quarantine/ is a copy and a delete; the other two delete outright.
        bail!(
            "refusing --quarantine, --delete-unrecoverable and --purge-broken: they delete objects (moving to \
             {QUARANTINE} is a copy then a delete), and this repository is append-only \
             (repository.grants.delete = false); nothing was changed; run `cairn repair` without them, or grant \
             deletes"
        );
    }
    Ok(())
}

/// What an unknown object is, if it is a valid cairn object of this repository.
fn classify(repo: &Repository, rt: &tokio::runtime::Handle, name: &str) -> Result<Option<String>> {
    let Some(info) = rt.block_on(repo.backend.stat(name))? else { return Ok(None) };
    if name.starts_with("data/") && format::id_of_name(name).is_some() {
        return Ok(rt
            .block_on(crate::repo::rebuild::read_header(repo, name, info.size))?
            .map(|e| format!("a pack of {} chunks, from its header", e.len())));
    }
    if name.starts_with("index/") || name.starts_with("snapshots/") {
        let kind = if name.starts_with("index/") { WholeObject::Index } else { WholeObject::Snapshot };
        let Some(bytes) = read_capped(repo, rt, kind, name)? else { return Ok(None) };
        if format::id_of_name(name) != Some(Id::of_bytes(&bytes)) {
            return Ok(None);
        }
        let ok = if name.starts_with("index/") {
            format::open_object::<IndexFile>(&repo.key, format::AAD_INDEX, &bytes, false).is_ok()
        } else {
            format::NewerSnapshot::is_authentic(&format::open_snapshot(&repo.key, &bytes))
        };
        return Ok(ok.then(|| if name.starts_with("index/") { "an index" } else { "a snapshot" }.to_string()));
    }
    if name.starts_with("keys/") {
        let Some(bytes) = read_capped(repo, rt, WholeObject::Key, name)? else { return Ok(None) };
        return Ok(serde_json::from_slice::<KeyFile>(&bytes).is_ok().then(|| "a key file".to_string()));
    }
    Ok(None)
}

/// A whole object of `kind`, or `None` when it is larger than its kind may be (then it is
/// not a valid object of that kind, and nothing was downloaded).
fn read_capped(
    repo: &Repository,
    rt: &tokio::runtime::Handle,
    kind: WholeObject,
    name: &str,
) -> Result<Option<Vec<u8>>> {
    match rt.block_on(format::read_object(&repo.backend, kind, name)) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(format::ReadObjectError::TooLarge { .. }) => Ok(None),
        Err(format::ReadObjectError::Backend(e)) => Err(e.into()),
    }
}

fn adopt(repo: &Repository, rt: &tokio::runtime::Handle, name: &str, _what: &str) -> Result<()> {
    let info = rt.block_on(repo.backend.stat(name))?.ok_or_else(|| anyhow!("{name} vanished"))?;
    let journal = &repo.journal;
    if name.starts_with("data/") {
        if let Some(entries) = rt.block_on(crate::repo::rebuild::read_header(repo, name, info.size))? {
            journal.record_present(
                name,
                ObjectKind::Pack,
                info.size,
                format::id_of_name(name).as_ref(),
                &entries,
            )?;
        }
    } else if name.starts_with("keys/") {
        let bytes = rt.block_on(format::read_object(&repo.backend, WholeObject::Key, name))?;
        journal.record_present(name, ObjectKind::Key, info.size, Some(&Id::of_bytes(&bytes)), &[])?;
    }
    // Index and snapshot objects are picked up by the sync that follows.
    Ok(())
}

/// Whether `path` (absolute, from a snapshot) lies at or below one of `sources`, with no `.`
/// or `..` component that could climb out of it.
fn below_a_source(path: &Path, sources: &[PathBuf]) -> bool {
    use std::path::Component;
    path.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && sources.iter().any(|s| path.starts_with(s))
}

/// Marks a replaced object retired (still stored) or forgets it (gone).
fn retire_or_forget(repo: &Repository, name: &str, gone: bool) -> Result<()> {
    if gone { repo.journal.forget_object(name) } else { repo.journal.retire(name) }
}

/// How a foreign name (one cairn never writes) is listed: escaped, and never acted on.
fn foreign(name: &str) -> String {
    format!("{}: a foreign name (not one cairn writes); never moved or deleted", escape(name))
}

/// Fresh names tried in `quarantine/` (`NAME`, then `NAME.1` ...) before giving up.
const QUARANTINE_ATTEMPTS: u32 = 1000;

/// Copies an object under `quarantine/` and then deletes the original: nothing is lost,
/// it just leaves the repository's namespace. An earlier quarantined object of the same
/// name is never replaced: the copy takes the first free `quarantine/NAME.N`. Any object may
/// be quarantined, of any size (a pack, or a hostile object): it is copied through a
/// temporary file piece by piece, never held in memory whole. Returns the name of the copy.
fn move_to_quarantine(repo: &Repository, rt: &tokio::runtime::Handle, name: &ObjectName) -> Result<String> {
    let original = name.to_string();
    let info = rt.block_on(repo.backend.stat(&original))?.ok_or_else(|| anyhow!("{original} vanished"))?;
    let dir = repo.tmp_dir();
    std::fs::create_dir_all(&dir)?;
    let mut copy = tempfile::NamedTempFile::new_in(&dir)?;
    let mut size = 0u64;
    while size < info.size {
        let piece =
            rt.block_on(repo.backend.read(&original, size, (info.size - size).min(QUARANTINE_PIECE)))?;
        if piece.is_empty() {
            break;
        }
        std::io::Write::write_all(&mut copy, &piece)?;
        size += piece.len() as u64;
    }
    std::io::Write::flush(&mut copy)?;
    let mut stored = None;
    for attempt in 0..QUARANTINE_ATTEMPTS {
        let Some(target) = name.quarantined(attempt) else {
            bail!("{original} is already in {QUARANTINE}");
        };
        let target = target.to_string();
        match rt.block_on(repo.backend.upload_file(&target, copy.path(), size, true)) {
            Ok(()) => {
                stored = Some(target);
                break;
            }
            Err(e) if matches!(e.kind, ErrorKind::AlreadyExists(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let Some(target) = stored else {
        bail!(
            "{QUARANTINE} already holds {QUARANTINE_ATTEMPTS} copies of {original}; the original was kept; \
             clear out {QUARANTINE} and run again"
        );
    };
    match rt.block_on(repo.backend.stat(&target))? {
        Some(i) if i.size == size => {}
        _ => bail!("the copy of {original} in {QUARANTINE} could not be confirmed; the original was kept"),
    }
    rt.block_on(repo.backend.delete(std::slice::from_ref(&original)))?;
    repo.journal.forget_object(&original)?;
    Ok(target)
}

/// Bytes read at a time when copying an object into quarantine.
const QUARANTINE_PIECE: u64 = 8 << 20;

/// Rewrites a tree without the `broken` paths (files whose data is lost, folders whose
/// listing is lost). Returns the new tree id, or `None` when this folder itself is broken.
fn rewrite_tree(
    repo: &Repository,
    reader: &TreeReader<'_>,
    id: &Id,
    prefix: &[u8],
    broken: &HashSet<Vec<u8>>,
    trees: &mut Stored<'_>,
    dropped: &mut Vec<Vec<u8>>,
) -> Result<Option<Id>> {
    if broken.contains(prefix) {
        dropped.push(prefix.to_vec());
        return Ok(None);
    }
    let tree = reader.load(id)?;
    let mut nodes = Vec::with_capacity(tree.nodes.len());
    let mut changed = false;
    for node in &tree.nodes {
        let mut path = prefix.to_vec();
        path.push(b'/');
        path.extend_from_slice(&node.name);
        match node.kind {
            NodeKind::File if broken.contains(&path) => {
                dropped.push(path);
                changed = true;
                continue;
            }
            NodeKind::Dir => {
                let below = broken
                    .iter()
                    .any(|b| b == &path || (b.starts_with(&path) && b.get(path.len()) == Some(&b'/')));
                if below && let Some(sub) = &node.subtree {
                    match rewrite_tree(repo, reader, sub, &path, broken, trees, dropped)? {
                        None => {
                            changed = true;
                            continue;
                        }
                        Some(new) if new != *sub => {
                            let mut n = node.clone();
                            n.subtree = Some(new);
                            nodes.push(n);
                            changed = true;
                            continue;
                        }
                        Some(_) => {}
                    }
                }
            }
            _ => {}
        }
        nodes.push(node.clone());
    }
    if !changed {
        return Ok(Some(*id));
    }
    let bytes = postcard::to_stdvec(&Tree { version: 1, nodes })?;
    let new = repo.key.blob_id(&bytes);
    if !repo.journal.has_blob(&new)? {
        let sealed = format::encode_blob(&repo.key, BlobKind::Tree, &new, &bytes, 1);
        trees.add(BlobKind::Tree, new, &sealed, bytes.len() as u32)?;
    }
    Ok(Some(new))
}
