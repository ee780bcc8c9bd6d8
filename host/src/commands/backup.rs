//! `cairn backup`: back up the configured sources as a new snapshot.

use std::sync::atomic::Ordering;

use anyhow::Result;
use serde_json::json;

use super::{Ctx, human_bytes};
use crate::engine::backup::{self, Settings};
use crate::engine::walk::Excludes;
use crate::error::Exit;
use crate::progress::Progress;
use crate::repo::{Access, Repository};

pub fn run(ctx: &Ctx, tags: &[String]) -> Result<()> {
    let config = ctx.config()?;
    let repo = ctx.rt.block_on(Repository::open(&config, Access::Write))?;
    let mut all_tags = config.backup.tags.clone();
    all_tags.extend(tags.iter().cloned());
    let settings = Settings {
        sources: config.backup.sources.clone(),
        excludes: config.backup.exclude.clone(),
        tags: all_tags,
        threads: config.threads(),
        compression: config.compression_level(),
        pack_size: config.pack_size()?,
        checkpoint_every: config.checkpoint_interval()?.0,
        checkpoint_bytes: config.checkpoint_interval()?.1,
    };
    let mut progress = Progress::new("backing up", !ctx.json);
    if progress.enabled() {
        spawn_scan(&settings, progress.counters.clone());
    }
    let started = std::time::Instant::now();
    let result = backup::run(&repo, ctx.rt.handle(), &settings, &progress.counters);
    progress.finish();
    let out = result?;
    let s = &out.snapshot.summary;
    let secs = started.elapsed().as_secs_f64();
    if ctx.json {
        ctx.print_json(&json!({
            "snapshot": out.id.hex(),
            "short_id": out.id.short(),
            "parent": out.snapshot.parent.map(|p| p.hex()),
            "files": s.files,
            "dirs": s.dirs,
            "bytes": s.bytes,
            "files_read": s.files_read,
            "bytes_read": s.bytes_read,
            "checkpoints": out.checkpoints,
            "data_added": s.data_added,
            "packs_uploaded": out.upload.packs,
            "bytes_uploaded": repo.backend.traffic.uploaded.load(Ordering::Relaxed),
            "retries": repo.backend.traffic.retries.load(Ordering::Relaxed),
            "errors": s.errors,
            "warnings": out.warnings,
            "seconds": secs,
        }));
    } else {
        println!(
            "snapshot {} saved: {} files, {} folders, {} in {:.1}s",
            out.id.short(),
            s.files,
            s.dirs,
            human_bytes(s.bytes),
            secs
        );
        println!(
            "read {} changed files, added {} of new data, uploaded {} in {} packs",
            s.files_read,
            human_bytes(s.data_added),
            human_bytes(repo.backend.traffic.uploaded.load(Ordering::Relaxed)),
            out.upload.packs
        );
    }
    if s.errors > 0 {
        return Err(Exit::problems(format!(
            "snapshot {} is missing {} item(s) that could not be read (see the warnings above)",
            out.id.short(),
            s.errors
        ))
        .into());
    }
    Ok(())
}

/// Counts what the backup will cover, for the progress bar's total and ETA.
fn spawn_scan(settings: &Settings, counters: std::sync::Arc<crate::progress::Counters>) {
    let sources = settings.sources.clone();
    let Ok(excludes) = Excludes::new(&settings.excludes) else {
        return;
    };
    std::thread::spawn(move || {
        fn scan(dir: &std::path::Path, ex: &Excludes, c: &crate::progress::Counters) {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return;
            };
            for e in rd.flatten() {
                let path = e.path();
                if ex.is_excluded(&path, &e.file_name()) {
                    continue;
                }
                let Ok(meta) = e.metadata() else { continue };
                if meta.is_dir() {
                    scan(&path, ex, c);
                } else if meta.is_file() {
                    c.total_files.fetch_add(1, Ordering::Relaxed);
                    c.total_bytes.fetch_add(meta.len(), Ordering::Relaxed);
                }
            }
        }
        for s in &sources {
            match std::fs::symlink_metadata(s) {
                Ok(m) if m.is_dir() => scan(s, &excludes, &counters),
                Ok(m) if m.is_file() => {
                    counters.total_files.fetch_add(1, Ordering::Relaxed);
                    counters.total_bytes.fetch_add(m.len(), Ordering::Relaxed);
                }
                _ => {}
            }
        }
    });
}
