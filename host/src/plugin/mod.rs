//! The plugin runtime: storage backends are WebAssembly components (see `wit/storage.wit`)
//! run by wasmtime with no ambient authority.
//!
//! - [`runtime`]: the engine, its epoch ticker, and the on-disk cache of compiled components.
//! - [`sandbox`]: per-instance host state: WASI with only the granted folders, the memory
//!   limiter, the HTTP allow-list.
//! - [`pool`]: a set of instances of one plugin, each call bounded by a deadline; a trapped
//!   or timed-out instance is thrown away and replaced.
//! - [`store`]: installed plugins, checked at install and at every load.

pub mod pool;
pub mod runtime;
pub mod sandbox;
pub mod store;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Host bindings generated from the WIT package.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "storage-backend",
        exports: { default: async },
    });
}

pub use bindings::cairn::storage::types::{Capabilities, ObjectInfo, PluginInfo};

/// A backend this repository ships, built from `plugins/` by build.rs and embedded in the
/// binary so it needs no file: still a component, sandboxed and granted like any plugin.
pub struct Bundled {
    pub name: &'static str,
    /// The plugin crates' version, recorded at build time (what its `describe()` reports).
    pub version: &'static str,
    pub description: &'static str,
    pub wasm: &'static [u8],
}

/// The fs backend: the default, used as `backend = "fs"` and never installed.
pub const BUILTIN_FS: &[u8] = include_bytes!(env!("CAIRN_FS_PLUGIN_WASM"));

/// Every bundled backend, fs first.
pub const BUNDLED: &[Bundled] = &[
    Bundled {
        name: "fs",
        version: env!("CAIRN_BUNDLED_PLUGIN_VERSION"),
        description: "a folder on a local or mounted filesystem (built in)",
        wasm: BUILTIN_FS,
    },
    Bundled {
        name: "s3",
        version: env!("CAIRN_BUNDLED_PLUGIN_VERSION"),
        description: "a bucket on an S3-compatible object store (AWS S3, SeaweedFS, MinIO, ...)",
        wasm: include_bytes!(env!("CAIRN_S3_PLUGIN_WASM")),
    },
    Bundled {
        name: "webdav",
        version: env!("CAIRN_BUNDLED_PLUGIN_VERSION"),
        description: "a folder on a WebDAV server",
        wasm: include_bytes!(env!("CAIRN_WEBDAV_PLUGIN_WASM")),
    },
];

/// The bundled backend of that name.
pub fn bundled(name: &str) -> Option<&'static Bundled> {
    BUNDLED.iter().find(|b| b.name == name)
}

/// Why a backend call failed, as the host sees it.
#[derive(Debug, Clone)]
pub enum ErrorKind {
    NotFound(String),
    AlreadyExists(String),
    PermissionDenied(String),
    InvalidConfig(String),
    InvalidName(String),
    Unsupported(String),
    Transient(String),
    RateLimited {
        retry_after: Option<Duration>,
        message: String,
    },
    Other(String),
    /// The guest trapped (panic, illegal operation); the instance was discarded.
    Trap(String),
    /// The call did not return before its deadline; the instance was discarded.
    Deadline(Duration),
    /// The guest tried to grow its memory past the cap; the instance was discarded.
    MemoryLimit(u64),
    /// The host refused the call: the config does not grant it.
    NotGranted(String),
    /// The plugin broke the contract (e.g. returned more bytes than asked for).
    Contract(String),
    /// The object is larger than the caller accepts for it; nothing was downloaded.
    TooLarge {
        size: u64,
        max: u64,
    },
    /// The storage itself cannot take the write (full, read-only, not permitted): no retry
    /// helps, the user must act. `said` is what the plugin reported.
    Storage {
        /// Boxed: keeps every `Result<_, BackendError>` small.
        condition: Box<StorageCondition>,
        said: String,
    },
}

