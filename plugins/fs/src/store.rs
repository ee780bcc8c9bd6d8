//! The folder store: object names map to files below `root`.
//!
//! Uploads are written to a hidden temporary file beside their final name
//! (`.NAME.cairn-upload-RANDOM`), synced, then renamed (or hard-linked, for `if-absent`)
//! into place, so an object is either absent or complete under its final name.

use std::cell::RefCell;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use cairn_plugin_sdk::{Capabilities, Error, IncompleteUpload, ListPage, ObjectInfo, check_name};

const UPLOAD_MARKER: &str = ".cairn-upload-";

pub struct FsStore {
    root: PathBuf,
    fsync: bool,
}

/// The wasi-libc number of EIO. wasmtime reports a failed write to a file stream (a full
/// disk among others) and every error it has no WASI code for (a read-only file system,
/// a quota) as this one generic code, so the plugin cannot tell those apart; the host
/// looks at the granted folder itself when a write fails (see `host/src/backend.rs`).
const WASI_EIO: i32 = 29;

/// Maps an I/O error on `place` (a file or folder of the repository, full path) to the
/// contract's error variant, with a message a person understands: what happened, where.
/// No bare error numbers: each code the plugin can receive is said in words.
pub fn io_error(place: &Path, e: io::Error) -> Error {
    use io::ErrorKind as K;
    let place = place.display();
    let permanent = |what: &str| Error::Other(format!("{place}: {what}"));
    match e.kind() {
        K::NotFound => Error::NotFound(format!("{place}: no such file or folder")),
        K::AlreadyExists => Error::AlreadyExists(format!("{place}: already exists")),
        K::PermissionDenied => Error::PermissionDenied(format!(
            "{place}: permission denied (the owner or mode of the repository folder does not let cairn write here)"
        )),
        K::StorageFull => permanent("no space left on the device that holds the repository folder"),
        K::QuotaExceeded => permanent("disk quota exceeded on the repository folder"),
        K::ReadOnlyFilesystem => permanent("the repository folder is on a read-only file system"),
        K::InvalidFilename => {
            Error::InvalidName(format!("{place}: name too long for the repository's file system"))
        }
        K::NotADirectory => permanent("a part of this path is a file where a folder was expected"),
        K::IsADirectory => permanent("this is a folder where a file was expected"),
        K::DirectoryNotEmpty => permanent("the folder is not empty"),
        K::FileTooLarge => permanent("file too large for the repository's file system"),
        K::TooManyLinks => permanent("too many links to this file"),
        K::CrossesDevices => permanent("the temporary file and its final name are on different file systems"),
        K::OutOfMemory => Error::Transient(format!("{place}: out of memory")),
        K::Interrupted | K::TimedOut | K::WouldBlock => Error::Transient(format!("{place}: {}", e.kind())),
        _ if e.raw_os_error() == Some(WASI_EIO) => permanent(
            "input/output error (the sandbox gives no detail: the disk may be full or read-only, or failing)",
        ),
        kind => permanent(&kind.to_string()),
    }
}

impl FsStore {
    pub fn open(options: &[(String, String)]) -> Result<(FsStore, Capabilities), Error> {
        let path = cairn_plugin_sdk::option(options, "path")
            .ok_or_else(|| Error::InvalidConfig("option `path` is required".into()))?;
        let fsync = match cairn_plugin_sdk::option(options, "fsync").unwrap_or("true") {
            "true" => true,
            "false" => false,
            other => {
                return Err(Error::InvalidConfig(format!(
                    "option `fsync` must be true or false, not {other:?}"
                )));
            }
        };
        let root = PathBuf::from(path);
        let meta = fs::metadata(&root).map_err(|e| io_error(&root, e))?;
        if !meta.is_dir() {
            return Err(Error::InvalidConfig(format!("{path} is not a folder")));
        }
        let caps = Capabilities {
            ranged_reads: true,
            atomic_put: true,
            conditional_put: true,
            max_object_size: None,
            preferred_concurrency: 2,
        };
        Ok((FsStore { root, fsync }, caps))
    }

    fn path_of(&self, name: &str) -> Result<PathBuf, Error> {
        check_name(name)?;
        Ok(self.root.join(name))
    }

