//! `cairn init`: create a repository.

use anyhow::{Result, anyhow};
use serde_json::json;

use super::Ctx;
use crate::config::parse_size;
use crate::repo::format::ChunkerParams;
use crate::repo::{Repository, describe};

pub fn run(ctx: &Ctx, chunk_size: Option<&str>) -> Result<()> {
    let config = ctx.config()?;
    let chunker = match chunk_size {
        None => ChunkerParams::default_with_seed(getrandom::u64()?),
        Some(text) => {
            let avg =
                parse_size(text).ok_or_else(|| anyhow!("--chunk-size {text:?} is not a size like 256KiB"))?;
            ChunkerParams::with_average(avg, getrandom::u64()?)?
        }
    };
    let (repo, key) = ctx.rt.block_on(Repository::init(&config, chunker))?;
    if ctx.json {
        ctx.print_json(&json!({
            "repository": repo.params.id,
            "location": describe(&config),
            "key": key,
            "backend": repo.backend.name(),
        }));
    } else {
        println!("created repository {} at {}", repo.params.id, describe(&config));
        println!("keep the password safe: without it the backups cannot be read");
    }
    Ok(())
}
