//! `cairn stats [--group-by LIST]`

use anyhow::Result;
use serde_json::json;

use super::{Ctx, human_bytes};
use crate::engine::forget::GroupBy;
use crate::engine::stats::{self, Figures};
use crate::repo::{Access, Repository};

pub fn run(ctx: &Ctx, group_by: Option<&str>) -> Result<()> {
    let config = ctx.config()?;
    let group_by = match group_by.or(config.retention.group_by.as_deref()) {
        Some(text) => text.parse::<GroupBy>().map_err(anyhow::Error::msg)?,
        None => GroupBy::DEFAULT,
    };
    let repo = ctx.rt.block_on(Repository::open(&config, Access::Read))?;
    let s = stats::run(&repo, ctx.rt.handle(), group_by)?;
    if ctx.json {
        ctx.print_json(&json!(s));
        return Ok(());
    }
    println!("repository: {}", figures(&s.all));
    println!(
        "  stored: {} in all, {} in {} pack(s), of which {} unused ({} freed by `cairn prune`)",
        human_bytes(s.repository_bytes),
        human_bytes(s.pack_bytes),
        s.packs,
        human_bytes(s.unused_bytes),
        human_bytes(s.prune_would_free)
    );
    for g in &s.groups {
        println!("{}: {}", g.key, figures(&g.figures));
        println!(
            "  only this group needs {} (freed once all its snapshots are forgotten)",
            human_bytes(g.freed_if_forgotten)
        );
    }
    Ok(())
}

fn figures(f: &Figures) -> String {
    format!(
        "{} snapshot(s), {} file(s), {} logical, {} unique ({} stored), deduplication {:.2}x",
        f.snapshots,
        f.files,
        human_bytes(f.logical_bytes),
        human_bytes(f.unique_bytes),
        human_bytes(f.stored_bytes),
        f.dedup_ratio
    )
}
