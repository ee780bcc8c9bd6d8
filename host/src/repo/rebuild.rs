//! Rebuilding a lost or corrupt journal from the repository alone.
//!
//! Index objects say where every indexed blob lives; packs no index lists (the last packs
//! of a run whose index was never written) are learned from their headers, read with
//! ranged reads of the pack's tail. Whole packs are never downloaded. Progress is committed
//! as it goes (one transaction per index object or pack), so an interrupted rebuild
//! continues where it stopped when run again.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};

use crate::backend::Backend;
use crate::crypto::KeyFile;
use crate::ids::Id;
use crate::journal::ObjectKind;
use crate::repo::Repository;
use crate::repo::format::{self, IndexFile, ObjectName, PACK_TRAILER, ReadObjectError, WholeObject};

#[derive(Default, Debug)]
pub struct Report {
    pub index_objects: u64,
    pub packs_from_index: u64,
    pub packs_from_headers: u64,
    pub blobs: u64,
    pub snapshots: u64,
    /// Objects that are not valid cairn objects (left alone; `repair` deals with them).
    pub invalid: Vec<String>,
    pub bytes_downloaded: u64,
}

/// How much of a pack's end is fetched first: enough for the header of a typical pack.
const TAIL_GUESS: u64 = 64 << 10;

pub async fn rebuild(repo: &Repository) -> Result<Report> {
    rebuild_with_progress(repo, false).await
}

/// Progress of a rebuild on stderr: a bar on a terminal, else one line per phase.
struct Steps {
    bar: Option<indicatif::ProgressBar>,
    show: bool,
}

impl Steps {
    fn phase(&mut self, what: &str, total: usize) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if !self.show || total == 0 {
            return;
        }
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(total as u64),
                indicatif::ProgressDrawTarget::stderr_with_hz(5),
            );
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} {pos}/{len} [{elapsed_precise}] {wide_bar}",
                )
                .expect("valid template"),
            );
            bar.set_prefix(what.to_string());
            self.bar = Some(bar);
        } else {
            eprintln!("cairn: {what}: {total}");
        }
    }

    fn step(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }
}

impl Drop for Steps {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// [`rebuild`], showing progress on stderr when `show`.
pub async fn rebuild_with_progress(repo: &Repository, show: bool) -> Result<Report> {
    let mut steps = Steps { bar: None, show };
    let journal = &repo.journal;
    let backend = &repo.backend;
    let before = backend.traffic.downloaded.load(Ordering::Relaxed);
    journal.set_meta("rebuild", "in progress")?;
    let mut report = Report::default();
    let known: HashSet<String> = journal.all_objects()?.into_iter().map(|o| o.name).collect();

    for k in backend.list("keys/").await? {
        if known.contains(&k.name) {
            continue;
        }
        if !matches!(ObjectName::parse(&k.name), Some(ObjectName::Key(_))) {
            report.invalid.push(k.name); // foreign: never read
            continue;
        }
        let Some(bytes) = read_or_invalid(backend, WholeObject::Key, &k.name, &mut report).await? else {
            continue;
        };
        if serde_json::from_slice::<KeyFile>(&bytes).is_ok() {
            journal.record_present(&k.name, ObjectKind::Key, k.size, Some(&Id::of_bytes(&bytes)), &[])?;
        } else {
            report.invalid.push(k.name);
        }
    }
    if let Some(c) = backend.stat(format::CONFIG_NAME).await? {
        journal.record_present(&c.name, ObjectKind::Config, c.size, None, &[])?;
    }

    // Index objects first: they cover almost every pack.
    let indexes: Vec<_> =
        backend.list("index/").await?.into_iter().filter(|o| !known.contains(&o.name)).collect();
    steps.phase("index objects to read", indexes.len());
    for obj in indexes {
        steps.step();
        if !matches!(ObjectName::parse(&obj.name), Some(ObjectName::Index(_))) {
            report.invalid.push(obj.name); // foreign: never read
            continue;
        }
        let Some(bytes) = read_or_invalid(backend, WholeObject::Index, &obj.name, &mut report).await? else {
            continue;
        };
        let id = Id::of_bytes(&bytes);
        let index = match format::open_object::<IndexFile>(&repo.key, format::AAD_INDEX, &bytes, false) {
            Ok(i) if format::id_of_name(&obj.name) == Some(id) => i,
            _ => {
                report.invalid.push(obj.name);
                continue;
            }
        };
        report.index_objects += 1;
        report.packs_from_index += index.packs.len() as u64;
        report.blobs += index.packs.iter().map(|p| p.entries.len() as u64).sum::<u64>();
        journal.record_index(&obj.name, obj.size, &id, &index)?;
    }

    crate::testing::pause_point("rebuild-after-index");

    // Packs no index lists: read their headers.
    let known: HashSet<String> = journal.all_objects()?.into_iter().map(|o| o.name).collect();
    let packs: Vec<_> =
        backend.list("data/").await?.into_iter().filter(|o| !known.contains(&o.name)).collect();
    steps.phase("packs no index lists, headers to read", packs.len());
    for obj in packs {
        steps.step();
        if !matches!(ObjectName::parse(&obj.name), Some(ObjectName::Pack(_))) {
            report.invalid.push(obj.name); // foreign: never read
            continue;
        }
        match read_header(repo, &obj.name, obj.size).await {
            Ok(Some(entries)) => {
                let id = format::id_of_name(&obj.name);
                report.packs_from_headers += 1;
                report.blobs += entries.len() as u64;
                journal.record_present(&obj.name, ObjectKind::Pack, obj.size, id.as_ref(), &entries)?;
            }
            Ok(None) => report.invalid.push(obj.name),
            Err(e) => return Err(e).with_context(|| format!("reading the header of {}", obj.name)),
        }
    }

    // Snapshots (and any index written meanwhile) through the normal sync.
    steps.phase("", 0);
    let before_snaps = journal.snapshots()?.len();
    crate::repo::sync::sync_remote(repo).await?;
    report.snapshots = (journal.snapshots()?.len() - before_snaps) as u64;
    journal.set_meta("rebuild", "done")?;
    report.bytes_downloaded = backend.traffic.downloaded.load(Ordering::Relaxed) - before;
    Ok(report)
}

/// A whole object, or `None` (and it is counted invalid) when it is larger than its kind
/// may be: it is never downloaded.
async fn read_or_invalid(
    backend: &Backend,
    kind: WholeObject,
    name: &str,
    report: &mut Report,
) -> Result<Option<Vec<u8>>> {
    match format::read_object(backend, kind, name).await {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e @ ReadObjectError::TooLarge { .. }) => {
            tracing::warn!("{e}");
            report.invalid.push(name.to_string());
            Ok(None)
        }
        Err(ReadObjectError::Backend(e)) => Err(e.into()),
    }
}

/// A pack's entries from its header, or `None` if it is not a valid cairn pack (foreign,
/// or cut short).
pub async fn read_header(repo: &Repository, name: &str, size: u64) -> Result<Option<Vec<format::PackEntry>>> {
    if size < PACK_TRAILER as u64 {
        return Ok(None);
    }
    let take = size.min(TAIL_GUESS);
    let mut tail = repo.backend.read(name, size - take, take).await?;
    let header_len = match format::header_len_from_tail(&tail) {
        Ok(n) => n as u64,
        Err(_) => return Ok(None),
    };
    let need = header_len + PACK_TRAILER as u64;
    if need > size {
        return Ok(None);
    }
    if need > take {
        tail = repo.backend.read(name, size - need, need).await?;
    }
    Ok(format::read_pack_header(&repo.key, &tail, size).ok())
}
