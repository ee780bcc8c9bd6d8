//! Reading blobs back: locate them through the journal, fetch with a ranged read, verify.
//!
//! A repository is untrusted data even when it authenticates (several machines write to
//! it), so a loaded tree keeps only entries whose name is exactly one path component:
//! anything else could make a restore write outside its target.

use std::collections::HashSet;

use anyhow::{Context, Result, anyhow};

use crate::ids::Id;
use crate::repo::Repository;
use crate::repo::format::{self, BlobKind, Tree};

/// Reads and fully verifies one blob.
pub fn read_blob(repo: &Repository, rt: &tokio::runtime::Handle, kind: BlobKind, id: &Id) -> Result<Vec<u8>> {
    let loc = repo
        .journal
        .blob_location(id, kind)?
        .ok_or_else(|| anyhow!("blob {} is not in any known pack; run `cairn verify`", id.short()))?;
    let name = format::pack_name(&loc.pack);
    let stored = rt.block_on(repo.backend.read(&name, loc.offset, loc.length as u64))?;
    if stored.len() != loc.length as usize {
        anyhow::bail!("pack {name} is truncated (blob {} cut short); run `cairn verify`", id.short());
    }
    format::decode_blob(&repo.key, kind, id, &stored, loc.raw_length as usize)
        .with_context(|| format!("in pack {name}"))
}

/// Reads trees, fetching each tree pack whole once (trees are small and many; one read per
/// pack instead of one per folder) and keeping the last few packs in memory.
pub struct TreeReader<'a> {
    repo: &'a Repository,
    rt: &'a tokio::runtime::Handle,
    packs: std::cell::RefCell<std::collections::VecDeque<(Id, std::rc::Rc<Vec<u8>>)>>,
}

/// Tree packs up to this size are fetched whole (backups write them up to 4 MiB, plus one
/// tree); the packs kept take at most `CACHED_BYTES`, so memory stays bounded whatever the
/// repository's size.
const WHOLE_PACK_MAX: u64 = 8 << 20;
const CACHED_BYTES: usize = 12 << 20;

impl<'a> TreeReader<'a> {
    pub fn new(repo: &'a Repository, rt: &'a tokio::runtime::Handle) -> TreeReader<'a> {
        TreeReader { repo, rt, packs: Default::default() }
    }

    /// The tree `id` without its entries whose name is refused (see [`check_names`]).
    pub fn load(&self, id: &Id) -> Result<Tree> {
        Ok(self.load_checked(id)?.0)
    }

    /// The tree `id` without its refused entries, and those entries.
    pub fn load_checked(&self, id: &Id) -> Result<(Tree, Vec<Rejected>)> {
        let mut tree = self.load_unchecked(id)?;
        let rejected = check_names(&mut tree);
        Ok((tree, rejected))
    }

    /// The tree `id` with every entry, refused names included (prune's mark: what a tree
    /// references must stay, whether or not a restore would write it).
    pub fn load_raw(&self, id: &Id) -> Result<Tree> {
        self.load_unchecked(id)
    }

    fn load_unchecked(&self, id: &Id) -> Result<Tree> {
        let loc = self
            .repo
            .journal
            .blob_location(id, BlobKind::Tree)?
            .ok_or_else(|| anyhow!("tree {} is not in any known pack; run `cairn verify`", id.short()))?;
        let name = format::pack_name(&loc.pack);
        let end = loc.offset + loc.length as u64;
        let bytes = match self.whole_pack(&loc.pack, &name)? {
            Some(pack) if end <= pack.len() as u64 => {
                let stored = &pack[loc.offset as usize..end as usize];
                format::decode_blob(&self.repo.key, BlobKind::Tree, id, stored, loc.raw_length as usize)
                    .with_context(|| format!("in pack {name}"))?
            }
            Some(_) => {
                anyhow::bail!("pack {name} is truncated (tree {} cut short); run `cairn verify`", id.short())
            }
            None => read_blob(self.repo, self.rt, BlobKind::Tree, id)?,
        };
        let tree: Tree =
            postcard::from_bytes(&bytes).with_context(|| format!("tree {} cannot be decoded", id.short()))?;
        if tree.version != 1 {
            anyhow::bail!("tree {} has unsupported version {}", id.short(), tree.version);
        }
        Ok(tree)
    }

    /// The whole pack, when it is small enough to fetch whole.
    fn whole_pack(&self, pack: &Id, name: &str) -> Result<Option<std::rc::Rc<Vec<u8>>>> {
        if let Some((_, bytes)) = self.packs.borrow().iter().find(|(p, _)| p == pack) {
            return Ok(Some(bytes.clone()));
        }
        let Some(obj) = self.repo.journal.object(name)? else { return Ok(None) };
        if obj.size > WHOLE_PACK_MAX {
            return Ok(None);
        }
        let bytes = std::rc::Rc::new(self.rt.block_on(self.repo.backend.read(name, 0, obj.size))?);
        let mut packs = self.packs.borrow_mut();
        while !packs.is_empty()
            && packs.iter().map(|(_, b)| b.len()).sum::<usize>() + bytes.len() > CACHED_BYTES
        {
            packs.pop_front();
        }
        packs.push_back((*pack, bytes.clone()));
        Ok(Some(bytes))
    }

    /// Visits every node below `root` depth-first, in name order, with its full path
    /// (`/home/me/file`). Return `false` from `visit` to skip a directory's contents.
    /// Refused entries are left out.
    pub fn walk(&self, root: &Id, visit: &mut dyn FnMut(&[u8], &format::Node) -> Result<bool>) -> Result<()> {
        self.walk_checked(root, visit, &mut |_, _| Ok(()))
    }

    /// [`TreeReader::walk`], also telling `refused` about every refused entry of a visited
    /// folder, with its path (whose last part is the raw name) and why.
    pub fn walk_checked(
        &self,
        root: &Id,
        visit: &mut dyn FnMut(&[u8], &format::Node) -> Result<bool>,
        refused: &mut dyn FnMut(&[u8], BadName) -> Result<()>,
    ) -> Result<()> {
        self.walk_from(root, b"", visit, refused)
    }

    fn walk_from(
        &self,
        id: &Id,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &format::Node) -> Result<bool>,
        refused: &mut dyn FnMut(&[u8], BadName) -> Result<()>,
    ) -> Result<()> {
        let (tree, rejected) = self.load_checked(id)?;
        for r in &rejected {
            let mut path = prefix.to_vec();
            path.push(b'/');
            path.extend_from_slice(&r.name);
            refused(&path, r.why)?;
        }
        for node in &tree.nodes {
            let mut path = prefix.to_vec();
            path.push(b'/');
            path.extend_from_slice(&node.name);
            let descend = visit(&path, node)?;
            if descend && let Some(sub) = &node.subtree {
                self.walk_from(sub, &path, visit, refused)?;
            }
        }
        Ok(())
    }
}

