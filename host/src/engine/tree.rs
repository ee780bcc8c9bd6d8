//! Reading blobs back: locate them through the journal, fetch with a ranged read, verify.

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

/// Tree packs up to this size are fetched whole; at most this many are kept.
const WHOLE_PACK_MAX: u64 = 16 << 20;
const CACHED_PACKS: usize = 4;

impl<'a> TreeReader<'a> {
    pub fn new(repo: &'a Repository, rt: &'a tokio::runtime::Handle) -> TreeReader<'a> {
        TreeReader { repo, rt, packs: Default::default() }
    }

    pub fn load(&self, id: &Id) -> Result<Tree> {
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
        if packs.len() >= CACHED_PACKS {
            packs.pop_front();
        }
        packs.push_back((*pack, bytes.clone()));
        Ok(Some(bytes))
    }

    /// Visits every node below `root` depth-first, in name order, with its full path
    /// (`/home/me/file`). Return `false` from `visit` to skip a directory's contents.
    pub fn walk(&self, root: &Id, visit: &mut dyn FnMut(&[u8], &format::Node) -> Result<bool>) -> Result<()> {
        self.walk_from(root, b"", visit)
    }

    fn walk_from(
        &self,
        id: &Id,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &format::Node) -> Result<bool>,
    ) -> Result<()> {
        let tree = self.load(id)?;
        for node in &tree.nodes {
            let mut path = prefix.to_vec();
            path.push(b'/');
            path.extend_from_slice(&node.name);
            let descend = visit(&path, node)?;
            if descend && let Some(sub) = &node.subtree {
                self.walk_from(sub, &path, visit)?;
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