/// A permanent condition of the storage, found by the host in a folder it granted the plugin
/// (the plugin often cannot tell: wasmtime reports a full disk on a file stream, and a
/// read-only file system everywhere, as a generic I/O error), or reported by the plugin
/// (`permission-denied` on a write).
#[derive(Debug, Clone)]
pub enum StorageCondition {
    /// The filesystem holding `folder` has `free` bytes left, short of the `needed`.
    NoSpace { folder: PathBuf, free: u64, needed: u64 },
    /// `folder` is on a file system mounted read-only.
    ReadOnly { folder: PathBuf },
    /// The backend refused the write for want of permission.
    Denied,
}

impl fmt::Display for StorageCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::commands::human_bytes;
        match self {
            StorageCondition::NoSpace { folder, free, needed } => write!(
                f,
                "no space left on the device that holds {} ({} free, this upload needs {}); \
                 free space there or move the repository, then run the command again",
                folder.display(),
                human_bytes(*free),
                human_bytes(*needed)
            ),
            StorageCondition::ReadOnly { folder } => write!(
                f,
                "{} is on a read-only file system; remount it read-write (or fix the disk), then run the command again",
                folder.display()
            ),
            StorageCondition::Denied => f.write_str(
                "permission denied: the backend refuses this write, so it is not retried; \
                 fix the credentials or the permissions, then run the command again",
            ),
        }
    }
}

impl ErrorKind {
    /// Errors worth trying again: transient failures and a fresh instance after a crash
    /// (trap, deadline, memory cap).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ErrorKind::Transient(_)
                | ErrorKind::RateLimited { .. }
                | ErrorKind::Trap(_)
                | ErrorKind::Deadline(_)
                | ErrorKind::MemoryLimit(_)
        )
    }

    /// Whether the instance that made the call is gone (it trapped, hit its memory cap or
    /// missed its deadline): a retry needs a fresh one.
    pub fn crashes_instance(&self) -> bool {
        matches!(self, ErrorKind::Trap(_) | ErrorKind::Deadline(_) | ErrorKind::MemoryLimit(_))
    }

    /// Whether the error is evidence about the stored object itself (it does not exist),
    /// rather than about the plugin (it failed, broke the contract, was refused).
    pub fn is_verdict_on_data(&self) -> bool {
        matches!(self, ErrorKind::NotFound(_))
    }
}

/// A failed backend call: which plugin, which call, on which object, and why.
#[derive(Debug, Clone)]
pub struct BackendError {
    pub plugin: String,
    pub call: &'static str,
    pub object: Option<String>,
    pub kind: ErrorKind,
}

impl BackendError {
    pub fn is_not_found(&self) -> bool {
        matches!(self.kind, ErrorKind::NotFound(_))
    }

    /// The storage is full, read-only or refuses writes: the run stops, nothing is retried.
    pub fn is_storage_condition(&self) -> bool {
        matches!(self.kind, ErrorKind::Storage { .. })
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.plugin;
        let c = self.call;
        let on = self.object.as_deref().map(|o| format!(" {o}")).unwrap_or_default();
        match &self.kind {
            ErrorKind::NotFound(m) => write!(f, "backend {p}: {c}{on}: not found ({m})"),
            ErrorKind::AlreadyExists(m) => write!(f, "backend {p}: {c}{on}: already exists ({m})"),
            ErrorKind::PermissionDenied(m) => {
                write!(f, "backend {p}: {c}{on}: permission denied: {m}")
            }
            ErrorKind::InvalidConfig(m) => write!(f, "backend {p}: invalid options: {m}"),
            ErrorKind::InvalidName(m) => write!(f, "backend {p}: {c}{on}: invalid name: {m}"),
            ErrorKind::Unsupported(m) => write!(f, "backend {p}: {c}{on}: unsupported: {m}"),
            ErrorKind::Transient(m) => write!(f, "backend {p}: {c}{on}: temporary failure: {m}"),
            ErrorKind::RateLimited { message, .. } => {
                write!(f, "backend {p}: {c}{on}: rate limited: {message}")
            }
            ErrorKind::Other(m) => write!(f, "backend {p}: {c}{on}: {m}"),
            ErrorKind::Trap(m) => write!(f, "plugin {p} crashed in `{c}`{on}: {m}"),
            ErrorKind::Deadline(d) => write!(
                f,
                "plugin {p} was stopped: `{c}`{on} did not return within its {}s deadline \
                 (repository.grants.call_timeout_secs)",
                d.as_secs()
            ),
            ErrorKind::MemoryLimit(mib) => write!(
                f,
                "plugin {p} was stopped: `{c}`{on} tried to use more than its {mib} MiB memory limit \
                 (repository.grants.memory_mib)"
            ),
            ErrorKind::NotGranted(m) => write!(f, "plugin {p}: {c}{on} refused: {m}"),
            ErrorKind::Contract(m) => {
                write!(f, "plugin {p} broke the storage contract in `{c}`{on}: {m}")
            }
            ErrorKind::Storage { condition, said } => {
                write!(f, "backend {p}: {c}{on}: {condition} (the plugin said: {said})")
            }
            ErrorKind::TooLarge { size, max } => write!(
                f,
                "backend {p}: {c}{on}: the object is {size} bytes, more than the {max} bytes cairn accepts for it; \
                 nothing was downloaded"
            ),
        }
    }
}

