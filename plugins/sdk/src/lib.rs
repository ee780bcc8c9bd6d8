//! Bindings for the `cairn:storage` WIT package, shared by every backend in this workspace.
//!
//! A backend implements [`Guest`] and [`GuestUpload`] and exports itself with
//! `cairn_plugin_sdk::export!(MyBackend);`, or, when it keeps its state in a value built by
//! `open`, has [`export_store!`] write those implementations. See `docs/plugins.md`.

wit_bindgen::generate!({
    world: "storage-backend",
    path: "../../wit",
    pub_export_macro: true,
    default_bindings_module: "cairn_plugin_sdk",
});

pub mod http;
#[doc(hidden)]
pub mod slot;

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

/// Whether `segment` is made of `[A-Za-z0-9._-]` and not empty.
pub fn valid_segment(segment: &str) -> bool {
    !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Whether `name` is an object name of the contract: relative, '/'-separated valid segments,
/// none starting with a dot (that keeps `..` and backends' temporary files out of the
/// namespace).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.split('/').all(|seg| valid_segment(seg) && !seg.starts_with('.'))
}

/// [`valid_name`] as the contract's `invalid-name` error.
pub fn check_name(name: &str) -> Result<(), Error> {
    if valid_name(name) { Ok(()) } else { Err(Error::InvalidName(format!("invalid object name {name:?}"))) }
}

/// Exports a backend whose state is a value built by `open`, kept for the later calls.
///
/// `store`'s inherent methods do the work, with the signatures of the WIT functions taking
/// borrowed arguments: `list(&self, &str, Option<&str>, u32)`, `stat(&self, &str)`,
/// `read(&self, &str, u64, u64)`, `start_upload(&self, &str, u64, bool) -> upload`,
/// `list_incomplete(&self, &str)`, `abort_incomplete(&self, &str)`, `delete(&self, &[String])`;
/// and `upload`'s: `write(&self, &[u8])`, `finish(&self)`, `abort(&self)`. Calls before
/// `open` fail with an error.
///
/// ```ignore
/// cairn_plugin_sdk::export_store!(describe: info, open: MyStore::open, store: MyStore, upload: MyUpload);
/// ```
#[macro_export]
macro_rules! export_store {
    (describe: $describe:path, open: $open:path, store: $store:ty, upload: $upload:ty $(,)?) => {
        struct __CairnStorage;

        impl $crate::Guest for __CairnStorage {
            type Upload = $upload;

            fn describe() -> $crate::PluginInfo {
                $describe()
            }

            fn open(options: Vec<(String, String)>) -> Result<$crate::Capabilities, $crate::Error> {
                let (store, caps): ($store, $crate::Capabilities) = $open(&options)?;
                $crate::slot::set(store);
                Ok(caps)
            }

            fn list(
                prefix: String,
                cursor: Option<String>,
                max: u32,
            ) -> Result<$crate::ListPage, $crate::Error> {
                $crate::slot::with(|s: &$store| s.list(&prefix, cursor.as_deref(), max))
            }

            fn stat(name: String) -> Result<$crate::ObjectInfo, $crate::Error> {
                $crate::slot::with(|s: &$store| s.stat(&name))
            }

            fn read(name: String, offset: u64, len: u64) -> Result<Vec<u8>, $crate::Error> {
                $crate::slot::with(|s: &$store| s.read(&name, offset, len))
            }

            fn start_upload(
                name: String,
                size: u64,
                if_absent: bool,
            ) -> Result<$crate::Upload, $crate::Error> {
                $crate::slot::with(|s: &$store| s.start_upload(&name, size, if_absent))
                    .map($crate::Upload::new)
            }

            fn list_incomplete(prefix: String) -> Result<Vec<$crate::IncompleteUpload>, $crate::Error> {
                $crate::slot::with(|s: &$store| s.list_incomplete(&prefix))
            }

            fn abort_incomplete(id: String) -> Result<(), $crate::Error> {
                $crate::slot::with(|s: &$store| s.abort_incomplete(&id))
            }

            fn delete(names: Vec<String>) -> Result<(), $crate::Error> {
                $crate::slot::with(|s: &$store| s.delete(&names))
            }
        }

        impl $crate::GuestUpload for $upload {
            fn write(&self, data: Vec<u8>) -> Result<(), $crate::Error> {
                <$upload>::write(self, &data)
            }

            fn finish(&self) -> Result<(), $crate::Error> {
                <$upload>::finish(self)
            }

            fn abort(&self) {
                <$upload>::abort(self)
            }
        }

        $crate::export!(__CairnStorage);
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["config", "data/ab/abcdef", "keys/x-1_2.3"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "/abs", "a//b", "../x", "a/.hidden", "sp ace", "a/", "ü"] {
            assert!(matches!(check_name(bad), Err(Error::InvalidName(_))), "{bad}");
        }
    }
}
