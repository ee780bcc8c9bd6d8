//! The WebDAV storage backend: a folder on a WebDAV server (Nextcloud, Apache mod_dav,
//! nginx, rclone serve webdav, ...), reached over wasi:http with optional basic auth.

mod dav;
mod store;

use cairn_plugin_sdk::{OptionSpec, PluginInfo};

use crate::store::{DavStore, DavUpload};

fn option(name: &str, required: bool, secret: bool, help: &str) -> OptionSpec {
    OptionSpec { name: name.into(), required, secret, help: help.into(), default_value: None }
}

fn info() -> PluginInfo {
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

cairn_plugin_sdk::export_store!(describe: info, open: DavStore::open, store: DavStore, upload: DavUpload);
