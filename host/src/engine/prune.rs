//! `prune`: delete the packs no snapshot needs, repack those mostly unused.
//!
//! Three phases, deleting last:
//! 1. Mark ([`super::mark`]): every snapshot's trees are walked and the blobs they reach
//!    recorded on disk. A snapshot whose trees cannot be read stops prune.
//! 2. Plan (SQL over the mark and the journal): for every blob needed, one copy is kept (the
//!    keeper: in a complete pack before an uploading or damaged one, then in the pack whose
//!    share of needed bytes is highest, so that after an interrupted repack the new, dense
//!    copy wins and the old pack empties). A healthy pack that keeps nothing is deleted; one
//!    whose unused share is above `max_unused` is repacked, most unused first, within
//!    `max_repack` bytes. Damaged packs and packs in any transient state are never touched,
//!    nor any object the journal does not know. Index objects that list a pack being
//!    deleted are read to find them.
//! 3. Execute: the repacked blobs are downloaded (authenticated), written through the one
//!    packer and uploaded by the one uploader (journaled `uploading` then `uploaded`); new
//!    index objects list the new packs and every pack the rewritten index objects keep; only
//!    then are the old packs and old index objects deleted, through
//!    [`Repository::delete_objects`] (journaled `deleting` before each delete).
//!
//! A run killed at any point leaves every snapshot restorable: until the deletions start
//! nothing was removed, and the deletions are journaled first and rolled forward by the next
//! writing command. A re-plan after a crash sees the leftovers (a new pack that duplicates an
//! old one, an old pack now empty) and completes the work.

use std::sync::Arc;

use anyhow::{Result, anyhow, bail};
use serde::Serialize;

use super::mark::Mark;
use crate::engine::backup::{INDEX_ENTRIES, upload_index, write_index};
use crate::engine::packer::{Dedup, Packing};
use crate::ids::Id;
use crate::journal::ObjectKind;
use crate::repo::Repository;
use crate::repo::format::{self, BlobKind, IndexFile, IndexPack, WholeObject};
use crate::repo::sync::fetch_checked;

pub struct Options {
    /// Repack a pack when more than this share (0.0 to 1.0) of its blob bytes is unused.
    pub max_unused: f64,
    /// Repack at most this many bytes of packs.
    pub max_repack: Option<u64>,
    /// Size of new packs.
    pub pack_size: u64,
}

