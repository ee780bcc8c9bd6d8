//! `cairn copy --to-config OTHER.toml [SNAPSHOT...]`: copy snapshots into a second
//! repository (3-2-1), opened with its own config, state folder and password.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use super::{Ctx, human_bytes};
use crate::config::Config;
use crate::engine::copy::{self, Settings};
use crate::engine::snapshots;
use crate::repo::{Access, Repository};

pub fn run(ctx: &Ctx, to_config: &Path, named: &[String]) -> Result<()> {
    let config = ctx.config()?;
    let other = Config::locate(Some(to_config))
        .with_context(|| format!("the target config {}", to_config.display()))?;
    // A shared lock in the source too: no prune may delete what the copy is reading.
    let source = ctx.rt.block_on(Repository::open_reading(&config))?;
    let result = copy_to(ctx, &config, &other, to_config, &source, named);
    ctx.released(&source, result)
}

fn copy_to(
    ctx: &Ctx,
    config: &Config,
    other: &Config,
    to_config: &Path,
    source: &Repository,
    named: &[String],
) -> Result<()> {
    let chosen = if named.is_empty() {
        // Every complete snapshot: partial ones are checkpoints of runs, copied only by name.
        source.journal.snapshots()?.into_iter().filter(|(_, s)| !s.partial).collect()
    } else {
        let sources = crate::engine::walk::clean_sources(&config.backup.sources)?;
        let mut v = Vec::new();
        for spec in named {
            let found = snapshots::find(&source.journal, spec, &sources)?;
            if !v.iter().any(|(id, _)| *id == found.0) {
                v.push(found);
            }
        }
        v
    };
    let target = ctx
        .rt
        .block_on(Repository::open(other, Access::Write))
        .with_context(|| format!("the target repository of {}", to_config.display()))?;
    let result = copy_into(ctx, other, source, &target, chosen);
    ctx.released(&target, result)
}

fn copy_into(
    ctx: &Ctx,
    other: &Config,
    source: &Repository,
    target: &Repository,
    chosen: Vec<(crate::ids::Id, crate::repo::format::Snapshot)>,
) -> Result<()> {
    let settings = Settings { compression: other.compression_level(), pack_size: other.pack_size()? };
    let out = copy::run(source, target, ctx.rt.handle(), chosen, &settings)?;
    if ctx.json {
        let copied: Vec<_> =
            out.copied.iter().map(|(s, t)| json!({ "source": s.hex(), "target": t.hex() })).collect();
        ctx.print_json(&json!({
            "copied": copied,
            "skipped": out.skipped.iter().map(|id| id.hex()).collect::<Vec<_>>(),
            "blobs_added": out.blobs_added,
            "bytes_added": out.bytes_added,
            "packs_uploaded": out.upload.packs,
            "packed_bytes": out.upload.bytes,
        }));
        return Ok(());
    }
    for (s, t) in &out.copied {
        println!("copied snapshot {} as {}", s.short(), t.short());
    }
    println!(
        "{} snapshot(s) copied, {} already in the target; {} new chunk(s) ({}), {} pack(s) uploaded ({})",
        out.copied.len(),
        out.skipped.len(),
        out.blobs_added,
        human_bytes(out.bytes_added),
        out.upload.packs,
        human_bytes(out.upload.bytes)
    );
    Ok(())
}
