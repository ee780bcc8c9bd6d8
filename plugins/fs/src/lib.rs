//! The local-folder storage backend, embedded in the cairn binary as its default.
//!
//! The host grants this component exactly one folder (the `path` option), preopened at the
//! same path, so the plugin addresses it with the path the user wrote in the config.

// The chaos test plugin reuses this module with `#[path]`, so it stays free of exports.
mod store;

mod component {
    use cairn_plugin_sdk::{OptionSpec, PluginInfo};

    use crate::store::{FsStore, FsUpload};

    fn info() -> PluginInfo {
        PluginInfo {
            name: "fs".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "A folder on a local or mounted filesystem".into(),
            options: vec![
                OptionSpec {
                    name: "path".into(),
                    required: true,
                    secret: false,
                    help: "Absolute path of the repository folder".into(),
                    default_value: None,
                },
                OptionSpec {
                    name: "fsync".into(),
                    required: false,
                    secret: false,
                    help: "Sync every object to disk before it becomes visible (true/false)".into(),
                    default_value: Some("true".into()),
                },
            ],
        }
    }

    cairn_plugin_sdk::export_store!(describe: info, open: FsStore::open, store: FsStore, upload: FsUpload);
}
