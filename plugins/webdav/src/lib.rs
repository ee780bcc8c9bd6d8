//! The WebDAV storage backend: a folder on a WebDAV server (Nextcloud, Apache mod_dav,
//! nginx, rclone serve webdav, ...), reached over wasi:http with optional basic auth.

mod dav;
mod store;

use std::cell::RefCell;

use cairn_plugin_sdk::{
    Capabilities, Error, Guest, GuestUpload, IncompleteUpload, ListPage, ObjectInfo, OptionSpec, PluginInfo,
    Upload,
};

use crate::store::{DavStore, DavUpload};

thread_local! {
    static STORE: RefCell<Option<DavStore>> = const { RefCell::new(None) };
}

fn with_store<T>(f: impl FnOnce(&DavStore) -> Result<T, Error>) -> Result<T, Error> {
    STORE.with(|s| match s.borrow().as_ref() {
        Some(store) => f(store),
        None => Err(Error::Other("open was not called".into())),
    })
}

fn option(name: &str, required: bool, secret: bool, help: &str) -> OptionSpec {
    OptionSpec { name: name.into(), required, secret, help: help.into(), default_value: None }
}

struct Backend;

impl Guest for Backend {
    type Upload = DavUpload;

    fn describe() -> PluginInfo {
        PluginInfo {
            name: "webdav".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "A folder on a WebDAV server".into(),
            options: vec![
                option(
                    "url",
                    true,
                    false,
                    "URL of the WebDAV folder holding the repository, e.g. https://dav.example.com/backups \
                     (created if missing; grant its origin in repository.grants.hosts)",
                ),
                option("username", false, false, "User name for HTTP basic authentication"),
                option("password", false, true, "Password for HTTP basic authentication"),
            ],
        }
    }

    fn open(options: Vec<(String, String)>) -> Result<Capabilities, Error> {
        let (store, caps) = DavStore::open(&options)?;
        STORE.with(|s| *s.borrow_mut() = Some(store));
        Ok(caps)
    }

    fn list(prefix: String, cursor: Option<String>, max: u32) -> Result<ListPage, Error> {
        with_store(|s| s.list(&prefix, cursor.as_deref(), max))
    }

    fn stat(name: String) -> Result<ObjectInfo, Error> {
        with_store(|s| s.stat(&name))
    }

    fn read(name: String, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
        with_store(|s| s.read(&name, offset, len))
    }

    fn start_upload(name: String, size: u64, if_absent: bool) -> Result<Upload, Error> {
        with_store(|s| s.start_upload(&name, size, if_absent)).map(Upload::new)
    }

    fn list_incomplete(prefix: String) -> Result<Vec<IncompleteUpload>, Error> {
        with_store(|s| s.list_incomplete(&prefix))
    }

    fn abort_incomplete(id: String) -> Result<(), Error> {
        with_store(|s| s.abort_incomplete(&id))
    }

    fn delete(names: Vec<String>) -> Result<(), Error> {
        with_store(|s| s.delete(&names))
    }
}

impl GuestUpload for DavUpload {
    fn write(&self, data: Vec<u8>) -> Result<(), Error> {
        DavUpload::write(self, &data)
    }
    fn finish(&self) -> Result<(), Error> {
        DavUpload::finish(self)
    }
    fn abort(&self) {
        DavUpload::abort(self)
    }
}

cairn_plugin_sdk::export!(Backend);