    /// All complete objects below `prefix`, sorted by name.
    fn all_objects(&self, prefix: &str) -> Result<Vec<ObjectInfo>, Error> {
        let mut out = Vec::new();
        walk(&self.root, &self.root, prefix, &mut |rel, meta| {
            if !rel.rsplit('/').next().unwrap_or("").starts_with('.') {
                out.push(ObjectInfo { name: rel.to_string(), size: meta.len() });
            }
        })?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn list(&self, prefix: &str, cursor: Option<&str>, max: u32) -> Result<ListPage, Error> {
        let all = self.all_objects(prefix)?;
        // The cursor is the last name of the previous page: stateless, so any instance can
        // continue a listing another instance started.
        let start = match cursor {
            Some(c) => all.partition_point(|o| o.name.as_str() <= c),
            None => 0,
        };
        let max = max.max(1) as usize;
        let objects: Vec<ObjectInfo> = all.into_iter().skip(start).take(max).collect();
        let next_cursor = if objects.len() == max && start + max < usize::MAX {
            objects.last().map(|o| o.name.clone())
        } else {
            None
        };
        Ok(ListPage { objects, next_cursor })
    }

    pub fn stat(&self, name: &str) -> Result<ObjectInfo, Error> {
        let path = self.path_of(name)?;
        let meta = fs::metadata(&path).map_err(|e| io_error(&path, e))?;
        Ok(ObjectInfo { name: name.to_string(), size: meta.len() })
    }

    pub fn read(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
        let path = self.path_of(name)?;
        let mut f = File::open(&path).map_err(|e| io_error(&path, e))?;
        let size = f.metadata().map_err(|e| io_error(&path, e))?.len();
        let start = offset.min(size);
        let want = len.min(size - start);
        f.seek(SeekFrom::Start(start)).map_err(|e| io_error(&path, e))?;
        let mut buf = Vec::with_capacity(want as usize);
        f.take(want).read_to_end(&mut buf).map_err(|e| io_error(&path, e))?;
        Ok(buf)
    }

    pub fn start_upload(&self, name: &str, size: u64, if_absent: bool) -> Result<FsUpload, Error> {
        let path = self.path_of(name)?;
        let parent = path.parent().expect("object path has a parent").to_path_buf();
        fs::create_dir_all(&parent).map_err(|e| io_error(&parent, e))?;
        if if_absent && fs::symlink_metadata(&path).is_ok() {
            return Err(Error::AlreadyExists(name.to_string()));
        }
        let base = path.file_name().unwrap().to_string_lossy().into_owned();
        let tmp = parent.join(format!(".{base}{UPLOAD_MARKER}{:016x}", random_u64()));
        let file =
            OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(|e| io_error(&tmp, e))?;
        Ok(FsUpload {
            state: RefCell::new(Some(Pending { file, written: 0 })),
            tmp,
            path,
            name: name.to_string(),
            size,
            if_absent,
            fsync: self.fsync,
        })
    }

    pub fn list_incomplete(&self, prefix: &str) -> Result<Vec<IncompleteUpload>, Error> {
        let mut out = Vec::new();
        // Temporary files live beside their final name, so walk what could hold that name.
        walk(&self.root, &self.root, prefix_dir(prefix), &mut |rel, meta| {
            let (dir, file) = match rel.rsplit_once('/') {
                Some((d, f)) => (format!("{d}/"), f),
                None => (String::new(), rel),
            };
            if let Some(stem) = file.strip_prefix('.')
                && let Some((base, _)) = stem.split_once(UPLOAD_MARKER)
            {
                let name = format!("{dir}{base}");
                if name.starts_with(prefix) {
                    out.push(IncompleteUpload { id: rel.to_string(), name, size: meta.len() });
                }
            }
        })?;
        Ok(out)
    }

    pub fn abort_incomplete(&self, id: &str) -> Result<(), Error> {
        let file = id.rsplit('/').next().unwrap_or("");
        let valid = !id.split('/').any(|s| s.is_empty() || s == "." || s == "..")
            && file.starts_with('.')
            && file.contains(UPLOAD_MARKER);
        if !valid {
            return Err(Error::InvalidName(format!("{id:?} is not an unfinished upload")));
        }
        let path = self.root.join(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(&path, e)),
        }
    }

    pub fn delete(&self, names: &[String]) -> Result<(), Error> {
        for name in names {
            let path = self.path_of(name)?;
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&path, e)),
            }
        }
        Ok(())
    }
}

/// The folder part of a listing prefix (`data/ab/c` -> `data/ab/`), so a walk can prune.
fn prefix_dir(prefix: &str) -> &str {
    match prefix.rfind('/') {
        Some(i) => &prefix[..=i],
        None => "",
    }
}

