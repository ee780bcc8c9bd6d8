//! The runner: named jobs run by `cairn run`, when their schedule says, with hooks around
//! them, every run recorded in the journal, and status for people and monitoring systems.
//!
//! - [`jobs`]: `[jobs.NAME]` in the config; [`schedule`]: when a job is due.
//! - [`hooks`]: the commands around a job, and the run log they write to.
//! - [`status`]: the run history, `cairn status`, the Prometheus textfile.
//! - [`units`]: systemd timers and crontab lines that call `cairn run`.

pub mod hooks;
pub mod jobs;
pub mod schedule;
pub mod status;
pub mod units;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, anyhow};

use crate::commands::Ctx;
use crate::config::Config;
use crate::engine::forget::{self, GroupBy};
use crate::error::one_line;
use crate::journal::{Journal, RunOutcome, RunRecord};
use hooks::RunLog;
use jobs::Job;

/// Now. `CAIRN_NOW` (an RFC 3339 time) replaces the clock: it exists for tests, which check
/// which jobs are due without waiting for a schedule; this is the only place that reads it.
pub fn now() -> Result<jiff::Timestamp> {
    match std::env::var("CAIRN_NOW") {
        Ok(t) if !t.is_empty() => {
            t.parse().map_err(|_| anyhow!("CAIRN_NOW={t:?} is not a time like 2026-01-01T02:30:00Z"))
        }
        _ => Ok(jiff::Timestamp::now()),
    }
}

/// What `cairn run` did: one record per job it ran or skipped.
pub struct Report {
    pub runs: Vec<RunRecord>,
    /// What went wrong around the jobs (the monitoring textfile could not be written).
    pub problems: Vec<String>,
}

impl Report {
    /// 1 when a job failed or was skipped, 3 when one finished with warnings, else 0.
    pub fn exit_code(&self) -> u8 {
        if self.runs.iter().any(|r| matches!(r.outcome, RunOutcome::Failure | RunOutcome::Skipped)) {
            crate::error::EXIT_ERROR
        } else if self.runs.iter().any(|r| r.outcome == RunOutcome::Warning) || !self.problems.is_empty() {
            crate::error::EXIT_PROBLEMS
        } else {
            crate::error::EXIT_OK
        }
    }
}

/// The jobs `cairn run` runs: those named, or every scheduled job that is due at `now` (it
/// never ran, or a slot of its schedule has passed since its last run started). Jobs
/// without a schedule run only when named.
pub fn select(config: &Config, named: &[String], now: jiff::Timestamp) -> Result<Vec<Job>> {
    if !named.is_empty() {
        // Each job once, in the order first named.
        let mut seen = std::collections::BTreeSet::new();
        return named.iter().filter(|n| seen.insert(n.as_str())).map(|n| jobs::job(config, n)).collect();
    }
    let history = status::History::load(config)?;
    let mut due = Vec::new();
    for name in jobs::names(config) {
        let job = jobs::job(config, &name)?;
        if status::next_due(&job, history.last_run(&name), now).is_some_and(|at| at <= now) {
            due.push(job);
        }
    }
    Ok(due)
}

/// Runs `jobs`: those on one repository one after the other, up to `parallel` repositories
/// at once. Then writes the monitoring textfile.
pub fn run(ctx: &Ctx, config: &Config, jobs: Vec<Job>, parallel: usize, verbose: bool) -> Result<Report> {
    // Each job's start is this invocation's start (the injected clock in tests) plus the
    // time spent since on earlier jobs.
    let started = now()?;
    let clock = Instant::now();
    let job_start = || {
        let since = jiff::SignedDuration::from_nanos(clock.elapsed().as_nanos() as i64);
        started.checked_add(since).unwrap_or(started)
    };
    let mut groups: BTreeMap<Option<String>, Vec<Job>> = BTreeMap::new();
    for job in jobs {
        groups.entry(job.repository.clone()).or_default().push(job);
    }
    let groups: Vec<Vec<Job>> = groups.into_values().collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..parallel.max(1).min(groups.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(group) = groups.get(i) else { break };
                    // Held while this group's jobs run: another `cairn run` (a timer firing
                    // at the same time) on this repository waits instead of failing on the
                    // journal lock.
                    let _turn = RepositoryTurn::take(config, group[0].repository.as_deref(), verbose);
                    for job in group {
                        let record = run_job(ctx, config, job, job_start(), verbose);
                        results.lock().unwrap().push(record);
                    }
                }
            });
        }
    });
    let runs = results.into_inner().unwrap();
    let mut problems = Vec::new();
    if let Some(path) = &config.monitoring.textfile {
        // The jobs' outcome stands; a textfile that cannot be written is a warning (exit 3).
        let written = status::History::load(config).and_then(|h| status::write_textfile(path, config, &h));
        if let Err(e) = written {
            problems.push(format!(
                "cannot write the monitoring textfile {}: {}",
                path.display(),
                one_line(&e)
            ));
        }
    }
    Ok(Report { runs, problems })
}