impl std::error::Error for BackendError {}

/// Values that must never be shown or logged: the repository password, every option value
/// the plugin declares `secret`, and every option value fetched at run time (`{ env = ... }`,
/// `{ command = ... }`). A plugin sees some of them, and whatever it says (errors, stderr,
/// its description) may quote them, by mistake or on purpose.
#[derive(Clone, Default)]
pub struct Secrets(Vec<String>);

impl Secrets {
    pub fn add(&mut self, value: &str) {
        if !value.is_empty() && !self.0.iter().any(|s| s == value) {
            self.0.push(value.to_string());
            // Longest first: a secret that holds another is masked whole.
            self.0.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// Text from a plugin, made fit to show: each secret replaced by `***`, then escaped
    /// (so control characters never reach a terminal or a log).
    pub fn clean(&self, text: &str) -> String {
        let mut masked = text.to_string();
        for secret in &self.0 {
            if masked.contains(secret.as_str()) {
                masked = masked.replace(secret.as_str(), "***");
            }
        }
        crate::untrusted::escape(&masked).into_owned()
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets({} values)", self.0.len())
    }
}

impl ErrorKind {
    /// The kind with the plugin's own message cleaned by `secrets` (host-written details
    /// are left as they are).
    pub fn cleaned(self, secrets: &Secrets) -> ErrorKind {
        let c = |m: String| secrets.clean(&m);
        match self {
            ErrorKind::NotFound(m) => ErrorKind::NotFound(c(m)),
            ErrorKind::AlreadyExists(m) => ErrorKind::AlreadyExists(c(m)),
            ErrorKind::PermissionDenied(m) => ErrorKind::PermissionDenied(c(m)),
            ErrorKind::InvalidConfig(m) => ErrorKind::InvalidConfig(c(m)),
            ErrorKind::InvalidName(m) => ErrorKind::InvalidName(c(m)),
            ErrorKind::Unsupported(m) => ErrorKind::Unsupported(c(m)),
            ErrorKind::Transient(m) => ErrorKind::Transient(c(m)),
            ErrorKind::RateLimited { retry_after, message } => {
                ErrorKind::RateLimited { retry_after, message: c(message) }
            }
            ErrorKind::Other(m) => ErrorKind::Other(c(m)),
            ErrorKind::Trap(m) => ErrorKind::Trap(c(m)),
            ErrorKind::Storage { condition, said } => ErrorKind::Storage { condition, said: c(said) },
            kind @ (ErrorKind::Deadline(_)
            | ErrorKind::MemoryLimit(_)
            | ErrorKind::NotGranted(_)
            | ErrorKind::Contract(_)
            | ErrorKind::TooLarge { .. }) => kind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_longest_first_then_escaped() {
        let mut s = Secrets::default();
        s.add("hunter2");
        s.add("hunter2-and-more");
        s.add("");
        assert_eq!(s.clean("a hunter2-and-more b hunter2"), "a *** b ***");
        assert_eq!(s.clean("key=hunter2\n\x1b[2Jfake"), "key=***\\n\\u{1b}[2Jfake");
        assert_eq!(s.clean("nothing secret"), "nothing secret");
        assert_eq!(format!("{s:?}"), "Secrets(2 values)");
    }
}
