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

pub fn load_tree(repo: &Repository, rt: &tokio::runtime::Handle, id: &Id) -> Result<Tree> {
    let bytes = read_blob(repo, rt, BlobKind::Tree, id)?;
    let tree: Tree =
        postcard::from_bytes(&bytes).with_context(|| format!("tree {} cannot be decoded", id.short()))?;
    if tree.version != 1 {
        anyhow::bail!("tree {} has unsupported version {}", id.short(), tree.version);
    }
    Ok(tree)
}

/// Visits every node below `root` depth-first, in name order, with its full path
/// (`/home/me/file`). Return `false` from `visit` to skip a directory's contents.
pub fn walk(
    repo: &Repository,
    rt: &tokio::runtime::Handle,
    root: &Id,
    visit: &mut dyn FnMut(&[u8], &format::Node) -> Result<bool>,
) -> Result<()> {
    fn go(
        repo: &Repository,
        rt: &tokio::runtime::Handle,
        id: &Id,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &format::Node) -> Result<bool>,
    ) -> Result<()> {
        let tree = load_tree(repo, rt, id)?;
        for node in &tree.nodes {
            let mut path = prefix.to_vec();
            path.push(b'/');
            path.extend_from_slice(&node.name);
            let descend = visit(&path, node)?;
            if descend && let Some(sub) = &node.subtree {
                go(repo, rt, sub, &path, visit)?;
            }
        }
        Ok(())
    }
    go(repo, rt, root, b"", visit)
}