/// A blocking `flock` on `<state>/runner/<repository>.lock`, one per configured repository
/// (`[repository]` or `[repositories.NAME]`): `cairn run` processes take turns on one
/// repository, while those on different repositories run side by side. Released when the
/// process ends, however it ends. Not taken (and jobs then meet the journal lock as usual)
/// when the file cannot be opened.
struct RepositoryTurn {
    _held: Option<std::fs::File>,
}

impl RepositoryTurn {
    fn take(config: &Config, repository: Option<&str>, verbose: bool) -> RepositoryTurn {
        use std::os::fd::AsRawFd;
        let name = match repository {
            None => "repository".to_string(),
            Some(r) => format!("repositories.{r}"),
        };
        let Ok(dir) = config.state_dir().map(|d| d.join("runner")) else {
            return RepositoryTurn { _held: None };
        };
        let path = dir.join(format!("{name}.lock"));
        let file = std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path));
        let Ok(file) = file else { return RepositoryTurn { _held: None } };
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let note = format!("waiting for another `cairn run` on the same repository ({})", path.display());
            if verbose {
                eprintln!("cairn: {note}");
            }
            tracing::info!("{note}");
            // SAFETY: as above; blocks until the other run ends.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return RepositoryTurn { _held: None };
            }
        }
        RepositoryTurn { _held: Some(file) }
    }
}

/// What one step of a job left behind for the next ones.
#[derive(Default)]
struct Progress {
    journal: Option<std::sync::Arc<Journal>>,
    snapshot: Option<String>,
    bytes_read: u64,
    bytes_added: u64,
    pruned: bool,
    warnings: Vec<String>,
}