/// Visits every regular file below `dir` whose relative name starts with `prefix`, pruning
/// folders that cannot contain such names. A missing folder is an empty listing.
fn walk(
    root: &Path,
    dir: &Path,
    prefix: &str,
    visit: &mut dyn FnMut(&str, &fs::Metadata),
) -> Result<(), Error> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        let path = entry.path();
        let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let ft = entry.file_type().map_err(|e| io_error(&path, e))?;
        if ft.is_dir() {
            let as_dir = format!("{rel}/");
            if as_dir.starts_with(prefix) || prefix.starts_with(&as_dir) {
                walk(root, &path, prefix, visit)?;
            }
        } else if ft.is_file() && rel.starts_with(prefix) {
            let meta = entry.metadata().map_err(|e| io_error(&path, e))?;
            visit(&rel, &meta);
        }
    }
    Ok(())
}

fn random_u64() -> u64 {
    // RandomState is seeded from wasi:random, which is all a unique temporary name needs.
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

struct Pending {
    file: File,
    written: u64,
}

/// One upload in progress. Dropping it without `finish` removes the temporary file.
pub struct FsUpload {
    state: RefCell<Option<Pending>>,
    tmp: PathBuf,
    path: PathBuf,
    name: String,
    size: u64,
    if_absent: bool,
    fsync: bool,
}

impl FsUpload {
    pub fn write(&self, data: &[u8]) -> Result<(), Error> {
        let mut state = self.state.borrow_mut();
        let p =
            state.as_mut().ok_or_else(|| Error::Other(format!("{}: upload already closed", self.name)))?;
        if p.written + data.len() as u64 > self.size {
            return Err(Error::Other(format!(
                "{}: more bytes written than the announced {}",
                self.name, self.size
            )));
        }
        p.file.write_all(data).map_err(|e| io_error(&self.tmp, e))?;
        p.written += data.len() as u64;
        Ok(())
    }

    pub fn finish(&self) -> Result<(), Error> {
        let p = self
            .state
            .borrow_mut()
            .take()
            .ok_or_else(|| Error::Other(format!("{}: upload already closed", self.name)))?;
        let res = self.publish(p);
        if res.is_err() {
            let _ = fs::remove_file(&self.tmp);
        }
        res
    }

    fn publish(&self, p: Pending) -> Result<(), Error> {
        if p.written != self.size {
            return Err(Error::Other(format!(
                "{}: {} bytes written, {} announced",
                self.name, p.written, self.size
            )));
        }
        if self.fsync {
            p.file.sync_all().map_err(|e| io_error(&self.tmp, e))?;
        }
        drop(p.file);
        if self.if_absent {
            // link() fails if the target exists: an atomic create-if-absent.
            fs::hard_link(&self.tmp, &self.path).map_err(|e| io_error(&self.path, e))?;
            let _ = fs::remove_file(&self.tmp);
        } else {
            fs::rename(&self.tmp, &self.path).map_err(|e| io_error(&self.path, e))?;
        }
        if self.fsync
            && let Some(parent) = self.path.parent()
            && let Ok(dir) = File::open(parent)
        {
            // Make the new directory entry durable too; not every filesystem allows it.
            let _ = dir.sync_all();
        }
        Ok(())
    }

    pub fn abort(&self) {
        if self.state.borrow_mut().take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

impl Drop for FsUpload {
    fn drop(&mut self) {
        self.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(e: Error) -> (&'static str, String) {
        match e {
            Error::NotFound(m) => ("not-found", m),
            Error::AlreadyExists(m) => ("already-exists", m),
            Error::PermissionDenied(m) => ("permission-denied", m),
            Error::InvalidName(m) => ("invalid-name", m),
            Error::Transient(m) => ("transient", m),
            Error::Other(m) => ("other", m),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn every_filesystem_error_is_said_in_words_with_the_repository_path() {
        use io::ErrorKind as K;
        let at = Path::new("/backups/repo/data/ab/.ab12.cairn-upload-1");
        let cases = [
            (K::StorageFull, "other", "no space left on the device that holds the repository folder"),
            (K::QuotaExceeded, "other", "disk quota exceeded"),
            (K::ReadOnlyFilesystem, "other", "read-only file system"),
            (K::PermissionDenied, "permission-denied", "permission denied"),
            (K::InvalidFilename, "invalid-name", "name too long"),
            (K::NotADirectory, "other", "a file where a folder was expected"),
            (K::NotFound, "not-found", "no such file or folder"),
            (K::TimedOut, "transient", "timed out"),
        ];
        for (kind, variant, words) in cases {
            let (v, message) = said(io_error(at, io::Error::from(kind)));
            assert_eq!(v, variant, "{kind:?}");
            assert!(message.starts_with("/backups/repo/data/ab/.ab12.cairn-upload-1: "), "{message}");
            assert!(message.contains(words), "{kind:?}: {message}");
            assert!(!message.contains("os error"), "{message}");
        }
    }
}
