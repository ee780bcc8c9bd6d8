//! `cairn find PATTERN [--snapshot ID] [--path PREFIX]`: which snapshots hold matching paths,
//! with size and time in each ("when did this file last exist, and which version?").
//!
//! Only trees are read, never file data. With `--path`, only the folders on the way to the
//! prefix and below it. A pattern without `/` matches names, so the matches below a folder
//! depend on its tree id alone: they are remembered by id, and a folder unchanged between
//! snapshots is read once for all of them.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;

use anyhow::{Result, anyhow};
use globset::{Glob, GlobBuilder, GlobMatcher};
use serde_json::{Value, json};

use super::Ctx;
use super::browse::{self, node_json, put_bytes};
use crate::engine::tree::TreeReader;
use crate::ids::Id;
use crate::repo::format::{Node, Snapshot};
use crate::untrusted::{escape, escape_bytes};

/// What the pattern is matched against.
enum Pattern {
    /// No `/` in it: a name at any depth.
    Name(GlobMatcher),
    /// With `/`: the whole path (`*` does not cross `/`, `**` does).
    Path(GlobMatcher),
}

impl Pattern {
    fn new(text: &str) -> Result<Pattern> {
        let bad = |e: globset::Error| anyhow!("{:?} is not a glob pattern: {e}", escape(text));
        if text.contains('/') {
            let g = GlobBuilder::new(text).literal_separator(true).build().map_err(bad)?;
            Ok(Pattern::Path(g.compile_matcher()))
        } else {
            Ok(Pattern::Name(Glob::new(text).map_err(bad)?.compile_matcher()))
        }
    }

    fn matches(&self, path: &[u8], name: &[u8]) -> bool {
        match self {
            Pattern::Name(g) => g.is_match(std::ffi::OsStr::from_bytes(name)),
            Pattern::Path(g) => g.is_match(std::ffi::OsStr::from_bytes(path)),
        }
    }
}

/// A match: its path relative to the folder searched, and its node.
type Found = Vec<(Vec<u8>, Node)>;

struct Finder<'a> {
    reader: TreeReader<'a>,
    pattern: Pattern,
    /// Matches below a folder, by tree id (name patterns only), relative to that folder.
    memo: HashMap<Id, std::rc::Rc<Found>>,
}

impl Finder<'_> {
    /// Matches below the folder `id`, found at `prefix`, as paths relative to it.
    fn below(&mut self, id: &Id, prefix: &[u8]) -> Result<std::rc::Rc<Found>> {
        let by_name = matches!(self.pattern, Pattern::Name(_));
        if by_name && let Some(found) = self.memo.get(id) {
            return Ok(found.clone());
        }
        let mut found = Vec::new();
        for node in self.reader.load(id)?.nodes {
            let rel = join(b"", &node.name);
            let path = join(prefix, &node.name);
            if let Some(sub) = &node.subtree {
                for (below, n) in self.below(sub, &path)?.iter() {
                    found.push(([rel.as_slice(), below].concat(), n.clone()));
                }
            }
            if self.pattern.matches(&path, &node.name) {
                found.push((rel, node));
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        let found = std::rc::Rc::new(found);
        if by_name {
            self.memo.insert(*id, found.clone());
        }
        Ok(found)
    }

    /// Matches in a snapshot, as full paths, at or below `within` (a path in the snapshot).
    fn in_snapshot(&mut self, snap: &Snapshot, within: &[u8]) -> Result<Found> {
        // Walk down to `within`, reading only the folders on the way.
        let mut id = snap.tree;
        let mut prefix = Vec::new();
        let parts: Vec<&[u8]> = within.split(|b| *b == b'/').filter(|p| !p.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            let tree = self.reader.load(&id)?;
            let Some(node) = tree.nodes.into_iter().find(|n| n.name.as_slice() == *part) else {
                return Ok(Vec::new());
            };
            prefix = join(&prefix, part);
            match node.subtree {
                Some(sub) => id = sub,
                // The prefix names a file: it alone is a candidate.
                None if i + 1 == parts.len() => {
                    let hit = self.pattern.matches(&prefix, &node.name);
                    return Ok(if hit { vec![(prefix, node)] } else { Vec::new() });
                }
                None => return Ok(Vec::new()),
            }
        }
        let found = self.below(&id, &prefix)?;
        Ok(found.iter().map(|(rel, n)| ([prefix.as_slice(), rel].concat(), n.clone())).collect())
    }
}

fn join(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = prefix.to_vec();
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

pub fn run(ctx: &Ctx, pattern: &str, snapshot: Option<&str>, within: Option<&std::path::Path>) -> Result<()> {
    let (config, repo) = browse::open(ctx)?;
    let mut snaps = match snapshot {
        Some(spec) => vec![browse::snapshot(&config, &repo, spec)?],
        None => repo.journal.snapshots()?,
    };
    snaps.sort_by_key(|(id, s)| (s.time_ns, *id));
    let within = within.map(|p| p.as_os_str().as_bytes().to_vec()).unwrap_or_default();
    let mut finder = Finder {
        reader: TreeReader::new(&repo, ctx.rt.handle()),
        pattern: Pattern::new(pattern)?,
        memo: HashMap::new(),
    };

    let mut results = Vec::new();
    for (id, snap) in &snaps {
        let found = finder.in_snapshot(snap, &within)?;
        if !found.is_empty() {
            results.push((id, snap, found));
        }
    }
    if ctx.json {
        let list: Vec<Value> = results
            .iter()
            .map(|(id, snap, found)| {
                let matches: Vec<Value> = found
                    .iter()
                    .map(|(path, node)| {
                        let mut v = node_json(node);
                        put_bytes(&mut v, "path", path);
                        v
                    })
                    .collect();
                json!({
                    "snapshot": id.hex(),
                    "time": crate::engine::snapshots::display_time(snap),
                    "time_ns": snap.time_ns,
                    "hostname": snap.hostname,
                    "partial": snap.partial,
                    "matches": matches,
                })
            })
            .collect();
        ctx.print_json(&json!(list));
        return Ok(());
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for (id, snap, found) in &results {
        writeln!(
            out,
            "snapshot {} of {} on {}{}:",
            id.short(),
            crate::engine::snapshots::display_time(snap),
            escape(&snap.hostname),
            if snap.partial { " (partial)" } else { "" }
        )?;
        for (path, node) in found {
            writeln!(
                out,
                "  {} {:>10} {} {}",
                browse::kind_name(node.kind),
                super::human_bytes(node.size),
                browse::display_mtime(node.mtime_ns),
                escape_bytes(path)
            )?;
        }
    }
    if results.is_empty() {
        writeln!(out, "no snapshot holds a path matching {}", escape(pattern))?;
    } else {
        writeln!(out, "{} of {} snapshot(s) hold matching paths", results.len(), snaps.len())?;
    }
    out.flush()?;
    Ok(())
}