/// Runs one job: `before` hooks, backup, forget, prune when due, verify, `after` hooks (or
/// `on_failure` hooks), and records the run in the journal of its repository.
fn run_job(ctx: &Ctx, config: &Config, job: &Job, now: jiff::Timestamp, verbose: bool) -> RunRecord {
    let clock = Instant::now();
    let mut record = RunRecord {
        job: job.name.clone(),
        started_ns: now.as_nanosecond() as i64,
        ended_ns: 0,
        outcome: RunOutcome::Success,
        snapshot: None,
        bytes_read: 0,
        bytes_added: 0,
        pruned: false,
        error: None,
    };
    let log = match config.state_dir().and_then(|d| RunLog::open(&d, &job.name, verbose)) {
        Ok(log) => log,
        Err(e) => {
            record.outcome = RunOutcome::Failure;
            record.error = Some(one_line(&e));
            eprintln!("cairn: job {}: {}", job.name, one_line(&e));
            return record;
        }
    };
    log.line("run started");
    let env = |status: &str, snapshot: &Option<String>, error: &Option<String>| {
        vec![
            ("CAIRN_JOB", job.name.clone()),
            ("CAIRN_STATUS", status.to_string()),
            ("CAIRN_SNAPSHOT", snapshot.clone().unwrap_or_default()),
            ("CAIRN_ERROR", error.clone().unwrap_or_default()),
        ]
    };
    let mut progress = Progress::default();
    let before =
        job.before.iter().try_for_each(|h| log.run_hook("before", h, &env("starting", &None, &None)));
    let result = match before {
        Err(e) => {
            record.outcome = RunOutcome::Skipped;
            Err(format!("{e}; the job was skipped"))
        }
        Ok(()) => steps(ctx, config, job, now, &log, &mut progress).map_err(|e| one_line(&e)),
    };
    record.snapshot = progress.snapshot.clone();
    record.bytes_read = progress.bytes_read;
    record.bytes_added = progress.bytes_added;
    record.pruned = progress.pruned;
    match result {
        Ok(()) => {
            if !progress.warnings.is_empty() {
                record.outcome = RunOutcome::Warning;
            }
            let status = record.outcome.as_str();
            for hook in &job.after {
                if let Err(e) = log.run_hook("after", hook, &env(status, &record.snapshot, &None)) {
                    progress.warnings.push(e);
                    record.outcome = RunOutcome::Warning;
                }
            }
            if !progress.warnings.is_empty() {
                record.error = Some(progress.warnings.join("; "));
            }
        }
        Err(e) => {
            if record.outcome != RunOutcome::Skipped {
                record.outcome = RunOutcome::Failure;
            }
            record.error = Some(e.clone());
            let error = Some(e);
            for hook in &job.on_failure {
                let _ =
                    log.run_hook("on_failure", hook, &env(record.outcome.as_str(), &record.snapshot, &error));
            }
        }
    }
    record.ended_ns = record.started_ns + clock.elapsed().as_nanos() as i64;
    let summary = match (&record.outcome, &record.error) {
        (RunOutcome::Success, _) => format!("succeeded, snapshot {}", short(&record.snapshot)),
        (outcome, error) => format!("{}: {}", outcome.as_str(), error.as_deref().unwrap_or("")),
    };
    log.line(&format!("run ended: {summary}"));
    if let Err(e) = save_record(ctx, config, &progress, &record) {
        log.line(&format!("cannot record the run in the journal: {}", one_line(&e)));
        eprintln!("cairn: job {}: cannot record the run in the journal: {}", job.name, one_line(&e));
    }
    record
}

fn short(id: &Option<String>) -> String {
    id.as_deref().map(|h| h[..h.len().min(8)].to_string()).unwrap_or_default()
}

/// Backup, forget, prune, verify: the first error ends the job.
fn steps(
    ctx: &Ctx,
    config: &Config,
    job: &Job,
    now: jiff::Timestamp,
    log: &RunLog,
    progress: &mut Progress,
) -> Result<()> {
    let view = config.job_view(&job.name)?;
    log.line("backup: starting");
    let done = crate::commands::backup::back_up(ctx, &view, &job.name, &[], &mut |repo| {
        progress.journal = Some(repo.journal.clone());
    })?;
    let result = after_backup(ctx, &view, job, log, progress, &done);
    let result = ctx.released(&done.repo, result);
    // Closed (its local lock too) before prune and verify open the repository again.
    drop(done);
    result?;
    if let Some(every) = job.prune_every {
        let last = status::History::load(config)?.last_prune(&job.name);
        let due = last.is_none_or(|t| now.duration_since(t).unsigned_abs() >= every);
        if due {
            progress.pruned = prune(ctx, &view, log)?;
        }
    }
    if let Some(subset) = job.verify {
        verify(ctx, &view, subset, log, progress)?;
    }
    Ok(())
}