/// Visits every node below `root`; see [`TreeReader::walk`].
pub fn walk(
    repo: &Repository,
    rt: &tokio::runtime::Handle,
    root: &Id,
    visit: &mut dyn FnMut(&[u8], &format::Node) -> Result<bool>,
) -> Result<()> {
    TreeReader::new(repo, rt).walk(root, visit)
}

/// Why a tree entry is refused. An entry's name must be exactly one path component, and
/// unique in its folder: otherwise a restore could be made to write outside its target
/// (`..`, `/etc`), or through a symlink the same snapshot holds (a symlink and a folder of
/// the same name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadName {
    Empty,
    Dot,
    DotDot,
    Slash,
    Nul,
    Duplicate,
}

impl std::fmt::Display for BadName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BadName::Empty => "the snapshot holds an entry with an empty name",
            BadName::Dot => "the snapshot holds an entry named `.`",
            BadName::DotDot => "the snapshot holds an entry named `..`",
            BadName::Slash => "the snapshot holds a name with `/` in it",
            BadName::Nul => "the snapshot holds a name with a NUL byte in it",
            BadName::Duplicate => "the snapshot holds two entries of this name in one folder",
        })
    }
}

/// A tree entry left out when its tree was loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub name: Vec<u8>,
    pub why: BadName,
}

/// Whether `name` is exactly one path component.
pub fn check_name(name: &[u8]) -> Result<(), BadName> {
    match name {
        b"" => Err(BadName::Empty),
        b"." => Err(BadName::Dot),
        b".." => Err(BadName::DotDot),
        _ if name.contains(&b'/') => Err(BadName::Slash),
        _ if name.contains(&0) => Err(BadName::Nul),
        _ => Ok(()),
    }
}

/// Removes from `tree` the entries whose name is not one path component, and every entry
/// after the first of a name; returns them.
fn check_names(tree: &mut Tree) -> Vec<Rejected> {
    let mut seen: HashSet<Vec<u8>> = HashSet::with_capacity(tree.nodes.len());
    let mut rejected = Vec::new();
    tree.nodes.retain(|node| {
        let why = match check_name(&node.name) {
            Err(why) => why,
            Ok(()) if seen.insert(node.name.to_vec()) => return true,
            Ok(()) => BadName::Duplicate,
        };
        rejected.push(Rejected { name: node.name.to_vec(), why });
        false
    });
    rejected
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::format::{Node, NodeKind};

    fn node(name: &[u8]) -> Node {
        Node {
            name: serde_bytes::ByteBuf::from(name.to_vec()),
            kind: NodeKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            size: 0,
            content: Vec::new(),
            subtree: None,
            target: serde_bytes::ByteBuf::new(),
        }
    }

    #[test]
    fn names_are_one_component() {
        assert_eq!(check_name(b"a"), Ok(()));
        assert_eq!(check_name(b"..."), Ok(()));
        assert_eq!(check_name(b".hidden"), Ok(()));
        assert_eq!(check_name(b"a\\b"), Ok(()));
        assert_eq!(check_name(b""), Err(BadName::Empty));
        assert_eq!(check_name(b"."), Err(BadName::Dot));
        assert_eq!(check_name(b".."), Err(BadName::DotDot));
        assert_eq!(check_name(b"/etc"), Err(BadName::Slash));
        assert_eq!(check_name(b"a/b"), Err(BadName::Slash));
        assert_eq!(check_name(b"a/"), Err(BadName::Slash));
        assert_eq!(check_name(b"a\0b"), Err(BadName::Nul));
    }

    #[test]
    fn refused_entries_leave_the_tree_and_the_rest_stays_in_order() {
        let mut tree = Tree {
            version: 1,
            nodes: vec![node(b"a"), node(b".."), node(b"b"), node(b"a"), node(b"x/y"), node(b"c")],
        };
        let rejected = check_names(&mut tree);
        let kept: Vec<&[u8]> = tree.nodes.iter().map(|n| n.name.as_slice()).collect();
        assert_eq!(kept, vec![&b"a"[..], b"b", b"c"]);
        assert_eq!(
            rejected,
            vec![
                Rejected { name: b"..".to_vec(), why: BadName::DotDot },
                Rejected { name: b"a".to_vec(), why: BadName::Duplicate },
                Rejected { name: b"x/y".to_vec(), why: BadName::Slash },
            ]
        );
    }
}
