//! Bindings for the `cairn:storage` WIT package, shared by every backend in this workspace.
//!
//! A backend implements [`Guest`] and [`GuestUpload`] and exports itself with
//! `cairn_plugin_sdk::export!(MyBackend);`. See `docs/plugins.md`.

wit_bindgen::generate!({
    world: "storage-backend",
    path: "../../wit",
    pub_export_macro: true,
    default_bindings_module: "cairn_plugin_sdk",
});

pub mod http;

pub use cairn::storage::types::{
    Capabilities, Error, IncompleteUpload, ListPage, ObjectInfo, OptionSpec, PluginInfo, RateLimit,
};
pub use exports::cairn::storage::backend::{Guest, GuestUpload, Upload};

impl Error {
    /// A short, human readable description of the error.
    pub fn message(&self) -> &str {
        match self {
            Error::NotFound(m)
            | Error::AlreadyExists(m)
            | Error::PermissionDenied(m)
            | Error::InvalidConfig(m)
            | Error::InvalidName(m)
            | Error::Unsupported(m)
            | Error::Transient(m)
            | Error::Other(m) => m,
            Error::RateLimited(r) => &r.message,
        }
    }
}

/// Convenience for reading an option from the `(name, value)` list given to `open`.
pub fn option<'a>(options: &'a [(String, String)], name: &str) -> Option<&'a str> {
    options.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}
