//! The s3 storage backend (work in progress).

use cairn_plugin_sdk::{
    Capabilities, Error, Guest, GuestUpload, IncompleteUpload, ListPage, ObjectInfo, PluginInfo, Upload,
};

struct Backend;

pub struct PendingUpload;

fn todo() -> Error {
    Error::Unsupported("not implemented yet".into())
}

impl Guest for Backend {
    type Upload = PendingUpload;
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "s3".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: String::new(),
            options: vec![],
        }
    }
    fn open(_: Vec<(String, String)>) -> Result<Capabilities, Error> {
        Err(todo())
    }
    fn list(_: String, _: Option<String>, _: u32) -> Result<ListPage, Error> {
        Err(todo())
    }
    fn stat(_: String) -> Result<ObjectInfo, Error> {
        Err(todo())
    }
    fn read(_: String, _: u64, _: u64) -> Result<Vec<u8>, Error> {
        Err(todo())
    }
    fn start_upload(_: String, _: u64, _: bool) -> Result<Upload, Error> {
        Err(todo())
    }
    fn list_incomplete(_: String) -> Result<Vec<IncompleteUpload>, Error> {
        Err(todo())
    }
    fn abort_incomplete(_: String) -> Result<(), Error> {
        Err(todo())
    }
    fn delete(_: Vec<String>) -> Result<(), Error> {
        Err(todo())
    }
}

impl GuestUpload for PendingUpload {
    fn write(&self, _: Vec<u8>) -> Result<(), Error> {
        Err(todo())
    }
    fn finish(&self) -> Result<(), Error> {
        Err(todo())
    }
    fn abort(&self) {}
}

cairn_plugin_sdk::export!(Backend);
