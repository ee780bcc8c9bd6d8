//! What `diff`, `find` and `dump` share: opening a snapshot for reading, and showing paths
//! and nodes from a repository (untrusted names) as text or JSON.

use anyhow::Result;
use serde_json::{Value, json};

use super::Ctx;
use crate::config::Config;
use crate::engine::snapshots;
use crate::ids::Id;
use crate::repo::format::{Node, NodeKind, Snapshot};
use crate::repo::{Access, Repository};

/// Opens the repository for reading (no lock: may run beside a backup).
pub fn open(ctx: &Ctx) -> Result<(Config, Repository)> {
    let config = ctx.config()?;
    let repo = ctx.rt.block_on(Repository::open(&config, Access::Read))?;
    Ok((config, repo))
}

/// The snapshot `spec` names (`latest` or an id prefix).
pub fn snapshot(config: &Config, repo: &Repository, spec: &str) -> Result<(Id, Snapshot)> {
    snapshots::find(&repo.journal, spec, &crate::engine::walk::clean_sources(&config.backup.sources)?)
}

pub fn kind_name(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::File => "file",
        NodeKind::Dir => "dir",
        NodeKind::Symlink => "symlink",
        NodeKind::Fifo => "fifo",
    }
}

/// Adds `key` to a JSON object for a name or path from the repository. JSON strings are
/// Unicode, names are bytes: valid UTF-8 is the string itself; otherwise the string has
/// U+FFFD for the invalid bytes and `<key>_hex` holds the exact bytes in hex.
pub fn put_bytes(obj: &mut Value, key: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => obj[key] = json!(s),
        Err(_) => {
            obj[key] = json!(String::from_utf8_lossy(bytes));
            obj[format!("{key}_hex")] = json!(hex::encode(bytes));
        }
    }
}

/// A node's metadata as JSON (path added by the caller).
pub fn node_json(node: &Node) -> Value {
    let mut v = json!({
        "type": kind_name(node.kind),
        "mode": node.mode,
        "uid": node.uid,
        "gid": node.gid,
        "size": node.size,
        "mtime_ns": node.mtime_ns,
    });
    if node.kind == NodeKind::Symlink {
        put_bytes(&mut v, "target", &node.target);
    }
    v
}

/// A node time for people, in UTC.
pub fn display_mtime(mtime_ns: i64) -> String {
    jiff::Timestamp::from_nanosecond(mtime_ns as i128)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|_| mtime_ns.to_string())
}
