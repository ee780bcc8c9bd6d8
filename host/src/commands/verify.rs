//! `cairn verify [--read-data | --read-data-subset N%|n/t]`: is everything restorable?

use anyhow::Result;
use serde_json::json;

use super::{Ctx, human_bytes};
use crate::engine::verify::{self, Subset};
use crate::error::Exit;
use crate::repo::{Access, Repository};
use crate::untrusted::escape;

pub fn run(ctx: &Ctx, read_data: bool, subset: Option<Subset>) -> Result<()> {
    let config = ctx.config()?;
    let repo = ctx.rt.block_on(Repository::open(&config, Access::Inspect))?;
    let result = (|| -> Result<()> {
        let subset = subset.or(read_data.then_some(Subset::All));
        let started = std::time::Instant::now();
        let report = verify::run(&repo, ctx.rt.handle(), subset, config.threads().max(2))?;
        let secs = started.elapsed().as_secs_f64();
        if ctx.json {
            ctx.print_json(&json!({
                "whole": report.is_clean(),
                "objects_listed": report.objects_listed,
                "snapshots_checked": report.snapshots_checked,
                "trees_checked": report.trees_checked,
                "packs_read": report.packs_read,
                "bytes_read": report.bytes_read,
                "blobs_checked": report.blobs_checked,
                "problems": report.problems,
                "affected": report.affected,
                "seconds": secs,
            }));
        } else {
            let mut line = format!(
                "checked {} objects, {} snapshots, {} folder listings",
                report.objects_listed, report.snapshots_checked, report.trees_checked
            );
            if subset.is_some() {
                line.push_str(&format!(
                    "; read {} packs ({}) and verified {} chunks",
                    report.packs_read,
                    human_bytes(report.bytes_read),
                    report.blobs_checked
                ));
            }
            println!("{line} in {secs:.1}s");
            if !report.problems.is_empty() {
                println!("problems:");
                for p in &report.problems {
                    println!("  {:<18} {}: {}", p.kind, escape(&p.object), p.detail);
                }
            }
            if !report.affected.is_empty() {
                println!("cannot be restored (fully):");
                for a in &report.affected {
                    println!("  snapshot {}  {}: {}", a.snapshot, a.path, a.reason);
                }
            }
            if report.is_clean() {
                println!("the repository is whole");
            }
        }
        if !report.is_clean() {
            return Err(Exit::problems(format!(
            "verify found {} problem(s); {} file(s) or folder(s) in snapshots are affected; run `cairn repair`",
            report.problems.len(),
            report.affected.len()
        ))
        .into());
        }
        Ok(())
    })();
    ctx.released(&repo, result)
}
