//! `cairn backup`: back up the configured sources as a new snapshot.

use std::sync::atomic::Ordering;

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;

use super::{Ctx, human_bytes};
use crate::engine::backup::{self, Settings};
use crate::engine::upload;
use crate::engine::walk::Excludes;
use crate::error::{Exit, Role, local_io, one_line};
use crate::journal::{RunOutcome, RunRecord};
use crate::plugin::BackendError;
use crate::progress::Progress;
use crate::repo::{Access, Repository};

pub fn run(ctx: &Ctx, tags: &[String]) -> Result<()> {
    let config = ctx.config()?;
    if config.backup.sources.is_empty() && !config.jobs.is_empty() {
        bail!(
            "[backup] has no sources; the jobs of this config run with `cairn run JOB` (jobs: {})",
            crate::runner::jobs::names(&config).join(", ")
        );
    }
    let started = crate::runner::now()?;
    let clock = std::time::Instant::now();
    let mut journal = None;
    let result = back_up(ctx, &config, crate::repo::format::DEFAULT_JOB, tags, &mut |repo| {
        journal = Some(repo.journal.clone())
    });
    // A run of the job `default`, for `cairn status` (a failure before the repository
    // opened has no journal to go to).
    if let Some(journal) = journal {
        let record = run_record(&result, started, clock.elapsed());
        if let Err(e) = journal.add_run(&record) {
            tracing::warn!("cannot record the run in the journal: {}", one_line(&e));
        }
    }
    let done = result?;
    let reported = report(ctx, &done);
    ctx.released(&done.repo, reported)
}

/// What `cairn backup` did, as a run of the job `default`.
fn run_record(result: &Result<Done>, started: jiff::Timestamp, took: std::time::Duration) -> RunRecord {
    let started_ns = started.as_nanosecond() as i64;
    let mut record = RunRecord {
        job: crate::repo::format::DEFAULT_JOB.to_string(),
        started_ns,
        ended_ns: started_ns + took.as_nanos() as i64,
        outcome: RunOutcome::Success,
        snapshot: None,
        bytes_read: 0,
        bytes_added: 0,
        pruned: false,
        error: None,
    };
    match result {
        Ok(done) => {
            let s = &done.out.snapshot.summary;
            record.snapshot = Some(done.out.id.hex());
            record.bytes_read = s.bytes_read;
            record.bytes_added = s.data_added;
            if s.errors > 0 {
                record.outcome = RunOutcome::Warning;
                record.error = Some(format!("{} item(s) could not be read", s.errors));
            }
        }
        Err(e) => {
            record.outcome = RunOutcome::Failure;
            record.error = Some(one_line(e));
        }
    }
    record
}

/// A finished backup: the repository it went to (still open and locked), what it saved,
/// and how long it took.
pub struct Done {
    pub repo: Repository,
    pub out: backup::Outcome,
    pub secs: f64,
}

/// Backs up `config`'s `[backup]` as a snapshot of `job` (`cairn run` passes the job's view
/// of the config). `opened` sees the repository as soon as it is open. Errors are explained
/// like `cairn backup`'s (full disks, the journal's folder).
pub fn back_up(
    ctx: &Ctx,
    config: &crate::config::Config,
    job: &str,
    tags: &[String],
    opened: &mut dyn FnMut(&Repository),
) -> Result<Done> {
    // The repository's own state folder once it is known, for the journal's path in errors.
    let mut state_dir = config.state_dir()?;
    let result = backup_inner(ctx, config, job, tags, &mut |repo| {
        state_dir.clone_from(&repo.dir);
        opened(repo)
    });
    result.map_err(|e| explain_failure(e, &state_dir))
}

fn backup_inner(
    ctx: &Ctx,
    config: &crate::config::Config,
    job: &str,
    tags: &[String],
    opened: &mut dyn FnMut(&Repository),
) -> Result<Done> {
    let repo = ctx.rt.block_on(Repository::open(config, Access::Write))?;
    opened(&repo);
    // The repository lock in the repository is released here on failure; on success the
    // caller releases it once it has used the repository (`cairn run` forgets and verifies).
    let made = (|| -> Result<(backup::Outcome, f64)> {
        let mut all_tags = config.backup.tags.clone();
        all_tags.extend(tags.iter().cloned());
        let settings = Settings {
            job: job.to_string(),
            sources: config.backup.sources.clone(),
            excludes: config.backup.exclude.clone(),
            tags: all_tags,
            threads: config.threads(),
            compression: config.compression_level(),
            pack_size: config.pack_size()?,
            checkpoint_every: config.checkpoint_interval()?.0,
            checkpoint_bytes: config.checkpoint_interval()?.1,
        };
        check_free_space(&repo.dir, settings.pack_size, repo.backend.concurrency())?;
        let mut progress = Progress::new("backing up", !ctx.json);
        if progress.enabled() {
            spawn_scan(&settings, progress.counters.clone());
        }
        let started = std::time::Instant::now();
        let result = backup::run(&repo, ctx.rt.handle(), &settings, &progress.counters);
        progress.finish();
        let out = result.map_err(|e| with_space_needed(e, settings.pack_size, repo.backend.concurrency()))?;
        Ok((out, started.elapsed().as_secs_f64()))
    })();
    match made {
        Ok((out, secs)) => Ok(Done { repo, out, secs }),
        Err(e) => ctx.released(&repo, Err(e)),
    }
}

