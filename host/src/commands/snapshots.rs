//! `cairn snapshots`: list snapshots.

use anyhow::Result;
use serde_json::json;

use super::{Ctx, human_bytes};
use crate::engine::snapshots::display_time;
use crate::repo::{Access, Repository};

pub fn run(ctx: &Ctx) -> Result<()> {
    let config = ctx.config()?;
    let repo = ctx.rt.block_on(Repository::open(&config, Access::Read))?;
    let snaps = repo.journal.snapshots()?;
    if ctx.json {
        let list: Vec<_> = snaps
            .iter()
            .map(|(id, s)| {
                json!({
                    "id": id.hex(),
                    "short_id": id.short(),
                    "time": jiff::Timestamp::from_nanosecond(s.time_ns as i128).map(|t| t.to_string()).unwrap_or_default(),
                    "job": s.job,
                    "hostname": s.hostname,
                    "username": s.username,
                    "sources": s.sources.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect::<Vec<_>>(),
                    "tags": s.tags,
                    "parent": s.parent.map(|p| p.hex()),
                    "tree": s.tree.hex(),
                    "partial": s.partial,
                    "files": s.summary.files,
                    "bytes": s.summary.bytes,
                })
            })
            .collect();
        ctx.print_json(&json!(list));
        return Ok(());
    }
    if snaps.is_empty() {
        println!("no snapshots yet");
        return Ok(());
    }
    println!("{:<10} {:<20} {:<16} {:>10} {:>8}  SOURCES", "ID", "TIME (UTC)", "HOST", "SIZE", "FILES");
    for (id, s) in &snaps {
        // Host names, sources and tags come from the repository (any machine sharing it).
        let esc = |t: &str| crate::untrusted::escape(t).into_owned();
        let sources: Vec<String> = s.sources.iter().map(|b| crate::untrusted::escape_bytes(b)).collect();
        let mut line = format!(
            "{:<10} {:<20} {:<16} {:>10} {:>8}  {}",
            id.short(),
            display_time(s),
            esc(&s.hostname),
            human_bytes(s.summary.bytes),
            s.summary.files,
            sources.join(" ")
        );
        if !s.tags.is_empty() {
            line.push_str(&format!("  [{}]", s.tags.iter().map(|t| esc(t)).collect::<Vec<_>>().join(",")));
        }
        if s.job != crate::repo::format::DEFAULT_JOB {
            line.push_str(&format!("  job {}", esc(&s.job)));
        }
        if s.partial {
            line.push_str("  (partial: interrupted run)");
        }
        println!("{line}");
    }
    println!("{} snapshot(s)", snaps.len());
    Ok(())
}
