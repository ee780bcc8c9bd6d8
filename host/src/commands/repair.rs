//! `cairn repair`: reconcile the journal with the repository and heal what can be healed.

use anyhow::Result;
use serde_json::json;

use super::Ctx;
use crate::engine::repair::{self, Options};
use crate::error::Exit;
use crate::repo::{Repository, describe};

pub fn run(ctx: &Ctx, opts: Options, rebuild_journal: bool) -> Result<()> {
    let config = ctx.config()?;
    let opts = Options { pack_size: config.pack_size()?, ..opts };
    repair::refuse_if_append_only(opts, config.repository.grants.delete)?;
    let mut rebuilt = None;
    let (repo, stale) = if rebuild_journal {
        if opts.dry_run {
            anyhow::bail!(
                "--rebuild-journal cannot be combined with --dry-run (it only writes the local journal)"
            );
        }
        let started = std::time::Instant::now();
        let (repo, report, moved) = ctx.rt.block_on(Repository::open_rebuilding(&config))?;
        rebuilt = Some((report, moved, started.elapsed().as_secs_f64()));
        (repo, Vec::new())
    } else {
        ctx.rt.block_on(Repository::open_for_repair(&config))?
    };
    let result = (|| -> Result<()> {
        if let Some((r, moved, secs)) = &rebuilt
            && !ctx.json
        {
            if let Some(m) = moved {
                println!("moved the old journal aside to {}", m.display());
            }
            println!(
                "rebuilt the journal of {} in {secs:.1}s: {} index object(s) listing {} pack(s), {} pack(s) from their \
             headers, {} chunks, {} snapshot(s); downloaded {} bytes",
                describe(&config),
                r.index_objects,
                r.packs_from_index,
                r.packs_from_headers,
                r.blobs,
                r.snapshots,
                r.bytes_downloaded
            );
        }
        let out = repair::run(
            &repo,
            ctx.rt.handle(),
            opts,
            &stale,
            &config.backup.sources,
            config.threads().max(2),
        )?;
        if ctx.json {
            ctx.print_json(&json!({
                "dry_run": opts.dry_run,
                "rebuilt": rebuilt.as_ref().map(|(r, moved, secs)| json!({
                    "index_objects": r.index_objects,
                    "packs_from_index": r.packs_from_index,
                    "packs_from_headers": r.packs_from_headers,
                    "blobs": r.blobs,
                    "snapshots": r.snapshots,
                    "bytes_downloaded": r.bytes_downloaded,
                    "invalid": r.invalid,
                    "old_journal": moved,
                    "seconds": secs,
                })),
                "actions": out.actions,
                "left_alone": out.left_alone,
                "salvaged_chunks": out.salvaged_chunks,
                "recovered_chunks": out.recovered_chunks,
                "purged": out.purged,
                "unrecoverable": out.unrecoverable,
            }));
        } else {
            if opts.dry_run {
                println!("dry run: nothing is changed");
            }
            for a in &out.actions {
                println!("{a}");
            }
            for l in &out.left_alone {
                println!("left alone: {l}");
            }
            for p in &out.purged {
                println!("purged: snapshot {} {}", p.snapshot, p.path);
            }
            if !out.unrecoverable.is_empty() {
                println!("cannot be recovered:");
                for u in &out.unrecoverable {
                    println!("  snapshot {}  {}: {}", u.snapshot, u.path, u.reason);
                }
                println!("(`cairn repair --purge-broken` rewrites these snapshots without them)");
            }
            if out.actions.is_empty() && out.left_alone.is_empty() && out.unrecoverable.is_empty() {
                println!("nothing to repair");
            }
        }
        if !out.unrecoverable.is_empty() {
            return Err(Exit::problems(format!(
                "{} file(s) or folder(s) in snapshots cannot be recovered (listed above)",
                out.unrecoverable.len()
            ))
            .into());
        }
        Ok(())
    })();
    ctx.released(&repo, result)
}
