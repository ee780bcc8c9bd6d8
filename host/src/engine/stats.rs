//! `stats`: what the snapshots hold and what the repository stores for them, from one mark
//! (each snapshot group marked as its own group) and prune's plan with default limits. The
//! mark is on disk and only reads the journal: stats changes nothing.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use super::forget::{GroupBy, GroupKey};
use super::mark::Mark;
use super::prune::{self, Options};
use crate::engine::tree::TreeReader;
use crate::journal::State;
use crate::repo::Repository;

#[derive(Debug, Default, Serialize)]
pub struct Figures {
    pub snapshots: u64,
    /// Files in the snapshots, counted once per snapshot (what restoring every one writes).
    pub files: u64,
    /// Bytes of those files.
    pub logical_bytes: u64,
    /// Plaintext bytes of the distinct chunks the snapshots reference.
    pub unique_bytes: u64,
    /// Bytes those chunks and the folder listings take in packs (compressed, encrypted).
    pub stored_bytes: u64,
    /// `logical_bytes / unique_bytes`.
    pub dedup_ratio: f64,
}

#[derive(Debug, Serialize)]
pub struct GroupStats {
    pub host: Option<String>,
    pub sources: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    #[serde(skip)]
    pub key: GroupKey,
    #[serde(flatten)]
    pub figures: Figures,
    /// Pack bytes of the chunks and folder listings only this group's snapshots need: what
    /// prune would free (before repack thresholds) once every snapshot of the group is
    /// forgotten; the group's share of the repository's unused bytes to be.
    pub freed_if_forgotten: u64,
}

#[derive(Debug, Serialize)]
pub struct Stats {
    #[serde(flatten)]
    pub all: Figures,
    /// Bytes of every object the repository holds (packs, index objects, snapshots, keys,
    /// config), as the journal records them.
    pub repository_bytes: u64,
    pub packs: u64,
    pub pack_bytes: u64,
    /// Pack bytes no snapshot needs (see [`prune::Plan::unused_bytes`]).
    pub unused_bytes: u64,
    /// What `cairn prune` with its default limits would free.
    pub prune_would_free: u64,
    pub groups: Vec<GroupStats>,
}

pub fn run(repo: &Repository, rt: &tokio::runtime::Handle, group_by: GroupBy) -> Result<Stats> {
    let mark = Mark::new(repo)?;
    let reader = TreeReader::new(repo, rt);
    let mut groups: BTreeMap<GroupKey, (i64, Figures)> = BTreeMap::new();
    let mut all = Figures::default();
    for (id, snap) in repo.journal.snapshots()? {
        let next = groups.len() as i64;
        let (grp, figures) =
            groups.entry(GroupKey::of(&snap, group_by)).or_insert_with(|| (next, Figures::default()));
        mark.snapshot(&reader, &id, &snap, *grp)?;
        for f in [&mut *figures, &mut all] {
            f.snapshots += 1;
            f.files += snap.summary.files;
            f.logical_bytes += snap.summary.bytes;
        }
    }
    mark.finish()?;
    let opts = Options { max_unused: 0.10, max_repack: None, pack_size: crate::config::DEFAULT_PACK_SIZE };
    let plan = prune::plan_from_mark(&mark, &opts)?;
    // Every needed blob has a keeper (the plan checked): its copy is what the figures count.
    let sizes = |from: &str| -> Result<(u64, u64)> {
        let (raw, stored): (i64, i64) = mark.db.query_row(
            &format!(
                "SELECT COALESCE(SUM(CASE WHEN k.kind = 0 THEN k.raw_length ELSE 0 END), 0),
                        COALESCE(SUM(k.length), 0) FROM {from}"
            ),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok((raw as u64, stored as u64))
    };
    (all.unique_bytes, all.stored_bytes) = sizes("keeper k")?;
    all.dedup_ratio = ratio(all.logical_bytes, all.unique_bytes);
    // The blobs one group alone needs (on disk, like the mark).
    mark.db.execute_batch(
        "CREATE TABLE solo (grp INTEGER NOT NULL, kind INTEGER NOT NULL, id BLOB NOT NULL);
         INSERT INTO solo SELECT MIN(grp), kind, id FROM used GROUP BY kind, id HAVING COUNT(*) = 1;
         CREATE INDEX solo_grp ON solo (grp);",
    )?;
    let mut out = Vec::new();
    for (key, (grp, mut figures)) in groups {
        (figures.unique_bytes, figures.stored_bytes) =
            sizes(&format!("used u JOIN keeper k ON k.kind = u.kind AND k.id = u.id WHERE u.grp = {grp}"))?;
        figures.dedup_ratio = ratio(figures.logical_bytes, figures.unique_bytes);
        let (_, freed_if_forgotten) =
            sizes(&format!("solo s JOIN keeper k ON k.kind = s.kind AND k.id = s.id WHERE s.grp = {grp}"))?;
        out.push(GroupStats {
            host: key.host.clone(),
            sources: key.paths.clone(),
            tags: key.tags.clone(),
            key,
            figures,
            freed_if_forgotten,
        });
    }
    let repository_bytes = repo
        .journal
        .all_objects()?
        .iter()
        .filter(|o| !matches!(o.state, State::Deleting | State::Uploading))
        .map(|o| o.size)
        .sum();
    Ok(Stats {
        all,
        repository_bytes,
        packs: plan.packs,
        pack_bytes: plan.pack_bytes,
        unused_bytes: plan.unused_bytes,
        prune_would_free: plan.freed_bytes(),
        groups: out,
    })
}

fn ratio(logical: u64, unique: u64) -> f64 {
    if unique == 0 { 1.0 } else { logical as f64 / unique as f64 }
}
