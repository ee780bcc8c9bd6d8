//! `cairn diff A B`: what changed from snapshot A to snapshot B.
//!
//! Trees are compared top down; a folder whose tree id is the same in both is equal as a
//! whole and never read, so a diff of two snapshots of a large, mostly unchanged tree reads
//! only the folders on the way to what changed. No file data is read: content is compared
//! by chunk ids.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Result;
use serde_json::{Value, json};

use super::Ctx;
use super::browse::{self, node_json, put_bytes};
use crate::engine::tree::TreeReader;
use crate::ids::Id;
use crate::repo::format::{Node, NodeKind};
use crate::untrusted::escape_bytes;

/// How a path differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Added,
    Removed,
    Changed,
}

/// What about a path present in both differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aspect {
    Type,
    Content,
    Mode,
    Owner,
    Mtime,
}

impl Aspect {
    fn name(self) -> &'static str {
        match self {
            Aspect::Type => "type",
            Aspect::Content => "content",
            Aspect::Mode => "mode",
            Aspect::Owner => "owner",
            Aspect::Mtime => "mtime",
        }
    }
}

struct Entry {
    path: Vec<u8>,
    change: Change,
    before: Option<Node>,
    after: Option<Node>,
    aspects: Vec<Aspect>,
}

struct Differ<'a> {
    reader: TreeReader<'a>,
    out: Vec<Entry>,
}

impl Differ<'_> {
    /// Compares the folders `a` and `b` (tree ids) found at `prefix`.
    fn trees(&mut self, prefix: &[u8], a: Option<&Id>, b: Option<&Id>) -> Result<()> {
        if a == b {
            return Ok(());
        }
        let load = |id: Option<&Id>| -> Result<BTreeMap<Vec<u8>, Node>> {
            Ok(match id {
                Some(id) => self.reader.load(id)?.nodes.into_iter().map(|n| (n.name.to_vec(), n)).collect(),
                None => BTreeMap::new(),
            })
        };
        let (mut before, after) = (load(a)?, load(b)?);
        for (name, new) in after {
            let path = join(prefix, &name);
            match before.remove(&name) {
                None => self.one_side(path, Change::Added, new)?,
                Some(old) => self.both(path, old, new)?,
            }
        }
        for (name, old) in before {
            self.one_side(join(prefix, &name), Change::Removed, old)?;
        }
        Ok(())
    }

    /// A path on one side only, and everything below it.
    fn one_side(&mut self, path: Vec<u8>, change: Change, node: Node) -> Result<()> {
        let sub = node.subtree;
        let (before, after) = if change == Change::Added { (None, Some(node)) } else { (Some(node), None) };
        self.out.push(Entry { path: path.clone(), change, before, after, aspects: Vec::new() });
        if let Some(sub) = sub {
            let (a, b) = if change == Change::Added { (None, Some(&sub)) } else { (Some(&sub), None) };
            self.trees(&path, a, b)?;
        }
        Ok(())
    }

    fn both(&mut self, path: Vec<u8>, old: Node, new: Node) -> Result<()> {
        let mut aspects = Vec::new();
        if old.kind != new.kind {
            aspects.push(Aspect::Type);
        } else if old.content != new.content || old.target != new.target || old.size != new.size {
            aspects.push(Aspect::Content);
        }
        if old.mode != new.mode {
            aspects.push(Aspect::Mode);
        }
        if (old.uid, old.gid) != (new.uid, new.gid) {
            aspects.push(Aspect::Owner);
        }
        if old.mtime_ns != new.mtime_ns {
            aspects.push(Aspect::Mtime);
        }
        let (a, b) = (old.subtree, new.subtree);
        if !aspects.is_empty() {
            self.out.push(Entry {
                path: path.clone(),
                change: Change::Changed,
                before: Some(old),
                after: Some(new),
                aspects,
            });
        }
        self.trees(&path, a.as_ref(), b.as_ref())
    }
}

fn join(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = prefix.to_vec();
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

pub fn run(ctx: &Ctx, from: &str, to: &str) -> Result<()> {
    let (config, repo) = browse::open(ctx)?;
    let (a_id, a) = browse::snapshot(&config, &repo, from)?;
    let (b_id, b) = browse::snapshot(&config, &repo, to)?;
    let mut differ = Differ { reader: TreeReader::new(&repo, ctx.rt.handle()), out: Vec::new() };
    differ.trees(b"", Some(&a.tree), Some(&b.tree))?;
    let entries = differ.out;

    let count = |c: Change| entries.iter().filter(|e| e.change == c).count();
    let file_bytes = |n: &Option<Node>| n.as_ref().filter(|n| n.kind == NodeKind::File).map_or(0, |n| n.size);
    let bytes_added: u64 =
        entries.iter().filter(|e| e.change == Change::Added).map(|e| file_bytes(&e.after)).sum();
    let bytes_removed: u64 =
        entries.iter().filter(|e| e.change == Change::Removed).map(|e| file_bytes(&e.before)).sum();
    if ctx.json {
        let changes: Vec<Value> = entries.iter().map(entry_json).collect();
        ctx.print_json(&json!({
            "from": a_id.hex(),
            "to": b_id.hex(),
            "changes": changes,
            "summary": {
                "added": count(Change::Added),
                "removed": count(Change::Removed),
                "changed": count(Change::Changed),
                "bytes_added": bytes_added,
                "bytes_removed": bytes_removed,
            },
        }));
        return Ok(());
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for e in &entries {
        writeln!(out, "{}", entry_line(e))?;
    }
    writeln!(
        out,
        "{} added ({}), {} removed ({}), {} changed, from {} to {}",
        count(Change::Added),
        super::human_bytes(bytes_added),
        count(Change::Removed),
        super::human_bytes(bytes_removed),
        count(Change::Changed),
        a_id.short(),
        b_id.short()
    )?;
    out.flush()?;
    Ok(())
}

/// `+ /path (file, 12 B)`, `- /path (dir)`, `M /path [content, mtime] 12 B -> 40 B`.
fn entry_line(e: &Entry) -> String {
    let path = escape_bytes(&e.path);
    let describe = |n: &Node| match n.kind {
        NodeKind::File => format!("file, {}", super::human_bytes(n.size)),
        other => browse::kind_name(other).to_string(),
    };
    match (e.change, &e.before, &e.after) {
        (Change::Added, _, Some(n)) => format!("+ {path} ({})", describe(n)),
        (Change::Removed, Some(n), _) => format!("- {path} ({})", describe(n)),
        (_, Some(old), Some(new)) => {
            let what: Vec<&str> = e.aspects.iter().map(|a| a.name()).collect();
            format!("M {path} [{}] {} -> {}", what.join(", "), describe(old), describe(new))
        }
        _ => unreachable!("an added entry has an after, a removed one a before"),
    }
}

fn entry_json(e: &Entry) -> Value {
    let mut v = json!({
        "change": match e.change {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Changed => "changed",
        },
    });
    put_bytes(&mut v, "path", &e.path);
    if let Some(n) = &e.before {
        v["before"] = node_json(n);
    }
    if let Some(n) = &e.after {
        v["after"] = node_json(n);
    }
    if e.change == Change::Changed {
        v["what"] = json!(e.aspects.iter().map(|a| a.name()).collect::<Vec<_>>());
    }
    v
}
