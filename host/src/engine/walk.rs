//! Reading the source tree: which entries are excluded, and their metadata.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde_bytes::ByteBuf;

use crate::repo::format::{Node, NodeKind};

/// Exclude patterns. A pattern without `/` matches an entry's name at any depth (`*.tmp`);
/// a pattern with `/` matches the whole absolute path (`**/node_modules`, `/home/*/cache`).
pub struct Excludes {
    names: GlobSet,
    paths: GlobSet,
}

impl Excludes {
    pub fn new(patterns: &[String]) -> Result<Excludes> {
        let mut names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        for p in patterns {
            let trimmed = p.trim_end_matches('/');
            let glob = Glob::new(trimmed).map_err(|e| anyhow!("exclude pattern {p:?}: {e}"))?;
            if trimmed.contains('/') {
                paths.add(glob);
            } else {
                names.add(glob);
            }
        }
        Ok(Excludes { names: names.build()?, paths: paths.build()? })
    }

    pub fn is_excluded(&self, path: &Path, name: &OsStr) -> bool {
        self.names.is_match(name) || self.paths.is_match(path)
    }
}

/// Metadata the file cache compares, besides what the tree node keeps.
#[derive(Clone, Copy, Debug)]
pub struct Identity {
    pub ctime_ns: i64,
    pub inode: u64,
}

/// A tree node from `lstat` metadata (content and subtree are filled in later). `None` for
/// entries cairn does not back up (sockets, devices).
pub fn node_from(name: &[u8], meta: &std::fs::Metadata) -> Option<(Node, Identity)> {
    let ft = meta.file_type();
    let kind = if ft.is_file() {
        NodeKind::File
    } else if ft.is_dir() {
        NodeKind::Dir
    } else if ft.is_symlink() {
        NodeKind::Symlink
    } else if std::os::unix::fs::FileTypeExt::is_fifo(&ft) {
        NodeKind::Fifo
    } else {
        return None;
    };
    let node = Node {
        name: ByteBuf::from(name.to_vec()),
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        size: if kind == NodeKind::File { meta.len() } else { 0 },
        content: Vec::new(),
        subtree: None,
        target: ByteBuf::new(),
    };
    let id = Identity { ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(), inode: meta.ino() };
    Some((node, id))
}

/// Makes the sources absolute and normal, drops duplicates and sources inside other
/// sources, and sorts them. Every source must exist.
pub fn normalise_sources(sources: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if sources.is_empty() {
        bail!("nothing to back up: [backup] sources is empty");
    }
    let out = clean_sources(sources)?;
    for s in &out {
        if std::fs::symlink_metadata(s).is_err() {
            bail!("source {} does not exist (check [backup] sources)", s.display());
        }
    }
    Ok(out)
}

/// The sources as a snapshot records them: absolute, `.` and `..` resolved lexically
/// (symlinks kept as given), sorted, without duplicates or nested sources. They need not
/// exist (a restore on a new machine matches snapshots by them).
pub fn clean_sources(sources: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = Vec::new();
    for s in sources {
        let abs = std::path::absolute(s)?;
        let mut clean = PathBuf::new();
        for c in abs.components() {
            match c {
                std::path::Component::ParentDir => {
                    clean.pop();
                }
                std::path::Component::CurDir => {}
                other => clean.push(other),
            }
        }
        out.push(clean);
    }
    out.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
    out.dedup();
    let mut kept: Vec<PathBuf> = Vec::new();
    for s in out {
        if !kept.iter().any(|k| s.starts_with(k)) {
            kept.push(s);
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excludes_match_names_and_paths() {
        let ex = Excludes::new(&["*.tmp".into(), "**/node_modules".into(), "/data/cache/".into()]).unwrap();
        let check = |p: &str| {
            let p = Path::new(p);
            ex.is_excluded(p, p.file_name().unwrap())
        };
        assert!(check("/home/me/a.tmp"));
        assert!(check("/home/me/deep/x/b.tmp"));
        assert!(!check("/home/me/a.tmpx"));
        assert!(check("/home/me/proj/node_modules"));
        assert!(!check("/home/me/proj/node_modules_old"));
        assert!(check("/data/cache"));
        assert!(!check("/data/cache2"));
    }

    #[test]
    fn nested_sources_collapse() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        std::fs::create_dir_all(a.join("b")).unwrap();
        let got = normalise_sources(&[a.join("b"), a.clone(), a.join("b/../b")]).unwrap();
        assert_eq!(got, vec![a]);
        assert!(normalise_sources(&[d.path().join("missing")]).is_err());
    }
}
