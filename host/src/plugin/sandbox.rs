//! What one plugin instance can reach: nothing but what the config grants.
//!
//! - Filesystem: each granted folder, preopened read-write at its own path. No other path
//!   resolves (wasmtime-wasi refuses `..` and symlinks that leave a preopen).
//! - Network: no sockets. HTTP (wasi:http) only to the granted `scheme://host:port` entries,
//!   checked here on every request; wasi:http is linked only when hosts are granted.
//! - No environment, no arguments, no stdin; stderr is captured so a crash can be explained.
//! - Memory: the linear memories of all instances of one plugin together are capped; growing
//!   past it traps and is reported as such.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Context, Result};
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// The resolved sandbox of one plugin.
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub dirs: Vec<PathBuf>,
    /// Normalised `scheme://host:port` entries.
    pub hosts: Vec<String>,
    pub allow_delete: bool,
    pub memory_bytes: usize,
    pub call_timeout: std::time::Duration,
    /// An instance is retired after this many calls (0: no limit).
    pub recycle_after_calls: u64,
}

pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    hooks: AllowList,
    pub limiter: MemoryCap,
    pub stderr: MemoryOutputPipe,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// Caps linear memory and remembers that the cap was hit, so the trap can be explained.
/// The cap holds for all instances of a plugin together (they share `in_use`): parallel
/// instances that each grow large cannot multiply what the plugin costs the host.
pub struct MemoryCap {
    max_bytes: usize,
    pub exceeded: bool,
    /// Bytes this instance's memories hold, counted in `in_use`.
    held: usize,
    /// Bytes all instances of the plugin hold.
    in_use: Arc<AtomicUsize>,
}

impl MemoryCap {
    /// Bytes this instance's memories hold.
    pub fn held(&self) -> usize {
        self.held
    }
}

impl Drop for MemoryCap {
    /// The store, and so its memories, are being freed.
    fn drop(&mut self) {
        self.in_use.fetch_sub(self.held, Ordering::SeqCst);
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grow = desired.saturating_sub(current);
        let total = self.in_use.fetch_add(grow, Ordering::SeqCst) + grow;
        if desired > self.max_bytes || total > self.max_bytes {
            self.in_use.fetch_sub(grow, Ordering::SeqCst);
            self.exceeded = true;
            return Err(wasmtime::format_err!("memory limit of {} bytes reached", self.max_bytes));
        }
        self.held += grow;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// The wasi:http hook: only granted origins may be contacted.
pub struct AllowList {
    allowed: Arc<Vec<String>>,
    /// Set when a request was refused, so the error can name the missing grant.
    pub denied: Arc<AtomicBool>,
    pub last_denied: Arc<std::sync::Mutex<Option<String>>>,
}

/// `scheme://host:port` with the default port filled in, lower-cased.
pub fn normalise_origin(scheme: &str, host: &str, port: Option<u16>) -> String {
    let port = port.unwrap_or(if scheme.eq_ignore_ascii_case("https") { 443 } else { 80 });
    format!("{}://{}:{port}", scheme.to_ascii_lowercase(), host.to_ascii_lowercase())
}

/// Parses a grant entry such as `http://127.0.0.1:8333` into its normal form.
pub fn parse_origin(entry: &str) -> Option<String> {
    let uri: http::Uri = entry.parse().ok()?;
    let scheme = uri.scheme_str()?;
    if !matches!(scheme, "http" | "https") || uri.path().len() > 1 {
        return None;
    }
    Some(normalise_origin(scheme, uri.host()?, uri.port_u16()))
}

impl WasiHttpHooks for AllowList {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        let uri = request.uri();
        let origin = match (uri.scheme_str(), uri.host()) {
            (Some(s), Some(h)) => normalise_origin(s, h, uri.port_u16()),
            _ => String::from("(no origin)"),
        };
        if !self.allowed.contains(&origin) {
            self.denied.store(true, Ordering::SeqCst);
            *self.last_denied.lock().unwrap() = Some(origin);
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((res.map(BodyExt::boxed_unsync), Box::new(io) as Box<dyn Future<Output = _> + Send>))
        })
    }
}

impl Sandbox {
    /// A fresh store for one instance, holding exactly this sandbox's capabilities. `in_use`
    /// counts the memory of every instance of the plugin, for the shared cap.
    pub fn new_store(&self, engine: &wasmtime::Engine, in_use: Arc<AtomicUsize>) -> Result<Store<HostState>> {
        let stderr = MemoryOutputPipe::new(64 * 1024);
        let mut b = WasiCtxBuilder::new();
        b.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
        // File operations run inline instead of on the blocking pool: they are page-cache
        // copies of at most a few MiB, and the thread hand-offs cost more than the blocking.
        b.allow_blocking_current_thread(true);
        b.stderr(stderr.clone());
        for dir in &self.dirs {
            let guest =
                dir.to_str().with_context(|| format!("granted folder {} is not UTF-8", dir.display()))?;
            b.preopened_dir(dir, guest, FsPerms::ReadWrite)
                .map_err(|e| anyhow::anyhow!("cannot open granted folder {}: {e:#}", dir.display()))?;
        }
        let state = HostState {
            wasi: b.build(),
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            hooks: AllowList {
                allowed: Arc::new(self.hosts.clone()),
                denied: Arc::new(AtomicBool::new(false)),
                last_denied: Arc::new(std::sync::Mutex::new(None)),
            },
            limiter: MemoryCap { max_bytes: self.memory_bytes, exceeded: false, held: 0, in_use },
            stderr,
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limiter);
        // Yield to the async runtime at every epoch tick: deadlines are enforced at yields.
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        Ok(store)
    }
}

impl HostState {
    /// The origin of the last HTTP request refused by the allow-list, if any.
    pub fn take_denied_origin(&mut self) -> Option<String> {
        if self.hooks.denied.swap(false, Ordering::SeqCst) {
            self.hooks.last_denied.lock().unwrap().take()
        } else {
            None
        }
    }

    /// The last non-empty line the guest wrote to stderr (a panic message, typically).
    pub fn stderr_tail(&self) -> Option<String> {
        let bytes = self.stderr.contents();
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> =
            text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("note:")).collect();
        // A Rust panic prints "panicked at FILE:LINE:COL:" then the message.
        match lines.as_slice() {
            [] => None,
            [.., a, b] if a.contains("panicked at") => Some(format!("{a} {b}")),
            [.., last] => Some(last.to_string()),
        }
    }
}