/// Prints what `cairn backup` saved; exit code 3 when items could not be read.
fn report(ctx: &Ctx, done: &Done) -> Result<()> {
    let Done { repo, out, secs } = done;
    let secs = *secs;
    let s = &out.snapshot.summary;
    if ctx.json {
        ctx.print_json(&json!({
            "snapshot": out.id.hex(),
            "short_id": out.id.short(),
            "parent": out.snapshot.parent.map(|p| p.hex()),
            "files": s.files,
            "dirs": s.dirs,
            "bytes": s.bytes,
            "files_read": s.files_read,
            "bytes_read": s.bytes_read,
            "checkpoints": out.checkpoints,
            "data_added": s.data_added,
            "packs_uploaded": out.upload.packs,
            "bytes_uploaded": repo.backend.traffic.uploaded.load(Ordering::Relaxed),
            "retries": repo.backend.traffic.retries.load(Ordering::Relaxed),
            "errors": s.errors,
            "warnings": out.warnings,
            "seconds": secs,
        }));
    } else {
        println!(
            "snapshot {} saved: {} files, {} folders, {} in {:.1}s",
            out.id.short(),
            s.files,
            s.dirs,
            human_bytes(s.bytes),
            secs
        );
        println!(
            "read {} changed files, added {} of new data, uploaded {} in {} packs",
            s.files_read,
            human_bytes(s.data_added),
            human_bytes(repo.backend.traffic.uploaded.load(Ordering::Relaxed)),
            out.upload.packs
        );
    }
    if s.errors > 0 {
        return Err(Exit::problems(format!(
            "snapshot {} is missing {} item(s) that could not be read (see the warnings above)",
            out.id.short(),
            s.errors
        ))
        .into());
    }
    Ok(())
}

/// Fails at once, before any work, when the state folder cannot hold the temporary packs a
/// backup may keep there at the same time (statvfs: no I/O).
fn check_free_space(dir: &Path, pack_size: u64, concurrency: usize) -> Result<()> {
    let space =
        crate::space::of(dir).with_context(|| format!("cannot measure free space in {}", dir.display()))?;
    let packs = upload::packs_in_flight(concurrency);
    let needed = pack_size.saturating_mul(packs);
    if space.read_only {
        bail!(
            "state folder {} is on a read-only file system: it holds the journal and the temporary packs; \
             remount it read-write or move `[state] dir`, then run the backup again; nothing was changed",
            dir.display()
        );
    }
    if space.free < needed {
        bail!(
            "state folder {} has {} free, but the temporary packs of a backup need about {} \
             (pack size {} x {packs} packs in flight: {concurrency} uploading, the rest queued or being filled); \
             free space there, move `[state] dir` to a larger disk, or lower `[backup] pack_size`; nothing was changed",
            dir.display(),
            human_bytes(space.free),
            human_bytes(needed),
            human_bytes(pack_size)
        );
    }
    Ok(())
}

/// Said with every failure on a full, read-only or refused place.
const NOTHING_LOST: &str = "nothing was lost: the snapshots saved before are untouched, and the next backup continues once this is fixed";

/// How much room the temporary packs need, added to an error that says their folder is full
/// (another process took the space the check before the backup saw).
fn with_space_needed(err: anyhow::Error, pack_size: u64, concurrency: usize) -> anyhow::Error {
    let full = local_io(&err).is_some_and(|l| l.role == Role::TemporaryPacks && l.is_out_of_space());
    if !full {
        return err;
    }
    let packs = upload::packs_in_flight(concurrency);
    anyhow!(
        "{} (the temporary packs of a backup need about {}: pack size {} x {packs} packs in flight); {NOTHING_LOST}",
        one_line(&err),
        human_bytes(pack_size.saturating_mul(packs)),
        human_bytes(pack_size)
    )
}

