//! `cairn restore SNAPSHOT --target DIR [--include PATH]... [--verify]`

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::{Ctx, human_bytes};
use crate::engine::restore::{self, Failure, Settings};
use crate::engine::snapshots;
use crate::error::Exit;
use crate::progress::Progress;
use crate::repo::Repository;

pub fn run(ctx: &Ctx, spec: &str, target: PathBuf, includes: Vec<PathBuf>, verify: bool) -> Result<()> {
    let config = ctx.config()?;
    let repo = ctx.rt.block_on(Repository::open_reading(&config))?;
    let result = (|| -> Result<()> {
        let (id, snap) = snapshots::find(
            &repo.journal,
            spec,
            &crate::engine::walk::clean_sources(&config.backup.sources)?,
        )?;
        let settings =
            Settings { target: std::path::absolute(&target)?, includes, threads: config.threads(), verify };
        refuse_read_only(&settings.target)?;
        let mut progress = Progress::new("restoring", !ctx.json);
        let started = std::time::Instant::now();
        let result = restore::run(&repo, ctx.rt.handle(), &snap.tree, &settings, &progress.counters);
        progress.finish();
        let out = result?;
        let secs = started.elapsed().as_secs_f64();
        for w in &out.warnings {
            tracing::warn!("{w}");
        }
        if ctx.json {
            ctx.print_json(&json!({
            "snapshot": id.hex(),
            "target": settings.target,
            "files": out.files,
            "dirs": out.dirs,
            "symlinks": out.symlinks,
            "bytes": out.bytes,
            "skipped": out.skipped,
            "skipped_bytes": out.skipped_bytes,
            "downloaded_bytes": out.downloaded,
            "workers": out.workers,
            "verified": verify.then_some(out.verified),
            "mismatched": out.mismatched.iter().map(|(p, r)| json!({"path": p, "reason": r})).collect::<Vec<_>>(),
            "failed": out.failed.iter().map(|(p, r)| json!({"path": p, "reason": r.to_string()})).collect::<Vec<_>>(),
            "refused": out.refused.iter().map(|(p, why)| json!({"path": p, "reason": why.to_string()})).collect::<Vec<_>>(),
            "warnings": out.warnings,
            "seconds": secs,
        }));
        } else {
            println!(
                "restored snapshot {} to {}: {} files, {} folders, {} in {:.1}s",
                id.short(),
                settings.target.display(),
                out.files,
                out.dirs,
                human_bytes(out.bytes),
                secs
            );
            if out.skipped > 0 {
                println!(
                    "skipped {} file(s) ({}) already complete in the target",
                    out.skipped,
                    human_bytes(out.skipped_bytes)
                );
            }
            if verify {
                println!("verified {} file(s): {} differ", out.verified, out.mismatched.len());
            }
            for (path, reason) in &out.mismatched {
                eprintln!("differs: {path}: {reason}");
            }
            for (path, reason) in &out.failed {
                eprintln!("not restored: {path}: {reason}");
            }
            for (path, why) in &out.refused {
                eprintln!("not restored: {path}: {why}");
            }
        }
        if let Some((first, why)) = out.refused.first() {
            return Err(Exit::problems(format!(
                "{} entry(ies) of the snapshot were skipped because their names are unsafe to restore, \
             e.g. {first} ({why}); nothing was written outside {}{}",
                out.refused.len(),
                crate::untrusted::escape_bytes(settings.target.as_os_str().as_bytes()),
                if out.failed.is_empty() {
                    String::new()
                } else {
                    format!("; {} file(s) also could not be restored", out.failed.len())
                }
            ))
            .into());
        }
        let unwritten: Vec<_> = out.failed.iter().filter(|(_, f)| matches!(f, Failure::Write(_))).collect();
        let bad_data: Vec<_> = out.failed.iter().filter(|(_, f)| matches!(f, Failure::Data(_))).collect();
        let mut problems = Vec::new();
        if let Some((first, why)) = unwritten.first() {
            problems.push(format!(
                "{} file(s) could not be written to the restore target {}, e.g. {first} ({why}); \
             free space there or fix its permissions, then restore again (or restore to another --target); \
             everything else was restored",
                unwritten.len(),
                crate::untrusted::escape_bytes(settings.target.as_os_str().as_bytes()),
            ));
        }
        if let Some((first, why)) = bad_data.first() {
            problems.push(format!(
                "{} file(s) could not be restored because their data failed verification or is missing, \
             e.g. {first} ({why}); no unverified bytes were written",
                bad_data.len()
            ));
        }
        if let Some((first, why)) = out.mismatched.first() {
            problems.push(format!(
                "{} restored file(s) differ from the snapshot when read back, e.g. {first} ({why}); \
             run the same restore again to rewrite them",
                out.mismatched.len()
            ));
        }
        if !problems.is_empty() {
            return Err(Exit::problems(problems.join("; ")).into());
        }
        Ok(())
    })();
    ctx.released(&repo, result)
}

/// A target on a read-only file system takes nothing: said at once, before any download.
fn refuse_read_only(target: &Path) -> Result<()> {
    let space = crate::space::of(target)
        .with_context(|| format!("cannot inspect restore target {}", target.display()))?;
    if space.read_only {
        bail!(
            "restore target {} is on a read-only file system; nothing was restored; \
             remount it read-write or choose another --target",
            crate::untrusted::escape_bytes(target.as_os_str().as_bytes())
        );
    }
    Ok(())
}
