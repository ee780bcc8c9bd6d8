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

/// The fs backend, built from `plugins/fs` by build.rs and embedded so the default needs no
/// install step.
pub const BUILTIN_FS: &[u8] = include_bytes!(env!("CAIRN_FS_PLUGIN_WASM"));

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
}

impl ErrorKind {
    /// Errors worth trying again: transient failures and a fresh instance after a crash.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ErrorKind::Transient(_)
                | ErrorKind::RateLimited { .. }
                | ErrorKind::Trap(_)
                | ErrorKind::Deadline(_)
        )
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
            ErrorKind::TooLarge { size, max } => write!(
                f,
                "backend {p}: {c}{on}: the object is {size} bytes, more than the {max} bytes cairn accepts for it; \
                 nothing was downloaded"
            ),
        }
    }
}

impl std::error::Error for BackendError {}
