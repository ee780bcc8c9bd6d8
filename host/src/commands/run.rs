//! `cairn run [JOB...] [--parallel N]`: run the named jobs, or every scheduled job that is due.

use anyhow::{Result, bail};
use serde_json::json;

use super::Ctx;
use crate::error::{EXIT_ERROR, EXIT_PROBLEMS, Exit};
use crate::journal::RunOutcome;
use crate::runner;

pub fn run(ctx: &Ctx, names: &[String], parallel: usize, verbose: bool) -> Result<()> {
    let config = ctx.config()?;
    if runner::jobs::names(&config).is_empty() {
        bail!("{} defines no job: add a [jobs.NAME] table (or [backup] sources)", config.path.display());
    }
    let now = runner::now()?;
    let jobs = runner::select(&config, names, now)?;
    if jobs.is_empty() {
        if ctx.json {
            ctx.print_json(&json!({ "runs": [] }));
        } else {
            println!("no job is due (see `cairn schedule show`)");
        }
        return Ok(());
    }
    let report = runner::run(ctx, &config, jobs, parallel, verbose)?;
    if ctx.json {
        let runs: Vec<_> = report
            .runs
            .iter()
            .map(|r| {
                json!({
                    "job": r.job,
                    "outcome": r.outcome.as_str(),
                    "snapshot": r.snapshot,
                    "bytes_read": r.bytes_read,
                    "bytes_added": r.bytes_added,
                    "seconds": (r.ended_ns - r.started_ns) as f64 / 1e9,
                    "error": r.error,
                })
            })
            .collect();
        ctx.print_json(&json!({ "runs": runs }));
    } else {
        for r in &report.runs {
            let snapshot = r.snapshot.as_deref().map(|s| &s[..8]).unwrap_or("-");
            match (&r.outcome, &r.error) {
                (RunOutcome::Success, _) => println!("job {}: success, snapshot {snapshot}", r.job),
                (RunOutcome::Skipped, e) => {
                    println!("job {}: skipped: {}", r.job, e.as_deref().unwrap_or(""))
                }
                (o, e) => println!(
                    "job {}: {}, snapshot {snapshot}: {}",
                    r.job,
                    o.as_str(),
                    e.as_deref().unwrap_or("")
                ),
            }
        }
    }
    for p in &report.problems {
        eprintln!("cairn: {p}");
    }
    let named = |pred: fn(RunOutcome) -> bool| -> Vec<String> {
        report.runs.iter().filter(|r| pred(r.outcome)).map(|r| r.job.clone()).collect()
    };
    match report.exit_code() {
        EXIT_ERROR => {
            let failed = named(|o| matches!(o, RunOutcome::Failure | RunOutcome::Skipped));
            bail!(
                "{} of {} job(s) failed or were skipped: {}; see `cairn status` and the run logs",
                failed.len(),
                report.runs.len(),
                failed.join(", ")
            )
        }
        EXIT_PROBLEMS => {
            let warned = named(|o| o == RunOutcome::Warning);
            if warned.is_empty() {
                return Err(Exit::problems(
                    "every job succeeded, but the monitoring textfile was not written",
                )
                .into());
            }
            Err(Exit::problems(format!(
                "job(s) finished with warnings: {}; see `cairn status` and the run logs",
                warned.join(", ")
            ))
            .into())
        }
        _ => Ok(()),
    }
}
