//! `cairn dump SNAPSHOT PATH`: a file's content to stdout, or a folder as a tar stream
//! (modes, owners, times to the nanosecond in PAX headers, symlinks, FIFOs).
//!
//! Only the folders on the way to PATH and below it are read, and only the data of the
//! files dumped. Names are checked one path component each when their tree is loaded, so
//! a tar entry never leaves the folder it is extracted into.

use std::io::{IsTerminal, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Result, anyhow, bail};

use super::Ctx;
use super::browse;
use crate::engine::tree::{TreeReader, read_blob};
use crate::ids::Id;
use crate::repo::Repository;
use crate::repo::format::{BlobKind, Node, NodeKind};
use crate::untrusted::escape_bytes;

pub fn run(ctx: &Ctx, spec: &str, path: &Path) -> Result<()> {
    let (config, repo) = browse::open(ctx)?;
    let (id, snap) = browse::snapshot(&config, &repo, spec)?;
    let reader = TreeReader::new(&repo, ctx.rt.handle());
    let wanted = path.as_os_str().as_bytes();
    let parts: Vec<&[u8]> = wanted.split(|b| *b == b'/').filter(|p| !p.is_empty()).collect();

    // Walk down to PATH; the root is a folder without a node.
    let mut tree = snap.tree;
    let mut node = None;
    for part in &parts {
        let Some(sub) = node.as_ref().map_or(Some(tree), |n: &Node| n.subtree) else {
            bail!("{} is not a folder in snapshot {}", escape_bytes(wanted), id.short());
        };
        tree = sub;
        let found = reader.load(&tree)?.nodes.into_iter().find(|n| n.name.as_slice() == *part);
        node = Some(found.ok_or_else(|| {
            anyhow!("snapshot {} has no {} (see `cairn ls {}`)", id.short(), escape_bytes(wanted), id.short())
        })?);
    }
    let stdout = std::io::stdout();
    match &node {
        Some(n) if n.kind == NodeKind::File => {
            let mut out = stdout.lock();
            let mut content = Content::new(&repo, ctx.rt.handle(), n);
            std::io::copy(&mut content, &mut out)?;
            out.flush()?;
        }
        Some(n) if n.kind != NodeKind::Dir => {
            bail!(
                "{} is a {} in snapshot {}; dump takes a file or a folder",
                escape_bytes(wanted),
                browse::kind_name(n.kind),
                id.short()
            )
        }
        _ => {
            if stdout.is_terminal() {
                bail!(
                    "refusing to write a tar stream to a terminal; redirect it to a file or pipe it to `tar x`"
                );
            }
            let root = node.as_ref().map_or(Some(snap.tree), |n| n.subtree).ok_or_else(|| {
                anyhow!("the folder {} in snapshot {} has no contents", escape_bytes(wanted), id.short())
            })?;
            let mut tar = tar::Builder::new(std::io::BufWriter::new(stdout.lock()));
            tar.follow_symlinks(false);
            // The folder itself is the archive's top entry, named by its last component.
            let top: Vec<u8> = parts.last().map(|p| p.to_vec()).unwrap_or_default();
            if let Some(n) = &node {
                append(&mut tar, &repo, ctx.rt.handle(), &top, n)?;
            }
            reader.walk(&root, &mut |path, n| {
                let rel = [top.as_slice(), path].concat();
                let rel = rel.strip_prefix(b"/").unwrap_or(&rel);
                append(&mut tar, &repo, ctx.rt.handle(), rel, n)?;
                Ok(true)
            })?;
            tar.into_inner()?.flush()?;
        }
    }
    Ok(())
}

/// Appends one node to the archive.
fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    repo: &Repository,
    rt: &tokio::runtime::Handle,
    path: &[u8],
    node: &Node,
) -> Result<()> {
    let path = Path::new(std::ffi::OsStr::from_bytes(path));
    let mut header = tar::Header::new_ustar();
    header.set_mode(node.mode & 0o7777);
    header.set_uid(node.uid as u64);
    header.set_gid(node.gid as u64);
    let secs = node.mtime_ns.div_euclid(1_000_000_000);
    let nanos = node.mtime_ns.rem_euclid(1_000_000_000);
    header.set_mtime(secs.max(0) as u64);
    // The exact time, for extractors that read PAX headers (GNU tar, bsdtar).
    let mtime = format!("{secs}.{nanos:09}");
    tar.append_pax_extensions([("mtime", mtime.as_bytes())])?;
    match node.kind {
        NodeKind::File => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(node.size);
            tar.append_data(&mut header, path, Content::new(repo, rt, node))?;
        }
        NodeKind::Dir => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            tar.append_data(&mut header, path, std::io::empty())?;
        }
        NodeKind::Symlink => {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            let target = Path::new(std::ffi::OsStr::from_bytes(&node.target));
            tar.append_link(&mut header, path, target)?;
        }
        NodeKind::Fifo => {
            header.set_entry_type(tar::EntryType::Fifo);
            header.set_size(0);
            tar.append_data(&mut header, path, std::io::empty())?;
        }
    }
    Ok(())
}

/// A file's content, chunk by chunk, each read and authenticated when reached. It must add
/// up to the size the snapshot gives (the tar header was written with it): a snapshot whose
/// chunks say otherwise is reported, not dumped short or long.
struct Content<'a> {
    repo: &'a Repository,
    rt: &'a tokio::runtime::Handle,
    chunks: std::slice::Iter<'a, Id>,
    size: u64,
    given: u64,
    buf: Vec<u8>,
    at: usize,
}

impl<'a> Content<'a> {
    fn new(repo: &'a Repository, rt: &'a tokio::runtime::Handle, node: &'a Node) -> Content<'a> {
        Content { repo, rt, chunks: node.content.iter(), size: node.size, given: 0, buf: Vec::new(), at: 0 }
    }
}

impl Read for Content<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.buf.len() {
            let Some(id) = self.chunks.next() else {
                if self.given != self.size {
                    return Err(std::io::Error::other(format!(
                        "the snapshot says {} bytes but its chunks hold {}; run `cairn verify`",
                        self.size, self.given
                    )));
                }
                return Ok(0);
            };
            self.buf = read_blob(self.repo, self.rt, BlobKind::Data, id).map_err(std::io::Error::other)?;
            self.at = 0;
            self.given += self.buf.len() as u64;
            if self.given > self.size {
                return Err(std::io::Error::other(format!(
                    "the snapshot says {} bytes but its chunks hold more; run `cairn verify`",
                    self.size
                )));
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
