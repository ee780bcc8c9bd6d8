//! Forging repository content with the repository's key, for tests of what cairn does with
//! hostile data that authenticates: trees, packs, indexes and snapshots are built in test
//! code and written straight into an fs repository folder, named as `cairn::repo::format`
//! names them. The next command picks them up like another machine's work.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use cairn::crypto::{KeyFile, MasterKey};
use cairn::ids::Id;
use cairn::repo::format::{self, BlobKind, IndexFile, IndexPack, Node, NodeKind, PackEntry, Snapshot, Tree};
use serde_bytes::ByteBuf;

/// A repository folder and its unlocked master key; blobs added are kept until
/// [`Forge::write_pack`] (or [`Forge::snapshot`]) writes them as one pack with its index.
pub struct Forge {
    pub repo_dir: PathBuf,
    pub key: MasterKey,
    pending: Vec<(BlobKind, Id, Vec<u8>)>,
}

impl Forge {
    /// Unlocks the first key file of `repo_dir` that `password` opens.
    pub fn unlock(repo_dir: &Path, password: &str) -> Forge {
        for entry in std::fs::read_dir(repo_dir.join("keys")).expect("the repository has keys/") {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let Ok(file) = serde_json::from_slice::<KeyFile>(&bytes) else { continue };
            if let Ok(Some(key)) = file.unlock(password) {
                return Forge { repo_dir: repo_dir.to_path_buf(), key, pending: Vec::new() };
            }
        }
        panic!("no key file in {} opens with the test password", repo_dir.display());
    }

    /// Writes `bytes` as the object `name` (`data/ab/ab..`, `keys/..`), as the fs backend
    /// stores it.
    pub fn write_object(&self, name: &str, bytes: &[u8]) {
        let path = self.repo_dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// Adds a blob of `kind` holding `plaintext`; returns its id.
    pub fn blob(&mut self, kind: BlobKind, plaintext: &[u8]) -> Id {
        let id = self.key.blob_id(plaintext);
        if !self.pending.iter().any(|(k, i, _)| *k == kind && *i == id) {
            self.pending.push((kind, id, plaintext.to_vec()));
        }
        id
    }

    /// Adds file content as one chunk; returns its id (for [`file`]'s `content`).
    pub fn data(&mut self, bytes: &[u8]) -> Id {
        self.blob(BlobKind::Data, bytes)
    }

    /// Adds a tree holding `nodes` exactly as given (no sorting, no checks); returns its id.
    pub fn tree(&mut self, nodes: Vec<Node>) -> Id {
        let bytes = postcard::to_stdvec(&Tree { version: 1, nodes }).unwrap();
        self.blob(BlobKind::Tree, &bytes)
    }

    /// Writes the pending blobs as one pack, and an index for it. Nothing when none pend.
    pub fn write_pack(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut pack = Vec::new();
        let mut entries = Vec::new();
        for (kind, id, plain) in std::mem::take(&mut self.pending) {
            let sealed = format::encode_blob(&self.key, kind, &id, &plain, 0);
            entries.push(PackEntry {
                kind,
                id,
                offset: pack.len() as u64,
                length: sealed.len() as u32,
                raw_length: plain.len() as u32,
            });
            pack.extend_from_slice(&sealed);
        }
        pack.extend(format::pack_trailer(&self.key, &entries).unwrap());
        let pack_id = Id::of_bytes(&pack);
        self.write_object(&format::pack_name(&pack_id), &pack);
        let index = IndexFile {
            version: 1,
            packs: vec![IndexPack { id: pack_id, size: pack.len() as u64, entries }],
        };
        let sealed = format::seal_object(&self.key, format::AAD_INDEX, &index, false).unwrap();
        self.write_object(&format::index_name(&Id::of_bytes(&sealed)), &sealed);
    }

    /// Writes the pending blobs (see [`Forge::write_pack`]) and a snapshot of the tree
    /// `root`; returns the snapshot's id in hex (what `cairn restore` takes).
    pub fn snapshot(&mut self, root: Id) -> String {
        self.snapshot_with(root, |_| {})
    }

    /// [`Forge::snapshot`], with the snapshot's fields changed by `edit` first.
    pub fn snapshot_with(&mut self, root: Id, edit: impl FnOnce(&mut Snapshot)) -> String {
        self.write_pack();
        let mut snap = Snapshot {
            version: format::SNAPSHOT_VERSION,
            time_ns: 1_700_000_000_000_000_000,
            hostname: "forged".into(),
            username: "forged".into(),
            sources: vec![ByteBuf::from(b"/forged".to_vec())],
            tags: Vec::new(),
            parent: None,
            tree: root,
            partial: false,
            summary: Default::default(),
            program: "forge".into(),
            job: format::DEFAULT_JOB.into(),
        };
        edit(&mut snap);
        let sealed = format::seal_snapshot(&self.key, &snap).unwrap();
        let id = Id::of_bytes(&sealed);
        self.write_object(&format::snapshot_name(&id), &sealed);
        id.hex()
    }
}

/// A node with everything but the kind-specific parts filled in (mode 0644 or 0755, the
/// test's uid and gid, a fixed mtime).
fn node(name: &[u8], kind: NodeKind, mode: u32) -> Node {
    Node {
        name: ByteBuf::from(name.to_vec()),
        kind,
        mode,
        // SAFETY: getuid and getgid cannot fail.
        uid: unsafe { libc::getuid() },
        gid: unsafe { libc::getgid() },
        mtime_ns: 1_600_000_000_123_456_789,
        size: 0,
        content: Vec::new(),
        subtree: None,
        target: ByteBuf::new(),
    }
}

/// A file of one chunk (`content` from [`Forge::data`] of `bytes`).
pub fn file(forge: &mut Forge, name: &[u8], bytes: &[u8]) -> Node {
    let mut n = node(name, NodeKind::File, 0o644);
    n.size = bytes.len() as u64;
    if !bytes.is_empty() {
        n.content = vec![forge.data(bytes)];
    }
    n
}

pub fn dir(name: &[u8], subtree: Id) -> Node {
    let mut n = node(name, NodeKind::Dir, 0o755);
    n.subtree = Some(subtree);
    n
}

pub fn symlink(name: &[u8], target: &[u8]) -> Node {
    let mut n = node(name, NodeKind::Symlink, 0o777);
    n.target = ByteBuf::from(target.to_vec());
    n
}
