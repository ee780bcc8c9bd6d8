//! The run history (the `runs` tables of the journals in the state folder), what `cairn
//! status` shows of it, and the Prometheus textfile written after each `cairn run`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use super::jobs::{self, Job};
use crate::config::Config;
use crate::journal::{Journal, RunOutcome, RunRecord};

/// Every run recorded in the journals of the state folder (one per repository), with the
/// journal it is in.
pub struct History {
    runs: Vec<(PathBuf, RunRecord)>,
}

impl History {
    /// Reads `<state>/*/journal.sqlite` read-only: no repository is contacted, nothing is
    /// locked, so status works while a backup runs or a backend is down.
    pub fn load(config: &Config) -> Result<History> {
        let state = config.state_dir()?;
        let mut runs = Vec::new();
        let entries = match std::fs::read_dir(&state) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(History { runs }),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot list the state folder {}", state.display()));
            }
        };
        for entry in entries {
            let journal = entry?.path().join("journal.sqlite");
            if !journal.is_file() {
                continue;
            }
            let found = Journal::read_runs(&journal)
                .with_context(|| format!("cannot read the runs in {}", journal.display()))?;
            runs.extend(found.into_iter().map(|r| (journal.clone(), r)));
        }
        runs.sort_by_key(|(_, r)| (r.started_ns, r.ended_ns));
        Ok(History { runs })
    }

    fn of<'a>(&'a self, job: &'a str) -> impl DoubleEndedIterator<Item = &'a RunRecord> + 'a {
        self.runs.iter().map(|(_, r)| r).filter(move |r| r.job == job)
    }

    pub fn last_run<'a>(&'a self, job: &'a str) -> Option<&'a RunRecord> {
        self.of(job).next_back()
    }

    pub fn last_success<'a>(&'a self, job: &'a str) -> Option<&'a RunRecord> {
        self.of(job).rev().find(|r| r.outcome.succeeded())
    }

    pub fn last_failure<'a>(&'a self, job: &'a str) -> Option<&'a RunRecord> {
        self.of(job).rev().find(|r| !r.outcome.succeeded())
    }

    /// When the job last pruned its repository.
    pub fn last_prune(&self, job: &str) -> Option<jiff::Timestamp> {
        self.of(job).rev().find(|r| r.pruned).map(|r| timestamp(r.started_ns))
    }

    /// The journal holding the job's latest run.
    pub fn journal_of(&self, job: &str) -> Option<PathBuf> {
        self.runs.iter().rev().find(|(_, r)| r.job == job).map(|(p, _)| p.clone())
    }
}

pub fn timestamp(ns: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_nanosecond(ns as i128).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// When a scheduled job is next due: at once (`now`) when it never ran, else the first slot
/// of its schedule after its last run started (in the past when a slot was missed). `None`
/// for a job without a schedule.
pub fn next_due(job: &Job, last: Option<&RunRecord>, now: jiff::Timestamp) -> Option<jiff::Timestamp> {
    let schedule = job.schedule.as_ref()?;
    match last {
        None => Some(now),
        Some(r) => schedule.next_after(timestamp(r.started_ns)),
    }
}

/// One job's line of `cairn status`.
pub struct JobStatus {
    pub job: String,
    pub schedule: Option<String>,
    pub last_success: Option<RunRecord>,
    pub last_failure: Option<RunRecord>,
    pub last_run: Option<RunRecord>,
    pub next_due: Option<jiff::Timestamp>,
}

impl JobStatus {
    /// Time since the last success, at `now`.
    pub fn age(&self, now: jiff::Timestamp) -> Option<Duration> {
        self.last_success
            .as_ref()
            .map(|r| Duration::from_nanos((now.as_nanosecond() as i64 - r.ended_ns).max(0) as u64))
    }
}

pub fn of_jobs(config: &Config, history: &History, now: jiff::Timestamp) -> Result<Vec<JobStatus>> {
    jobs::names(config)
        .into_iter()
        .map(|name| {
            let job = jobs::job(config, &name)?;
            Ok(JobStatus {
                schedule: job.schedule.as_ref().map(|s| s.text.clone()),
                last_success: history.last_success(&name).cloned(),
                last_failure: history.last_failure(&name).cloned(),
                last_run: history.last_run(&name).cloned(),
                next_due: next_due(&job, history.last_run(&name), now),
                job: name,
            })
        })
        .collect()
}

/// Writes the Prometheus textfile-collector file for every job: written beside `path` under
/// a temporary name, synced and renamed over it, so the collector never reads half a file.
pub fn write_textfile(path: &Path, config: &Config, history: &History) -> Result<()> {
    let text = textfile(config, history)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".cairn-metrics").suffix(".tmp").tempfile_in(dir)?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())?;
    tmp.as_file().sync_all()?;
    // The collector runs as another user: readable by all, like the files it usually reads.
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The metrics, one family after another (HELP, TYPE, a sample per job).
pub fn textfile(config: &Config, history: &History) -> Result<String> {
    let names = jobs::names(config);
    let secs = |ns: i64| ns as f64 / 1e9;
    let mut out = String::new();
    let mut family = |name: &str, help: &str, sample: &dyn Fn(&str) -> Vec<(String, f64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for job in &names {
            for (labels, value) in sample(job) {
                out.push_str(&format!("{name}{{job=\"{job}\"{labels}}} {value}\n"));
            }
        }
    };
    let one = |v: Option<f64>| v.map(|v| vec![(String::new(), v)]).unwrap_or_default();
    family(
        "cairn_job_last_success_timestamp_seconds",
        "When the last successful run of the job ended (Unix time).",
        &|job| one(history.last_success(job).map(|r| secs(r.ended_ns))),
    );
    family(
        "cairn_job_last_run_timestamp_seconds",
        "When the last run of the job ended (Unix time).",
        &|job| one(history.last_run(job).map(|r| secs(r.ended_ns))),
    );
    family("cairn_job_last_run_duration_seconds", "How long the last run of the job took.", &|job| {
        one(history.last_run(job).map(|r| secs(r.ended_ns - r.started_ns)))
    });
    family("cairn_job_last_run_bytes_read", "Source bytes the last run of the job read.", &|job| {
        one(history.last_run(job).map(|r| r.bytes_read as f64))
    });
    family(
        "cairn_job_last_run_bytes_added",
        "Bytes of new data the last run of the job added to the repository.",
        &|job| one(history.last_run(job).map(|r| r.bytes_added as f64)),
    );
    family(
        "cairn_job_last_run_outcome",
        "1 for the outcome of the last run of the job (success, warning, failure, skipped), 0 for the others.",
        &|job| match history.last_run(job) {
            None => Vec::new(),
            Some(r) => [RunOutcome::Success, RunOutcome::Warning, RunOutcome::Failure, RunOutcome::Skipped]
                .into_iter()
                .map(|o| (format!(",outcome=\"{}\"", o.as_str()), if o == r.outcome { 1.0 } else { 0.0 }))
                .collect(),
        },
    );
    Ok(out)
}
