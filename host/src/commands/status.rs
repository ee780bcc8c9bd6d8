//! `cairn status [--json] [--max-age SPAN]`: how each job's runs went, from the journals.

use anyhow::{Result, anyhow};
use serde_json::json;

use super::{Ctx, human_bytes};
use crate::error::Exit;
use crate::journal::RunRecord;
use crate::runner::{self, jobs::parse_duration, status};

pub fn run(ctx: &Ctx, max_age: Option<&str>) -> Result<()> {
    let config = ctx.config()?;
    let max_age = max_age.map(|m| parse_duration(m).map_err(|e| anyhow!("--max-age: {e}"))).transpose()?;
    let now = runner::now()?;
    let history = status::History::load(&config)?;
    let jobs = status::of_jobs(&config, &history, now)?;
    let stale: Vec<&str> = match max_age {
        None => Vec::new(),
        Some(max) => {
            jobs.iter().filter(|j| j.age(now).is_none_or(|a| a > max)).map(|j| j.job.as_str()).collect()
        }
    };
    if ctx.json {
        let run_json = |r: &Option<RunRecord>| {
            r.as_ref().map(|r| {
                json!({
                    "started": status::timestamp(r.started_ns).to_string(),
                    "ended": status::timestamp(r.ended_ns).to_string(),
                    "outcome": r.outcome.as_str(),
                    "snapshot": r.snapshot,
                    "seconds": (r.ended_ns - r.started_ns) as f64 / 1e9,
                    "bytes_read": r.bytes_read,
                    "bytes_added": r.bytes_added,
                    "error": r.error,
                })
            })
        };
        let list: Vec<_> = jobs
            .iter()
            .map(|j| {
                json!({
                    "job": j.job,
                    "schedule": j.schedule,
                    "last_success": run_json(&j.last_success),
                    "last_failure": run_json(&j.last_failure),
                    "last_run": run_json(&j.last_run),
                    "age_seconds": j.age(now).map(|a| a.as_secs()),
                    "next_due": j.next_due.map(|t| t.to_string()),
                    "stale": stale.contains(&j.job.as_str()),
                })
            })
            .collect();
        ctx.print_json(&json!({ "jobs": list }));
    } else {
        for j in &jobs {
            println!("{}{}", j.job, j.schedule.as_ref().map(|s| format!(" ({s})")).unwrap_or_default());
            match &j.last_success {
                Some(r) => println!(
                    "  last success: {} ({} ago), took {}, added {}, snapshot {}",
                    when(r.ended_ns),
                    age(j.age(now).unwrap_or_default()),
                    age(std::time::Duration::from_nanos((r.ended_ns - r.started_ns).max(0) as u64)),
                    human_bytes(r.bytes_added),
                    r.snapshot.as_deref().map(|s| &s[..8]).unwrap_or("-")
                ),
                None => println!("  last success: never"),
            }
            if let Some(r) = &j.last_failure {
                println!(
                    "  last failure: {} ({}): {}",
                    when(r.ended_ns),
                    r.outcome.as_str(),
                    crate::untrusted::escape(r.error.as_deref().unwrap_or(""))
                );
            }
            match j.next_due {
                Some(t) if t <= now => println!("  next due: now"),
                Some(t) => println!(
                    "  next due: {}",
                    t.to_zoned_datetime(jiff::tz::TimeZone::system()).strftime("%Y-%m-%d %H:%M %Z")
                ),
                None => println!("  next due: when named (no schedule)"),
            }
        }
    }
    if !stale.is_empty() {
        return Err(Exit::problems(format!(
            "no successful backup within {} for job(s): {}",
            max_age.map(age).unwrap_or_default(),
            stale.join(", ")
        ))
        .into());
    }
    Ok(())
}

fn when(ns: i64) -> String {
    status::timestamp(ns)
        .to_zoned_datetime(jiff::tz::TimeZone::system())
        .strftime("%Y-%m-%d %H:%M:%S %Z")
        .to_string()
}

/// A duration for people: 3d 4h, 2h 5m, 40s.
fn age(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}
