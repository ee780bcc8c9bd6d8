//! A cairn storage backend in one file: objects are files below a folder.
use std::cell::RefCell;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use cairn_plugin_sdk::{
    Capabilities, Error, Guest, GuestUpload, IncompleteUpload, ListPage, ObjectInfo, OptionSpec, PluginInfo,
    Upload,
};

thread_local! {
    /// Set by `open`; every other call uses it.
    static ROOT: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

fn root() -> Result<PathBuf, Error> {
    ROOT.with(|r| r.borrow().clone()).ok_or_else(|| Error::Other("open was not called".into()))
}

fn io(e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound(e.to_string()),
        std::io::ErrorKind::PermissionDenied => Error::PermissionDenied(e.to_string()),
        _ => Error::Other(e.to_string()),
    }
}

/// Files below `dir`, as (name relative to the root, size), skipping temporary files.
fn walk(root: &PathBuf, dir: &PathBuf, out: &mut Vec<ObjectInfo>) -> Result<(), Error> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    for entry in entries {
        let path = entry.map_err(io)?.path();
        if path.is_dir() {
            walk(root, &path, out)?;
        } else if !path.file_name().unwrap().to_string_lossy().starts_with('.') {
            let name = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            out.push(ObjectInfo { name, size: fs::metadata(&path).map_err(io)?.len() });
        }
    }
    Ok(())
}

struct Example;

/// An upload: a hidden temporary file, renamed into place by `finish`.
pub struct Pending {
    file: RefCell<Option<File>>,
    tmp: PathBuf,
    path: PathBuf,
}

impl Guest for Example {
    type Upload = Pending;

    fn describe() -> PluginInfo {
        let path = OptionSpec {
            name: "path".into(),
            required: true,
            secret: false,
            help: "The folder to store the repository in (grant it in repository.grants.dirs)".into(),
            default_value: None,
        };
        PluginInfo {
            name: "example".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "The walk-through backend: a folder".into(),
            options: vec![path],
        }
    }

    fn open(options: Vec<(String, String)>) -> Result<Capabilities, Error> {
        let path =
            cairn_plugin_sdk::option(&options, "path").ok_or_else(|| Error::InvalidConfig("path".into()))?;
        fs::metadata(path).map_err(io)?;
        ROOT.with(|r| *r.borrow_mut() = Some(PathBuf::from(path)));
        Ok(Capabilities {
            ranged_reads: true,
            atomic_put: true,
            conditional_put: false,
            max_object_size: None,
            preferred_concurrency: 2,
        })
    }

    fn list(prefix: String, cursor: Option<String>, max: u32) -> Result<ListPage, Error> {
        let root = root()?;
        let mut all = Vec::new();
        walk(&root, &root, &mut all)?;
        all.retain(|o| o.name.starts_with(&prefix) && cursor.as_ref().is_none_or(|c| &o.name > c));
        all.sort_by(|a, b| a.name.cmp(&b.name));
        let more = all.len() > max as usize;
        all.truncate(max as usize);
        let next_cursor = if more { all.last().map(|o| o.name.clone()) } else { None };
        Ok(ListPage { objects: all, next_cursor })
    }

    fn stat(name: String) -> Result<ObjectInfo, Error> {
        let size = fs::metadata(root()?.join(&name)).map_err(io)?.len();
        Ok(ObjectInfo { name, size })
    }

    fn read(name: String, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
        let mut file = File::open(root()?.join(&name)).map_err(io)?;
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut out = Vec::new();
        file.take(len).read_to_end(&mut out).map_err(io)?;
        Ok(out)
    }

    fn start_upload(name: String, _size: u64, _if_absent: bool) -> Result<Upload, Error> {
        let path = root()?.join(&name);
        fs::create_dir_all(path.parent().unwrap()).map_err(io)?;
        let base = path.file_name().unwrap().to_string_lossy().into_owned();
        let tmp = path.with_file_name(format!(".{base}.cairn-upload-example"));
        let file = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp).map_err(io)?;
        Ok(Upload::new(Pending { file: RefCell::new(Some(file)), tmp, path }))
    }

    fn list_incomplete(_prefix: String) -> Result<Vec<IncompleteUpload>, Error> {
        Ok(Vec::new())
    }

    fn abort_incomplete(_id: String) -> Result<(), Error> {
        Ok(())
    }

    fn delete(names: Vec<String>) -> Result<(), Error> {
        for name in names {
            match fs::remove_file(root()?.join(&name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
                _ => {}
            }
        }
        Ok(())
    }
}

impl GuestUpload for Pending {
    fn write(&self, data: Vec<u8>) -> Result<(), Error> {
        let mut file = self.file.borrow_mut();
        file.as_mut().ok_or_else(|| Error::Other("upload closed".into()))?.write_all(&data).map_err(io)
    }

    fn finish(&self) -> Result<(), Error> {
        let file = self.file.borrow_mut().take().ok_or_else(|| Error::Other("upload closed".into()))?;
        file.sync_all().map_err(io)?;
        fs::rename(&self.tmp, &self.path).map_err(io)
    }

    fn abort(&self) {
        if self.file.borrow_mut().take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

cairn_plugin_sdk::export!(Example);