/// A backup that failed on a full, read-only or refused place says which, and that nothing
/// was lost: a failed upload is invisible by the plugin contract, the journal records only
/// what is stored, and the snapshots saved before are untouched.
fn explain_failure(err: anyhow::Error, state_dir: &Path) -> anyhow::Error {
    if let Some((cause, fix)) = journal_condition(&err) {
        return anyhow!(
            "journal in state folder {}: {cause}; {fix} or move `[state] dir`, then run the backup again; {NOTHING_LOST}",
            state_dir.display()
        );
    }
    let storage =
        err.chain().any(|c| c.downcast_ref::<BackendError>().is_some_and(|b| b.is_storage_condition()));
    let local = local_io(&err).is_some_and(|l| l.is_permanent_condition());
    if storage || local {
        return anyhow!("{}; {NOTHING_LOST}", one_line(&err));
    }
    err
}

/// A journal write that SQLite says failed because of the disk: the cause and its fix.
fn journal_condition(err: &anyhow::Error) -> Option<(&'static str, &'static str)> {
    use rusqlite::ErrorCode;
    err.chain().find_map(|c| match c.downcast_ref::<rusqlite::Error>()? {
        rusqlite::Error::SqliteFailure(e, _) => match e.code {
            ErrorCode::DiskFull => Some(("no space left on device", "free space there")),
            ErrorCode::ReadOnly => Some(("cannot be written (read-only)", "make it writable")),
            _ => None,
        },
        _ => None,
    })
}

/// Counts what the backup will cover, for the progress bar's total and ETA.
fn spawn_scan(settings: &Settings, counters: std::sync::Arc<crate::progress::Counters>) {
    let sources = settings.sources.clone();
    let Ok(excludes) = Excludes::new(&settings.excludes) else {
        return;
    };
    std::thread::spawn(move || {
        fn scan(dir: &std::path::Path, ex: &Excludes, c: &crate::progress::Counters) {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return;
            };
            for e in rd.flatten() {
                let path = e.path();
                if ex.is_excluded(&path, &e.file_name()) {
                    continue;
                }
                let Ok(meta) = e.metadata() else { continue };
                if meta.is_dir() {
                    scan(&path, ex, c);
                } else if meta.is_file() {
                    c.total_files.fetch_add(1, Ordering::Relaxed);
                    c.total_bytes.fetch_add(meta.len(), Ordering::Relaxed);
                }
            }
        }
        for s in &sources {
            match std::fs::symlink_metadata(s) {
                Ok(m) if m.is_dir() => scan(s, &excludes, &counters),
                Ok(m) if m.is_file() => {
                    counters.total_files.fetch_add(1, Ordering::Relaxed);
                    counters.total_bytes.fetch_add(m.len(), Ordering::Relaxed);
                }
                _ => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::IoAt;

    #[test]
    fn a_full_temporary_pack_folder_says_how_much_it_needs_and_that_nothing_was_lost() {
        let full: std::io::Result<()> = Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        let err =
            anyhow::Error::from(full.at(Role::TemporaryPacks, Path::new("/st/r/tmp/pack-1")).unwrap_err());
        let err = explain_failure(with_space_needed(err, 16 << 20, 2), Path::new("/st"));
        assert_eq!(
            one_line(&err),
            "temporary packs /st/r/tmp/pack-1: no space left on device; free space there, or move `[state] dir` \
             to another disk (the temporary packs of a backup need about 96.0 MiB: pack size 16.0 MiB x 6 packs \
             in flight); nothing was lost: the snapshots saved before are untouched, and the next backup continues \
             once this is fixed"
        );
    }

    #[test]
    fn a_full_journal_is_named_with_its_state_folder() {
        let sqlite = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error { code: rusqlite::ErrorCode::DiskFull, extended_code: 13 },
            None,
        );
        let err = explain_failure(anyhow::Error::from(sqlite).context("record pack"), Path::new("/st"));
        let text = one_line(&err);
        assert!(text.starts_with("journal in state folder /st: no space left on device; "), "{text}");
        assert!(text.contains("nothing was lost"), "{text}");
    }

    #[test]
    fn other_failures_are_left_as_they_are() {
        let err = explain_failure(anyhow!("the uploader stopped"), Path::new("/st"));
        assert_eq!(one_line(&err), "the uploader stopped");
        let denied: std::io::Result<()> = Err(std::io::Error::from_raw_os_error(libc::EIO));
        let err = anyhow::Error::from(denied.at(Role::TemporaryPacks, Path::new("/p")).unwrap_err());
        assert_eq!(
            one_line(&with_space_needed(err, 1 << 20, 2)),
            "temporary packs /p: Input/output error (os error 5)"
        );
    }
}
