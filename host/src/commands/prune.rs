//! `cairn prune [--max-unused PCT] [--max-repack SIZE] [--dry-run]`

use anyhow::{Result, anyhow, bail};
use serde_json::json;

use super::{Ctx, human_bytes};
use crate::cli::PruneLimits;
use crate::config::{Config, parse_size};
use crate::engine::prune::{self, Options, Report};
use crate::repo::{Access, Repository};

pub fn run(ctx: &Ctx, limits: &PruneLimits, dry_run: bool) -> Result<()> {
    let config = ctx.config()?;
    let opts = options(&config, limits)?;
    // Alone in the repository: no other machine's backup may reference what prune deletes.
    let access = if dry_run { Access::Read } else { Access::Exclusive };
    let repo = ctx.rt.block_on(Repository::open(&config, access))?;
    let result = prune::run(&repo, ctx.rt.handle(), &opts, &[], dry_run);
    let report = ctx.released(&repo, result)?;
    print(ctx, &report);
    Ok(())
}

/// The prune options from the flags and the config.
pub fn options(config: &Config, limits: &PruneLimits) -> Result<Options> {
    let max_unused = match &limits.max_unused {
        Some(text) => parse_percent(text)?,
        None => 0.10,
    };
    let max_repack = match &limits.max_repack {
        Some(text) => Some(
            parse_size(text)
                .ok_or_else(|| anyhow!("--max-repack {text:?} is not a size like 1GiB or 500MiB"))?,
        ),
        None => None,
    };
    Ok(Options { max_unused, max_repack, pack_size: config.pack_size()? })
}

/// `10%` or `10`: a share from 0 to 100 percent.
fn parse_percent(text: &str) -> Result<f64> {
    let t = text.trim().trim_end_matches('%');
    match t.parse::<f64>() {
        Ok(v) if (0.0..=100.0).contains(&v) => Ok(v / 100.0),
        _ => bail!("--max-unused {text:?} is not a percentage from 0% to 100%"),
    }
}

/// A prune report, machine-readable.
pub fn json(report: &Report) -> serde_json::Value {
    let plan = &report.plan;
    json!({
        "dry_run": report.done.is_none(),
        "plan": plan,
        "delete_bytes": plan.delete_bytes(),
        "repack_bytes": plan.repack_bytes(),
        "freed_bytes": plan.freed_bytes(),
        "done": report.done,
    })
}

/// Prints a prune report: the plan, and what was done.
pub fn print(ctx: &Ctx, report: &Report) {
    let plan = &report.plan;
    if ctx.json {
        ctx.print_json(&json(report));
        return;
    }
    println!(
        "{} snapshot(s) need {} chunk(s) and folder listing(s); the repository holds {} pack(s), {}, of which {} unused",
        plan.snapshots,
        plan.needed_blobs,
        plan.packs,
        human_bytes(plan.pack_bytes),
        human_bytes(plan.unused_bytes)
    );
    let dry = report.done.is_none();
    for p in &plan.delete {
        if dry {
            println!("  delete {} ({}, nothing in it is needed)", p.name, human_bytes(p.size));
        }
    }
    for p in &plan.repack {
        if dry {
            println!("  repack {} ({}, {} of it needed)", p.name, human_bytes(p.size), human_bytes(p.used));
        }
    }
    println!(
        "plan: delete {} pack(s) ({}), repack {} pack(s) ({}: download {}, upload about {}), rewrite {} index object(s); frees about {}",
        plan.delete.len(),
        human_bytes(plan.delete_bytes()),
        plan.repack.len(),
        human_bytes(plan.repack_bytes()),
        human_bytes(plan.download_bytes),
        human_bytes(plan.upload_bytes),
        plan.rewrite_indexes.len(),
        human_bytes(plan.freed_bytes())
    );
    if !plan.damaged.is_empty() {
        println!(
            "{} damaged pack(s) left as they are (e.g. {}): run `cairn repair`",
            plan.damaged.len(),
            plan.damaged[0]
        );
    }
    if plan.untouched > 0 {
        println!("{} pack(s) in an unfinished upload or delete left as they are", plan.untouched);
    }
    match &report.done {
        None => println!("dry run: nothing was changed"),
        Some(d) => println!(
            "deleted {} pack(s) ({}) and {} index object(s); wrote {} new pack(s) ({} uploaded, {} downloaded)",
            d.packs_deleted,
            human_bytes(d.pack_bytes_deleted),
            d.indexes_deleted,
            d.packs_written,
            human_bytes(d.bytes_uploaded),
            human_bytes(d.bytes_downloaded)
        ),
    }
}
