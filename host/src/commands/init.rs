//! `cairn init`: create a repository.

use anyhow::Result;
use serde_json::json;

use super::Ctx;
use crate::repo::{Repository, describe};

pub fn run(ctx: &Ctx) -> Result<()> {
    let config = ctx.config()?;
    let (repo, key) = ctx.rt.block_on(Repository::init(&config))?;
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
