//! `cairn ls SNAPSHOT`: list what a snapshot holds.

use std::io::Write;

use anyhow::Result;
use serde_json::json;

use super::Ctx;
use crate::engine::{snapshots, tree};
use crate::repo::format::NodeKind;
use crate::repo::{Access, Repository};

fn mode_string(kind: NodeKind, mode: u32) -> String {
    let t = match kind {
        NodeKind::Dir => 'd',
        NodeKind::Symlink => 'l',
        NodeKind::Fifo => 'p',
        NodeKind::File => '-',
    };
    let mut s = String::from(t);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

pub fn run(ctx: &Ctx, spec: &str, long: bool) -> Result<()> {
    let config = ctx.config()?;
    let repo = ctx.rt.block_on(Repository::open(&config, Access::Read))?;
    let (_, snap) =
        snapshots::find(&repo.journal, spec, &crate::engine::walk::clean_sources(&config.backup.sources)?)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    tree::walk(&repo, ctx.rt.handle(), &snap.tree, &mut |path, node| {
        let path = String::from_utf8_lossy(path);
        if ctx.json {
            let kind = match node.kind {
                NodeKind::File => "file",
                NodeKind::Dir => "dir",
                NodeKind::Symlink => "symlink",
                NodeKind::Fifo => "fifo",
            };
            let mut v = json!({
                "path": path,
                "type": kind,
                "mode": node.mode,
                "uid": node.uid,
                "gid": node.gid,
                "size": node.size,
                "mtime_ns": node.mtime_ns,
            });
            if node.kind == NodeKind::Symlink {
                v["target"] = json!(String::from_utf8_lossy(&node.target));
            }
            writeln!(out, "{v}")?;
        } else if long {
            let mtime = jiff::Timestamp::from_nanosecond(node.mtime_ns as i128)
                .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default();
            let mut line = format!(
                "{} {:>6} {:>6} {:>12} {} {}",
                mode_string(node.kind, node.mode),
                node.uid,
                node.gid,
                node.size,
                mtime,
                path
            );
            if node.kind == NodeKind::Symlink {
                line.push_str(&format!(" -> {}", String::from_utf8_lossy(&node.target)));
            }
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{path}")?;
        }
        Ok(true)
    })?;
    out.flush()?;
    Ok(())
}