/// One pack the plan deletes or repacks.
#[derive(Clone, Debug, Serialize)]
pub struct PackPlan {
    pub name: String,
    pub size: u64,
    /// Bytes of the blobs kept from this pack (moved to a new pack when it is repacked).
    pub used: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Plan {
    pub snapshots: u64,
    pub needed_blobs: u64,
    pub packs: u64,
    pub pack_bytes: u64,
    /// Bytes in complete packs that no snapshot needs: whole packs nothing needs, and the
    /// unneeded blobs (duplicates included) of the others; what a prune with no threshold
    /// and no limit would free, before the new packs' headers.
    pub unused_bytes: u64,
    pub delete: Vec<PackPlan>,
    pub repack: Vec<PackPlan>,
    /// Index objects that list a pack being removed: rewritten without it.
    pub rewrite_indexes: Vec<String>,
    /// Damaged packs, left alone (`cairn repair` deals with them).
    pub damaged: Vec<String>,
    /// Packs in a transient state (uploading, deleting) or retired: never touched by prune.
    pub untouched: u64,
    /// Bytes downloaded to repack.
    pub download_bytes: u64,
    /// Bytes of the new packs, estimated (their headers are compressed).
    pub upload_bytes: u64,
}

impl Plan {
    pub fn delete_bytes(&self) -> u64 {
        self.delete.iter().map(|p| p.size).sum()
    }
    pub fn repack_bytes(&self) -> u64 {
        self.repack.iter().map(|p| p.size).sum()
    }
    /// Pack bytes the run frees: exact for deleted packs, estimated for repacked ones.
    pub fn freed_bytes(&self) -> u64 {
        (self.delete_bytes() + self.repack_bytes()).saturating_sub(self.upload_bytes)
    }
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.repack.is_empty() && self.rewrite_indexes.is_empty()
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    pub packs_deleted: u64,
    pub pack_bytes_deleted: u64,
    pub indexes_deleted: u64,
    pub packs_written: u64,
    pub bytes_uploaded: u64,
    pub bytes_downloaded: u64,
}

/// Refuses at once in an append-only repository, naming the grant.
pub fn require_deletes(repo: &Repository, command: &str) -> Result<()> {
    if !repo.backend.can_delete() {
        bail!(
            "this repository is append-only (repository.grants.delete = false): {command} removes nothing; \
             run it where the config allows deletes"
        );
    }
    Ok(())
}

/// What a prune planned and, unless it was a dry run, did.
#[derive(Debug, Serialize)]
pub struct Report {
    pub plan: Plan,
    pub done: Option<Outcome>,
}

/// Prune: the one entry the command layer calls once the repository is open (for writing,
/// unless `dry_run`). `leaving` are snapshots about to be forgotten in the same run
/// (`forget --prune --dry-run`): they are not marked, so the plan is the one the real run
/// would make.
pub fn run(
    repo: &Repository,
    rt: &tokio::runtime::Handle,
    opts: &Options,
    leaving: &[Id],
    dry_run: bool,
) -> Result<Report> {
    if !dry_run {
        require_deletes(repo, "prune")?;
    }
    let (mark, plan) = plan(repo, rt, opts, leaving)?;
    let done = if dry_run { None } else { Some(execute(repo, rt, &mark, &plan, opts)?) };
    Ok(Report { plan, done })
}

/// Marks and plans; changes nothing.
pub fn plan(
    repo: &Repository,
    rt: &tokio::runtime::Handle,
    opts: &Options,
    leaving: &[Id],
) -> Result<(Mark, Plan)> {
    let started = std::time::Instant::now();
    let mark = Mark::new(repo)?;
    let reader = crate::engine::tree::TreeReader::new(repo, rt);
    let mut snapshots = 0;
    for (id, snap) in repo.journal.snapshots()? {
        if !leaving.contains(&id) {
            mark.snapshot(&reader, &id, &snap, 0)?;
            snapshots += 1;
            tracing::trace!(
                "prune: marked snapshot {} at {:.3}s",
                id.short(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    mark.finish()?;
    tracing::debug!("prune: marked {snapshots} snapshot(s) in {:.2}s", started.elapsed().as_secs_f64());
    let mut plan = plan_from_mark(&mark, opts)?;
    plan.snapshots = snapshots;
    plan.rewrite_indexes = indexes_listing(repo, rt, &mark, &plan)?;
    tracing::debug!("prune: planned at {:.2}s", started.elapsed().as_secs_f64());
    Ok((mark, plan))
}

/// The plan, from a finished mark.
pub fn plan_from_mark(mark: &Mark, opts: &Options) -> Result<Plan> {
    let db = &mark.db;
    db.execute_batch(
        "DROP TABLE IF EXISTS packs;
         DROP TABLE IF EXISTS keeper;
         CREATE TABLE packs AS
           SELECT o.oid AS oid, o.name AS name, o.state AS state, o.size AS size,
             COALESCE(s.blob_bytes, 0) AS blob_bytes, COALESCE(s.used_any, 0) AS used_any, 0 AS used
           FROM j.objects o LEFT JOIN (
             -- One pass over the blobs (in their own order), not two lookups per pack.
             SELECT b.pack AS pack, SUM(b.length) AS blob_bytes,
               SUM(CASE WHEN n.id IS NULL THEN 0 ELSE b.length END) AS used_any
             FROM j.blobs b LEFT JOIN needed n ON n.kind = b.kind AND n.id = b.id
             GROUP BY b.pack) s ON s.pack = o.oid
           WHERE o.kind = 'pack';
         CREATE UNIQUE INDEX packs_oid ON packs (oid);
         CREATE TABLE keeper (kind INTEGER NOT NULL, id BLOB NOT NULL, pack INTEGER NOT NULL,
            offset INTEGER NOT NULL, length INTEGER NOT NULL, raw_length INTEGER NOT NULL,
            PRIMARY KEY (kind, id)) WITHOUT ROWID;
         INSERT INTO keeper SELECT kind, id, pack, offset, length, raw_length FROM (
           SELECT b.kind AS kind, b.id AS id, b.pack AS pack, b.offset AS offset, b.length AS length,
             b.raw_length AS raw_length,
             ROW_NUMBER() OVER (PARTITION BY b.kind, b.id ORDER BY
               CASE p.state WHEN 'verified' THEN 3 WHEN 'uploaded' THEN 3 WHEN 'uploading' THEN 2 ELSE 1 END DESC,
               CAST(p.used_any AS REAL) / MAX(p.blob_bytes, 1) DESC, b.pack) AS rn
           FROM needed n JOIN j.blobs b ON b.id = n.id AND b.kind = n.kind JOIN packs p ON p.oid = b.pack
           WHERE p.state IN ('uploaded', 'verified', 'uploading', 'damaged')
             AND NOT EXISTS (SELECT 1 FROM j.damaged_blobs d WHERE d.id = b.id AND d.pack = b.pack))
         WHERE rn = 1;
         CREATE INDEX keeper_pack ON keeper (pack, offset);
         UPDATE packs SET used = (SELECT COALESCE(SUM(k.length), 0) FROM keeper k WHERE k.pack = packs.oid);",
    )?;
    let missing: Option<(i64, Vec<u8>)> = db
        .query_row(
            "SELECT COUNT(*), MIN(n.id) FROM needed n
               WHERE NOT EXISTS (SELECT 1 FROM keeper k WHERE k.kind = n.kind AND k.id = n.id)",
            [],
            |r| Ok((r.get(0)?, r.get::<_, Option<Vec<u8>>>(1)?)),
        )
        .map(|(n, id)| id.map(|id| (n, id)))?;
    if let Some((n, id)) = missing {
        let short = Id::from_slice(&id).map(|i| i.short()).unwrap_or_default();
        bail!(
            "{n} chunk(s) that snapshots need are in no readable pack (e.g. {short}); nothing was deleted: \
             run `cairn verify` and `cairn repair`"
        );
    }

    let mut plan = Plan { needed_blobs: mark.count("SELECT COUNT(*) FROM needed")?, ..Plan::default() };
    let mut candidates = Vec::new();
    {
        let mut stmt = db.prepare("SELECT name, state, size, blob_bytes, used FROM packs ORDER BY name")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let (name, state): (String, String) = (r.get(0)?, r.get(1)?);
            let (size, blob_bytes, used) =
                (r.get::<_, i64>(2)? as u64, r.get::<_, i64>(3)? as u64, r.get::<_, i64>(4)? as u64);
            plan.packs += 1;
            plan.pack_bytes += size;
            match state.as_str() {
                "uploaded" | "verified" => {}
                "damaged" => {
                    plan.damaged.push(name);
                    continue;
                }
                _ => {
                    plan.untouched += 1;
                    continue;
                }
            }
            let pack = PackPlan { name, size, used };
            if used == 0 {
                plan.unused_bytes += size;
                plan.delete.push(pack);
            } else {
                plan.unused_bytes += blob_bytes.saturating_sub(used);
                let unused = blob_bytes.saturating_sub(used) as f64 / blob_bytes.max(1) as f64;
                if unused > opts.max_unused {
                    candidates.push((unused, pack));
                }
            }
        }
    }
    // Most unused first, as long as the repack budget allows.
    candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.name.cmp(&b.1.name)));
    let mut budget = opts.max_repack.unwrap_or(u64::MAX);
    for (_, pack) in candidates {
        if pack.size > budget {
            break;
        }
        budget -= pack.size;
        let pieces = pieces_of(mark, &pack.name)?;
        plan.download_bytes += pieces.iter().map(|p| p.end - p.start).sum::<u64>();
        // Each entry costs about 45 bytes in a header, before compression.
        plan.upload_bytes += pack.used + 45 * pieces.iter().map(|p| p.blobs.len() as u64).sum::<u64>();
        plan.repack.push(pack);
    }
    if !plan.repack.is_empty() {
        plan.upload_bytes += 2 * 64; // the new packs' trailers (one data, one tree pack at least)
    }
    Ok(plan)
}

/// The index objects in the journal that list a pack the plan removes, or a pack the journal
/// no longer knows (deleted by this journal: sync records every pack a known index lists, so
/// an unknown one is gone; this also finishes a prune whose pack deletions completed and
/// whose index rewrite did not). Read one at a time.
fn indexes_listing(
    repo: &Repository,
    rt: &tokio::runtime::Handle,
    mark: &Mark,
    plan: &Plan,
) -> Result<Vec<String>> {
    mark.db.execute_batch(
        "DROP TABLE IF EXISTS doomed; CREATE TABLE doomed (name TEXT PRIMARY KEY) WITHOUT ROWID;",
    )?;
    {
        let mut ins = mark.db.prepare("INSERT OR IGNORE INTO doomed (name) VALUES (?1)")?;
        for p in plan.delete.iter().chain(&plan.repack) {
            ins.execute([&p.name])?;
        }
    }
    let mut out = Vec::new();
    for obj in repo.journal.objects_of_kind(ObjectKind::Index)? {
        if !matches!(obj.state, crate::journal::State::Uploaded | crate::journal::State::Verified) {
            continue;
        }
        let index = read_index(repo, rt, &obj.name)?;
        let mut lists = mark.db.prepare_cached("SELECT 1 FROM doomed WHERE name = ?1")?;
        let mut hit = false;
        for p in &index.packs {
            let pack = format::pack_name(&p.id);
            if lists.exists([&pack])? || repo.journal.object(&pack)?.is_none() {
                hit = true;
                break;
            }
        }
        if hit {
            out.push(obj.name);
        }
    }
    Ok(out)
}

/// Reads and opens one index object; any failure stops prune before it deletes anything.
fn read_index(repo: &Repository, rt: &tokio::runtime::Handle, name: &str) -> Result<IndexFile> {
    let (id, bytes) = rt.block_on(fetch_checked(repo, WholeObject::Index, name))?.ok_or_else(|| {
        anyhow!("index object {name} is larger than cairn writes; prune deleted nothing: run `cairn repair`")
    })?;
    if format::id_of_name(name) != Some(id) {
        bail!("index object {name} does not match its name; prune deleted nothing: run `cairn repair`");
    }
    format::open_object(&repo.key, format::AAD_INDEX, &bytes, false).map_err(|e| {
        anyhow!("index object {name} cannot be opened ({e}); prune deleted nothing: run `cairn repair`")
    })
}

/// Carries out a plan (see the module documentation for the order and why it is safe).
pub fn execute(
    repo: &Repository,
    rt: &tokio::runtime::Handle,
    mark: &Mark,
    plan: &Plan,
    opts: &Options,
) -> Result<Outcome> {
    let mut out = Outcome::default();
    if plan.is_empty() {
        return Ok(out);
    }
    require_deletes(repo, "prune")?;
    let started = std::time::Instant::now();
    // 1. Repack: the kept blobs of each repacked pack, into new packs.
    if !plan.repack.is_empty() {
        let (written, bytes, downloaded) = repack(repo, rt, mark, plan, opts)?;
        out.packs_written = written;
        out.bytes_uploaded = bytes;
        out.bytes_downloaded = downloaded;
    }
    tracing::debug!("prune: repacked in {:.2}s", started.elapsed().as_secs_f64());
    crate::testing::pause_point("prune-repacked");
    // 2. Index objects: the new packs (and any other pack no index lists yet), and every
    // pack that a rewritten index object keeps.
    write_index(repo, rt)?;
    rewrite_indexes(repo, rt, mark, &plan.rewrite_indexes)?;
    // The file cache must not point at chunks about to go (the next backup would reuse
    // them without reading the file).
    repo.journal.forget_cached_files(&mark.stale_cache_rows()?)?;
    tracing::debug!("prune: indexed at {:.2}s", started.elapsed().as_secs_f64());
    crate::testing::pause_point("prune-indexed");
    // 3. Only now: delete.
    // Index objects first: at every instant each pack a remaining index lists exists, so a
    // machine that syncs after an interruption never trusts a deleted pack (docs/format.md,
    // "Locks").
    // Two calls, since a backend may delete one batch in any order.
    let indexes: Vec<(String, ObjectKind)> =
        plan.rewrite_indexes.iter().map(|n| (n.clone(), ObjectKind::Index)).collect();
    rt.block_on(repo.delete_objects(&indexes))?;
    let packs: Vec<(String, ObjectKind)> =
        plan.delete.iter().chain(&plan.repack).map(|p| (p.name.clone(), ObjectKind::Pack)).collect();
    rt.block_on(repo.delete_objects(&packs))?;
    out.packs_deleted = (plan.delete.len() + plan.repack.len()) as u64;
    out.pack_bytes_deleted = plan.delete_bytes() + plan.repack_bytes();
    out.indexes_deleted = plan.rewrite_indexes.len() as u64;
    tracing::debug!("prune: deleted at {:.2}s", started.elapsed().as_secs_f64());
    Ok(out)
}

/// Moves the kept blobs of the repacked packs into new packs. Returns (packs, bytes
/// uploaded, bytes downloaded).
fn repack(
    repo: &Repository,
    rt: &tokio::runtime::Handle,
    mark: &Mark,
    plan: &Plan,
    opts: &Options,
) -> Result<(u64, u64, u64)> {
    let packing = Packing::start(repo, rt, Arc::new(Dedup::new(repo.journal.clone())), opts.pack_size);
    let fed = copy_kept_blobs(repo, rt, mark, plan, &packing);
    let stats = packing.finish(rt, fed.is_ok())?;
    let downloaded = fed?;
    Ok((stats.packs, stats.bytes, downloaded))
}

/// Kept blobs are read in pieces of at most this many bytes (one blob may be larger): a
/// piece is read while the one before is checked and packed, so two are in memory at once.
const PIECE: u64 = 4 << 20;
/// Unneeded bytes between two kept blobs that are read through rather than skipped by
/// starting a new piece (a read costs about as much as copying this much).
const GAP: u64 = 256 << 10;

/// One ranged read of a repacked pack and the kept blobs it covers.
struct Piece {
    pack: String,
    start: u64,
    end: u64,
    /// (kind, id, offset, length, raw length)
    blobs: Vec<(BlobKind, Id, u64, u32, u32)>,
}

/// Threads that read and authenticate pieces while this one packs: authenticating (decrypt,
/// decompress, hash) costs more than reading, so two keep the packer fed.
const READERS: usize = 2;

/// Reads the kept blobs of every repacked pack (ranged reads over their span, in pieces)
/// and hands each to the packer of its kind. [`READERS`] threads read and authenticate the
/// next pieces while this one packs; at most `READERS + 1` pieces are in memory. Returns the
/// bytes read.
fn copy_kept_blobs(
    repo: &Repository,
    rt: &tokio::runtime::Handle,
    mark: &Mark,
    plan: &Plan,
    packing: &Packing,
) -> Result<u64> {
    std::thread::scope(|scope| -> Result<u64> {
        let (want_tx, want_rx) = crossbeam_channel::bounded::<Piece>(1);
        let (got_tx, got_rx) = crossbeam_channel::bounded::<Result<(Piece, Vec<u8>)>>(0);
        for _ in 0..READERS {
            let (want_rx, got_tx) = (want_rx.clone(), got_tx.clone());
            scope.spawn(move || {
                for piece in want_rx {
                    let got = read_piece(repo, rt, &piece).map(|span| (piece, span));
                    if got_tx.send(got).is_err() {
                        break;
                    }
                }
            });
        }
        drop((want_rx, got_tx));
        let mut downloaded = 0u64;
        let mut take = || -> Result<()> {
            let (piece, span) = got_rx.recv().map_err(|_| anyhow!("the pack readers stopped"))??;
            downloaded += span.len() as u64;
            for (kind, id, offset, length, raw_length) in &piece.blobs {
                let at = (offset - piece.start) as usize;
                packing.packer(*kind).add(
                    *kind,
                    *id,
                    &span[at..at + *length as usize],
                    *raw_length as usize,
                )?;
            }
            Ok(())
        };
        // At most READERS pieces are asked for and not taken: a reader or the one free slot
        // of `want` always has room, so sending never waits on a reader that waits on us.
        let mut in_flight = 0;
        for pack in &plan.repack {
            for piece in pieces_of(mark, &pack.name)? {
                if in_flight == READERS {
                    take()?;
                    in_flight -= 1;
                }
                want_tx.send(piece).map_err(|_| anyhow!("the pack readers stopped"))?;
                in_flight += 1;
            }
        }
        drop(want_tx);
        for _ in 0..in_flight {
            take()?;
        }
        Ok(downloaded)
    })
}

/// The kept blobs of `pack`, in offset order, cut into pieces of at most [`PIECE`] bytes,
/// and wherever more than [`GAP`] unneeded bytes lie between two of them.
fn pieces_of(mark: &Mark, pack: &str) -> Result<Vec<Piece>> {
    let mut stmt = mark.db.prepare_cached(
        "SELECT k.kind, k.id, k.offset, k.length, k.raw_length FROM keeper k
         WHERE k.pack = (SELECT oid FROM packs WHERE name = ?1) ORDER BY k.offset",
    )?;
    let mut rows = stmt.query([pack])?;
    let mut pieces: Vec<Piece> = Vec::new();
    while let Some(r) = rows.next()? {
        let kind: u8 = r.get(0)?;
        let id: Vec<u8> = r.get(1)?;
        let blob = (
            BlobKind::from_u8(kind).ok_or_else(|| anyhow!("bad blob kind {kind} in the journal"))?,
            Id::from_slice(&id).ok_or_else(|| anyhow!("bad blob id in the journal"))?,
            r.get::<_, i64>(2)? as u64,
            r.get::<_, u32>(3)?,
            r.get::<_, u32>(4)?,
        );
        let end = blob.2 + blob.3 as u64;
        match pieces.last_mut() {
            Some(p) if end - p.start <= PIECE && blob.2.saturating_sub(p.end) <= GAP => {
                p.end = end;
                p.blobs.push(blob);
            }
            _ => pieces.push(Piece { pack: pack.to_string(), start: blob.2, end, blobs: vec![blob] }),
        }
    }
    Ok(pieces)
}

/// Reads one piece and authenticates each of its blobs (a needed blob that does not open
/// stops prune before anything is deleted).
fn read_piece(repo: &Repository, rt: &tokio::runtime::Handle, piece: &Piece) -> Result<Vec<u8>> {
    let pack = &piece.pack;
    let span = rt.block_on(repo.backend.read(pack, piece.start, piece.end - piece.start))?;
    if span.len() as u64 != piece.end - piece.start {
        bail!("pack {pack} is shorter than the journal says; prune deleted nothing: run `cairn verify`");
    }
    for (kind, id, offset, length, raw_length) in &piece.blobs {
        let at = (offset - piece.start) as usize;
        let sealed = &span[at..at + *length as usize];
        format::check_blob(&repo.key, *kind, id, sealed, *raw_length as usize).map_err(|e| {
            anyhow!(
                "{e} in pack {pack}: it is needed and would be copied; prune deleted nothing: run \
                 `cairn verify --read-data` and `cairn repair`"
            )
        })?;
    }
    Ok(span)
}

/// Writes new index objects listing every pack the given index objects list and the plan
/// keeps (entries as the old index gave them). The old ones are deleted afterwards.
fn rewrite_indexes(
    repo: &Repository,
    rt: &tokio::runtime::Handle,
    mark: &Mark,
    names: &[String],
) -> Result<()> {
    let mut next = IndexFile { version: 1, packs: Vec::new() };
    let mut listed = Vec::new();
    let mut entries = 0usize;
    let mut seen = std::collections::HashSet::new();
    for name in names {
        let index = read_index(repo, rt, name)?;
        let mut doomed = mark.db.prepare_cached("SELECT 1 FROM doomed WHERE name = ?1")?;
        for p in index.packs {
            let pack = format::pack_name(&p.id);
            let gone = repo.journal.object(&pack)?.is_none();
            if gone || doomed.exists([&pack])? || !seen.insert(p.id) {
                continue;
            }
            entries += p.entries.len();
            listed.push(pack);
            next.packs.push(IndexPack { id: p.id, size: p.size, entries: p.entries });
            if entries >= INDEX_ENTRIES {
                upload_index(repo, rt, &next, &listed)?;
                next.packs.clear();
                listed.clear();
                entries = 0;
            }
        }
    }
    if !listed.is_empty() {
        upload_index(repo, rt, &next, &listed)?;
    }
    Ok(())
}