/// The steps after a job's backup on the repository the backup opened (its shared lock in
/// the repository held): what it saved into the log, then forget. Prune (alone, under an
/// exclusive lock) and verify (under a shared lock) open the repository again.
fn after_backup(
    ctx: &Ctx,
    view: &Config,
    job: &Job,
    log: &RunLog,
    progress: &mut Progress,
    done: &crate::commands::backup::Done,
) -> Result<()> {
    let repo = &done.repo;
    let summary = &done.out.snapshot.summary;
    progress.snapshot = Some(done.out.id.hex());
    progress.bytes_read = summary.bytes_read;
    progress.bytes_added = summary.data_added;
    log.line(&format!(
        "backup: snapshot {} saved: {} files, read {} bytes, added {} bytes",
        done.out.id.short(),
        summary.files,
        summary.bytes_read,
        summary.data_added
    ));
    for w in &done.out.warnings {
        log.line(&format!("backup warning: {}", crate::untrusted::escape(w)));
    }
    if summary.errors > 0 {
        progress.warnings.push(format!("{} item(s) could not be read (see the run log)", summary.errors));
    }

    let policy = view.retention.policy()?;
    if !policy.is_empty() {
        if repo.backend.can_delete() {
            let group_by = match view.retention.group_by.as_deref() {
                Some(text) => text.parse::<GroupBy>().map_err(anyhow::Error::msg)?,
                None => GroupBy::DEFAULT,
            };
            let mine = repo.journal.snapshots()?.into_iter().filter(|(_, s)| s.job == job.name).collect();
            let opts = forget::Options { policy, group_by, allow_empty_group: false, named: Vec::new() };
            let plan = forget::plan(mine, &opts, &jiff::tz::TimeZone::system())?;
            let removed = ctx.rt.block_on(forget::execute(repo, &plan))?;
            log.line(&format!("forget: removed {removed} snapshot(s) of this job"));
        } else {
            log.line("forget: skipped, the repository is append-only");
        }
    }

    Ok(())
}

/// The verify step: a check of the job's repository by its `verify` settings.
fn verify(
    ctx: &Ctx,
    view: &Config,
    subset: Option<crate::engine::verify::Subset>,
    log: &RunLog,
    progress: &mut Progress,
) -> Result<()> {
    log.line("verify: starting");
    let repo = ctx.rt.block_on(crate::repo::Repository::open(view, crate::repo::Access::Inspect))?;
    let report = crate::engine::verify::run(&repo, ctx.rt.handle(), subset, view.threads().max(2));
    let report = ctx.released(&repo, report)?;
    if report.is_clean() {
        log.line(&format!("verify: whole ({} packs read)", report.packs_read));
    } else {
        for p in &report.problems {
            log.line(&format!("verify: {} {}: {}", p.kind, crate::untrusted::escape(&p.object), p.detail));
        }
        progress.warnings.push(format!(
            "verify found {} problem(s); run `cairn verify` and `cairn repair`",
            report.problems.len()
        ));
    }
    Ok(())
}

/// The prune step of a job whose `prune_every` has passed: `cairn prune` with the default
/// limits, alone on the repository (an exclusive lock in it). Returns whether it pruned.
fn prune(ctx: &Ctx, view: &Config, log: &RunLog) -> Result<bool> {
    log.line("prune: starting");
    let opts = crate::commands::prune::options(view, &crate::cli::PruneLimits::default())?;
    let repo = ctx.rt.block_on(crate::repo::Repository::open(view, crate::repo::Access::Exclusive))?;
    let report = crate::engine::prune::run(&repo, ctx.rt.handle(), &opts, &[], false);
    let report = ctx.released(&repo, report)?;
    let plan = &report.plan;
    log.line(&format!(
        "prune: {} pack(s) deleted, {} repacked, {} freed",
        plan.delete.len(),
        plan.repack.len(),
        crate::commands::human_bytes(plan.freed_bytes())
    ));
    Ok(true)
}

/// Records the run in the journal of the job's repository: the one the run opened; else
/// (a `before` hook failed, or the open failed) the repository opened for reading just to
/// find its journal; else the journal where the job's earlier runs are.
fn save_record(ctx: &Ctx, config: &Config, progress: &Progress, record: &RunRecord) -> Result<()> {
    if let Some(journal) = &progress.journal {
        return journal.add_run(record);
    }
    if let Ok(view) = config.job_view(&record.job)
        && let Ok(repo) = ctx.rt.block_on(crate::repo::Repository::open(&view, crate::repo::Access::Read))
    {
        return repo.journal.add_run(record);
    }
    let history = status::History::load(config)?;
    let path: Option<PathBuf> = history.journal_of(&record.job);
    match path {
        Some(p) => Journal::open(&p)?.add_run(record),
        None => Err(anyhow!(
            "the repository was never opened by this job, so it has no journal yet; the failure is in the run log"
        )),
    }
}
