//! A pool of instances of one plugin. Each instance lives in its own `Store` and serves one
//! caller at a time; a caller leases an instance, makes calls, and returns it. Every call
//! runs under a deadline. After a trap, a memory-cap hit or a deadline, the instance (whose
//! store can never be entered again) is dropped, and the next lease gets a fresh one.
//!
//! What a plugin hands back is bounded before the host holds it: each store's hostcall fuel
//! caps the bytes one call may copy out of the guest ([`MAX_CALL_COPY`]), and answers that
//! break the contract (a `read` longer than asked, a `list` page longer than `max`) are
//! refused as [`ErrorKind::Contract`].

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Result, anyhow};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::error::Elapsed;
use wasmtime::Store;
use wasmtime::component::{Component, Linker, ResourceAny};

use super::bindings::cairn::storage::types::Error as WitError;
use super::bindings::{StorageBackend, StorageBackendPre};
use super::runtime::Runtime;
use super::sandbox::{HostState, Sandbox};
use super::{BackendError, Capabilities, ErrorKind, ObjectInfo, PluginInfo, Secrets};

/// The most one call may copy out of a plugin: a bit over the largest `read` piece the host
/// asks for (`backend::READ_PIECE`), so honest answers always fit and a flood stops at the
/// copy, before the host allocates it. Also bounds what the guest passes to WASI calls.
pub const MAX_CALL_COPY: usize = crate::backend::READ_PIECE as usize + (1 << 20);

/// Recognises wasmtime's "hostcall fuel exhausted" error. Its type is private to wasmtime,
/// so the message is the only way to tell it from other failures of a call.
fn is_copy_limit(err: &wasmtime::Error) -> bool {
    err.chain().any(|e| e.to_string().contains("fuel allocated for hostcalls has been exhausted"))
}

struct Instance {
    store: Store<HostState>,
    bindings: StorageBackend,
    /// Calls served so far (for `recycle_after_calls`).
    calls: u64,
    /// Uploads started on it and not yet dropped: while one is open the instance holds
    /// its state, so it is never retired.
    uploads: u32,
    /// A guest call is under way. A call whose future was dropped part-way (the command
    /// gave up on it: another upload failed, a deadline elsewhere) leaves the instance unable
    /// to be entered again, so it must never go back to the pool.
    in_call: bool,
}

pub struct PluginPool {
    /// Shown in every error: the backend name from the config.
    pub name: String,
    pub sandbox: Sandbox,
    pub caps: Capabilities,
    pub info: PluginInfo,
    runtime: Arc<Runtime>,
    pre: StorageBackendPre<HostState>,
    options: Vec<(String, String)>,
    /// Masked out of everything the plugin says before it is shown or logged.
    secrets: Secrets,
    idle: Mutex<Vec<Instance>>,
    permits: Arc<Semaphore>,
    /// Linear memory held by all instances, capped together at `sandbox.memory_bytes`.
    memory_in_use: Arc<AtomicUsize>,
    /// An instance holding more than this after a call is retired, not kept: half its
    /// share of the cap, so a guest that leaks (common in garbage-collected languages) is
    /// replaced before it reaches the cap and dies in the middle of a call.
    retire_above: usize,
    /// Instances retired that way (shown with `-v`).
    recycled: AtomicU64,
}

impl Drop for PluginPool {
    fn drop(&mut self) {
        let n = self.recycled.load(Ordering::Relaxed);
        if n > 0 {
            tracing::info!(
                "plugin {}: {n} instances recycled (each had grown past {} MiB, half its share of the memory cap{})",
                self.name,
                self.retire_above >> 20,
                match self.sandbox.recycle_after_calls {
                    0 => String::new(),
                    k => format!(", or served {k} calls"),
                }
            );
        }
    }
}

/// A plugin that cannot find or may not open something when it opens the repository is
/// usually looking outside its grants: inside the sandbox only the granted folders exist (not
/// even their parents), so a folder that is not granted looks missing. Says which are.
fn with_grants_hint(mut err: BackendError, sandbox: &Sandbox) -> BackendError {
    if err.call != "open" {
        return err;
    }
    if let ErrorKind::NotFound(m) | ErrorKind::PermissionDenied(m) = &mut err.kind {
        let granted = if sandbox.dirs.is_empty() {
            "none".to_string()
        } else {
            sandbox.dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
        };
        m.push_str(&format!(
            "; the plugin can reach only the folders granted to it ({granted}), and anything \
             else looks missing inside its sandbox: if the repository folder is elsewhere, add \
             it to repository.grants.dirs"
        ));
    }
    err
}

/// Converts the contract's error variant to the host's, its message cleaned of secrets.
fn from_wit(e: WitError, secrets: &Secrets) -> ErrorKind {
    let kind = match e {
        WitError::NotFound(m) => ErrorKind::NotFound(m),
        WitError::AlreadyExists(m) => ErrorKind::AlreadyExists(m),
        WitError::PermissionDenied(m) => ErrorKind::PermissionDenied(m),
        WitError::InvalidConfig(m) => ErrorKind::InvalidConfig(m),
        WitError::InvalidName(m) => ErrorKind::InvalidName(m),
        WitError::Unsupported(m) => ErrorKind::Unsupported(m),
        WitError::Transient(m) => ErrorKind::Transient(m),
        WitError::RateLimited(r) => ErrorKind::RateLimited {
            retry_after: r.retry_after_ms.map(std::time::Duration::from_millis),
            message: r.message,
        },
        WitError::Other(m) => ErrorKind::Other(m),
    };
    kind.cleaned(secrets)
}

/// What a plugin says about itself, cleaned for display. Option names are kept as they are
/// (the config is matched against them) and escaped where they are shown.
fn clean_info(info: PluginInfo, secrets: &Secrets) -> PluginInfo {
    let c = |t: String| secrets.clean(&t);
    PluginInfo {
        name: c(info.name),
        version: c(info.version),
        description: c(info.description),
        options: info
            .options
            .into_iter()
            .map(|o| super::bindings::cairn::storage::types::OptionSpec {
                help: c(o.help),
                default_value: o.default_value.map(c),
                ..o
            })
            .collect(),
    }
}

impl PluginPool {
    /// Links and starts a plugin: checks its imports against the sandbox, instantiates one
    /// instance, and calls `describe` and `open` on it. `secrets` holds the password and the
    /// option values fetched at run time; the values of options the plugin declares secret
    /// are added to it.
    pub async fn start(
        runtime: Arc<Runtime>,
        name: &str,
        component: &Component,
        sandbox: Sandbox,
        options: Vec<(String, String)>,
        mut secrets: Secrets,
        max_instances: usize,
    ) -> Result<Arc<PluginPool>> {
        let engine = runtime.engine();
        let pre = link(engine, name, component, !sandbox.hosts.is_empty())?;
        let memory_in_use = Arc::new(AtomicUsize::new(0));
        let new_probe = async |secrets: &Secrets| {
            Instance::new(engine, &pre, &sandbox, memory_in_use.clone())
                .await
                .map_err(|e| anyhow!("cannot start plugin {name}: {}", secrets.clean(&format!("{e:#}"))))
        };
        let (mut probe, info) = described(name, &sandbox, &secrets, new_probe).await?;
        for (k, v) in &options {
            if info.options.iter().any(|o| &o.name == k && o.secret) {
                secrets.add(v);
            }
        }
        let info = clean_info(info, &secrets);
        check_options(name, &info, &options)?;
        // A server that is busy or briefly unreachable when the run starts is waited for,
        // as it is for any later call, and a crashed instance is replaced (the one retry rule).
        let mut attempt = 1;
        let caps = loop {
            let err = match probe.open(name, &options, &sandbox, &secrets).await {
                Ok(caps) => break caps,
                Err(e) => with_grants_hint(e.downcast::<BackendError>()?, &sandbox),
            };
            match crate::backend::retry_delay(attempt, &err, crate::backend::backoff_base()) {
                Some(delay) => tokio::time::sleep(delay).await,
                None => return Err(err.into()),
            }
            if err.kind.crashes_instance() {
                // Dropped first: its memory counts against the cap the new one starts under.
                drop(probe);
                probe = new_probe(&secrets).await?;
            }
            attempt += 1;
        };
        let permits = max_instances.max(1);
        let sandbox_memory = sandbox.memory_bytes;
        Ok(Arc::new(PluginPool {
            name: name.to_string(),
            sandbox,
            caps,
            info,
            runtime: runtime.clone(),
            pre,
            options,
            secrets,
            idle: Mutex::new(vec![probe]),
            permits: Arc::new(Semaphore::new(permits)),
            memory_in_use,
            retire_above: sandbox_memory / permits / 2,
            recycled: Default::default(),
        }))
    }

    /// What is masked out of this plugin's messages.
    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// How many callers can hold an instance at once.
    pub fn concurrency(&self) -> usize {
        self.permits.available_permits().max(1)
    }

    /// Waits for a free slot and returns an instance (idle, or freshly started and opened).
    pub async fn lease(self: &Arc<Self>) -> Result<Lease, BackendError> {
        let permit = self.permits.clone().acquire_owned().await.expect("semaphore never closed");
        let idle = self.idle.lock().unwrap().pop();
        let inst = match idle {
            Some(i) => i,
            None => self.fresh().await?,
        };
        Ok(Lease { pool: self.clone(), inst: Some(inst), retired: false, _permit: permit })
    }

    /// A new instance, started and opened.
    async fn fresh(&self) -> Result<Instance, BackendError> {
        let mut inst = self.instantiate().await.map_err(|e| {
            let kind = ErrorKind::Other(format!("{e:#}")).cleaned(&self.secrets);
            self.error("instantiate", None, kind)
        })?;
        inst.open(&self.name, &self.options, &self.sandbox, &self.secrets).await.map_err(|e| {
            match e.downcast::<BackendError>() {
                Ok(be) => with_grants_hint(be, &self.sandbox),
                Err(e) => {
                    let kind = ErrorKind::Other(format!("{e:#}")).cleaned(&self.secrets);
                    self.error("open", None, kind)
                }
            }
        })?;
        Ok(inst)
    }

    /// Instantiates, waiting (up to the call timeout) while the plugin's memory cap, shared by
    /// its instances, is held by others: one past its share is retired when its call ends, so
    /// memory comes back. A start that fails for another reason fails at once.
    async fn instantiate(&self) -> Result<Instance> {
        let deadline = tokio::time::Instant::now() + self.sandbox.call_timeout;
        loop {
            let failed = match Instance::start(
                self.runtime.engine(),
                &self.pre,
                &self.sandbox,
                self.memory_in_use.clone(),
            )
            .await
            {
                Ok(inst) => return Ok(inst),
                Err(failed) => failed,
            };
            let held = self.memory_in_use.load(std::sync::atomic::Ordering::SeqCst);
            if held == 0 || !failed.memory_cap {
                return Err(failed.error);
            }
            while self.memory_in_use.load(std::sync::atomic::Ordering::SeqCst) >= held {
                if tokio::time::Instant::now() >= deadline {
                    return Err(failed.error);
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }

    /// Whether an instance is due for retirement: it has grown past `retire_above` or served
    /// `recycle_after_calls` calls, and holds no open upload.
    fn due(&self, inst: &Instance) -> bool {
        let calls = self.sandbox.recycle_after_calls;
        inst.uploads == 0
            && (inst.store.data().limiter.held() > self.retire_above || (calls > 0 && inst.calls >= calls))
    }

    fn error(&self, call: &'static str, object: Option<&str>, kind: ErrorKind) -> BackendError {
        BackendError { plugin: self.name.clone(), call, object: object.map(str::to_string), kind }
    }
}

/// Links a component against WASI (and wasi:http when `network`), and checks that it
/// exports the storage interface with the expected types.
pub fn link(
    engine: &wasmtime::Engine,
    name: &str,
    component: &Component,
    network: bool,
) -> Result<StorageBackendPre<HostState>> {
    let mut linker = Linker::<HostState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    if network {
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    }
    let pre = linker.instantiate_pre(component).map_err(|e| {
        let msg = format!("{e:#}");
        if !network && msg.contains("wasi:http") {
            anyhow!(
                "plugin {name} uses the network (it imports wasi:http) but no host is granted; \
                 add its server to repository.grants.hosts, e.g. hosts = [\"https://s3.example.com:443\"]"
            )
        } else {
            // The import names are the component's own text.
            let msg = crate::untrusted::escape(&msg);
            anyhow!("plugin {name} cannot be linked: it imports something cairn does not provide: {msg}")
        }
    })?;
    StorageBackendPre::new(pre).map_err(|e| {
        let msg = crate::untrusted::escape(&format!("{e:#}")).into_owned();
        anyhow!("plugin {name} does not export the cairn:storage/backend@0.1.0 interface: {msg}")
    })
}

/// Whether a component imports wasi:http (it needs `grants.hosts` to run).
pub fn uses_network(engine: &wasmtime::Engine, component: &Component) -> bool {
    component.component_type().imports(engine).any(|(name, _)| name.starts_with("wasi:http/"))
}

/// Whether a component imports wasi:filesystem (it can use `grants.dirs`).
pub fn uses_files(engine: &wasmtime::Engine, component: &Component) -> bool {
    component.component_type().imports(engine).any(|(name, _)| name.starts_with("wasi:filesystem/"))
}

/// Calls `describe` on a fresh instance that can reach nothing.
pub async fn describe(
    engine: &wasmtime::Engine,
    name: &str,
    pre: &StorageBackendPre<HostState>,
    sandbox: &Sandbox,
) -> Result<PluginInfo> {
    let new = async |_: &Secrets| Instance::new(engine, pre, sandbox, Arc::new(AtomicUsize::new(0))).await;
    // As the plugin said it (recorded at install); cleaned where it is shown.
    Ok(described(name, sandbox, &Secrets::default(), new).await?.1)
}

/// An instance from `new` and what its `describe` says. A crash (trap, deadline, memory cap)
/// is retried on a fresh instance under the one retry rule (`backend::retry_delay`).
async fn described(
    name: &str,
    sandbox: &Sandbox,
    secrets: &Secrets,
    new: impl AsyncFn(&Secrets) -> Result<Instance>,
) -> Result<(Instance, PluginInfo)> {
    let mut attempt = 1;
    loop {
        let mut inst = new(secrets).await?;
        let err = match inst.describe(name, sandbox, secrets).await {
            Ok(info) => return Ok((inst, info)),
            Err(e) => e,
        };
        match crate::backend::retry_delay(attempt, &err, crate::backend::backoff_base()) {
            Some(delay) => tokio::time::sleep(delay).await,
            None => return Err(err.into()),
        }
        attempt += 1;
    }
}

/// Checks the config's options against the ones the plugin declares: unknown names and
/// missing required ones are errors that quote the plugin's help. Values are never shown
/// (they may be secrets).
pub fn check_options(name: &str, info: &PluginInfo, options: &[(String, String)]) -> Result<()> {
    let described = |o: &super::bindings::cairn::storage::types::OptionSpec| {
        format!(
            "{} ({}{}): {}",
            crate::untrusted::escape(&o.name),
            if o.required { "required" } else { "optional" },
            if o.secret { ", secret" } else { "" },
            o.help
        )
    };
    let all = || info.options.iter().map(described).collect::<Vec<_>>().join("; ");
    for (k, _) in options {
        if !info.options.iter().any(|o| &o.name == k) {
            anyhow::bail!("plugin {name} has no option `{k}`; it takes: {}", all());
        }
    }
    for o in &info.options {
        if o.required && !options.iter().any(|(k, _)| k == &o.name) {
            anyhow::bail!(
                "plugin {name} needs option `{}` in [repository] options: {}",
                crate::untrusted::escape(&o.name),
                described(o)
            );
        }
    }
    Ok(())
}

impl Instance {
    async fn describe(
        &mut self,
        name: &str,
        sandbox: &Sandbox,
        secrets: &Secrets,
    ) -> Result<PluginInfo, BackendError> {
        let g = self.bindings.cairn_storage_backend();
        let timeout = sandbox.call_timeout;
        let r = tokio::time::timeout(timeout, g.call_describe(&mut self.store)).await;
        let r = r.map(|x| x.map(Ok));
        settle(name, &mut self.store, "describe", None, (timeout, sandbox.memory_bytes), secrets, r)
    }

    async fn new(
        engine: &wasmtime::Engine,
        pre: &StorageBackendPre<HostState>,
        sandbox: &Sandbox,
        memory_in_use: Arc<AtomicUsize>,
    ) -> Result<Instance> {
        Self::start(engine, pre, sandbox, memory_in_use).await.map_err(|failed| failed.error)
    }

    /// [`Instance::new`], saying whether a failure was the memory cap refusing to grow.
    async fn start(
        engine: &wasmtime::Engine,
        pre: &StorageBackendPre<HostState>,
        sandbox: &Sandbox,
        memory_in_use: Arc<AtomicUsize>,
    ) -> Result<Instance, StartFailed> {
        let other = |error| StartFailed { error, memory_cap: false };
        let mut store = sandbox.new_store(engine, memory_in_use).map_err(other)?;
        store.set_hostcall_fuel(MAX_CALL_COPY);
        match pre.instantiate_async(&mut store).await {
            Ok(bindings) => Ok(Instance { store, bindings, calls: 0, uploads: 0, in_call: false }),
            Err(e) => Err(StartFailed { error: e.into(), memory_cap: store.data().limiter.exceeded }),
        }
    }

    async fn open(
        &mut self,
        name: &str,
        options: &[(String, String)],
        sandbox: &Sandbox,
        secrets: &Secrets,
    ) -> Result<Capabilities> {
        let g = self.bindings.cairn_storage_backend();
        let timeout = sandbox.call_timeout;
        let r = tokio::time::timeout(timeout, g.call_open(&mut self.store, options)).await;
        Ok(settle(name, &mut self.store, "open", None, (timeout, sandbox.memory_bytes), secrets, r)?)
    }
}

/// Why an instance did not start.
struct StartFailed {
    error: anyhow::Error,
    /// The memory cap refused to grow a memory (the cap is shared with other instances).
    memory_cap: bool,
}

/// Turns the outcome of one guest call into a result, explaining traps and deadlines. What
/// the plugin said (its error message, its last stderr line) is cleaned by `secrets`.
fn settle<T>(
    plugin: &str,
    store: &mut Store<HostState>,
    call: &'static str,
    object: Option<&str>,
    (timeout, memory_bytes): (std::time::Duration, usize),
    secrets: &Secrets,
    outcome: Result<wasmtime::Result<Result<T, WitError>>, Elapsed>,
) -> Result<T, BackendError> {
    let err =
        |kind| BackendError { plugin: plugin.to_string(), call, object: object.map(str::to_string), kind };
    match outcome {
        Ok(Ok(Ok(v))) => {
            // A plugin may hide a refused request behind a success; refusals are still named
            // when it fails.
            store.data_mut().take_denied_origin();
            Ok(v)
        }
        Ok(Ok(Err(e))) => {
            if let Some(origin) = store.data_mut().take_denied_origin() {
                // The origin is the plugin's choice: it may carry a secret.
                let origin = secrets.clean(&origin);
                return Err(err(ErrorKind::NotGranted(format!(
                    "HTTP to {origin} is not granted; add \"{origin}\" to repository.grants.hosts"
                ))));
            }
            Err(err(from_wit(e, secrets)))
        }
        Ok(Err(trap)) => {
            if is_copy_limit(&trap) {
                return Err(err(ErrorKind::Contract(format!(
                    "it tried to pass more than {} MiB to cairn in one call, the most cairn copies out of a plugin at once",
                    MAX_CALL_COPY >> 20
                ))));
            }
            if store.data().limiter.exceeded {
                return Err(err(ErrorKind::MemoryLimit((memory_bytes >> 20) as u64)));
            }
            let detail = store.data().stderr_tail().unwrap_or_else(|| {
                let root = trap.root_cause().to_string();
                root.lines().last().unwrap_or("trap").to_string()
            });
            Err(err(ErrorKind::Trap(detail).cleaned(secrets)))
        }
        Err(_elapsed) => Err(err(ErrorKind::Deadline(timeout))),
    }
}

/// An instance lent to one caller. Returned to the pool when dropped, unless a call
/// crashed it or it is due for retirement.
pub struct Lease {
    pool: Arc<PluginPool>,
    inst: Option<Instance>,
    /// The instance was retired after a call (not crashed): the next call on this lease
    /// starts a fresh one.
    retired: bool,
    _permit: OwnedSemaphorePermit,
}

impl Lease {
    /// Checked after every call: an instance that is due is retired at once, between calls
    /// (never mid-upload: an upload lives in it), so a guest that leaks a little per call
    /// is replaced before it reaches the cap even when one lease makes many calls.
    fn retire_if_due(&mut self) {
        if self.inst.as_ref().is_some_and(|i| self.pool.due(i)) {
            self.inst = None;
            self.retired = true;
            self.pool.recycled.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                "plugin {}: retiring an instance (grown large or served its calls)",
                self.pool.name
            );
        }
    }
}

impl Drop for Lease {
    /// Returns the instance to the pool unless it is due for retirement.
    fn drop(&mut self) {
        self.retire_if_due();
        if let Some(inst) = self.inst.take()
            && !inst.in_call
        {
            self.pool.idle.lock().unwrap().push(inst);
        }
    }
}

/// Runs one guest call on the leased instance under the deadline, then settles it. A crash
/// or deadline discards the instance.
macro_rules! guest_call {
    ($lease:ident, $call:literal, $object:expr, |$g:ident, $store:ident| $body:expr) => {{
        let pool = $lease.pool.clone();
        let timeout = pool.sandbox.call_timeout;
        if $lease.inst.is_none() && $lease.retired {
            $lease.inst = Some(pool.fresh().await?);
            $lease.retired = false;
        }
        let Some(inst) = $lease.inst.as_mut() else {
            return Err(pool.error($call, $object, ErrorKind::Other("instance already stopped".into())));
        };
        inst.in_call = true;
        let outcome = {
            let $store = &mut inst.store;
            let $g = inst.bindings.cairn_storage_backend();
            tokio::time::timeout(timeout, $body).await
        };
        inst.in_call = false;
        let crashed = matches!(outcome, Err(_) | Ok(Err(_)));
        let limits = (timeout, pool.sandbox.memory_bytes);
        let r = settle(&pool.name, &mut inst.store, $call, $object, limits, &pool.secrets, outcome);
        inst.calls += 1;
        if $call == "start-upload" && r.is_ok() {
            // The instance now holds the upload: it is not retired until `drop_upload`.
            inst.uploads += 1;
        }
        if crashed {
            $lease.inst = None;
        } else {
            $lease.retire_if_due();
        }
        r
    }};
}

impl Lease {
    pub fn plugin(&self) -> &str {
        &self.pool.name
    }

    /// Whether a call crashed the instance (it is then discarded, not returned to the pool).
    pub fn crashed(&self) -> bool {
        self.inst.is_none() && !self.retired
    }

    pub async fn list(
        &mut self,
        prefix: &str,
        cursor: Option<&str>,
        max: u32,
    ) -> Result<(Vec<ObjectInfo>, Option<String>), BackendError> {
        let page =
            guest_call!(self, "list", Some(prefix), |g, store| g.call_list(store, prefix, cursor, max))?;
        if page.objects.len() > max as usize {
            return Err(self.pool.error(
                "list",
                Some(prefix),
                ErrorKind::Contract(format!(
                    "it returned a page of {} objects when asked for at most {max}",
                    page.objects.len()
                )),
            ));
        }
        Ok((page.objects, page.next_cursor))
    }

    pub async fn stat(&mut self, name: &str) -> Result<ObjectInfo, BackendError> {
        guest_call!(self, "stat", Some(name), |g, store| g.call_stat(store, name))
    }

    pub async fn read(&mut self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        let data = guest_call!(self, "read", Some(name), |g, store| g.call_read(store, name, offset, len))?;
        if data.len() as u64 > len {
            return Err(self.pool.error(
                "read",
                Some(name),
                ErrorKind::Contract(format!("it returned {} bytes when asked for at most {len}", data.len())),
            ));
        }
        Ok(data)
    }

    pub async fn start_upload(
        &mut self,
        name: &str,
        size: u64,
        if_absent: bool,
    ) -> Result<ResourceAny, BackendError> {
        guest_call!(self, "start-upload", Some(name), |g, store| g
            .call_start_upload(store, name, size, if_absent))
    }

    pub async fn write(&mut self, upload: ResourceAny, name: &str, data: &[u8]) -> Result<(), BackendError> {
        guest_call!(self, "write", Some(name), |g, store| g.upload().call_write(store, upload, data))
    }

    pub async fn finish(&mut self, upload: ResourceAny, name: &str) -> Result<(), BackendError> {
        guest_call!(self, "finish", Some(name), |g, store| g.upload().call_finish(store, upload))
    }

    pub async fn abort(&mut self, upload: ResourceAny, name: &str) -> Result<(), BackendError> {
        guest_call!(self, "abort", Some(name), |g, store| async {
            g.upload().call_abort(&mut *store, upload).await.map(Ok)
        })
    }

    /// Releases the guest's upload resource (after finish or abort).
    pub async fn drop_upload(&mut self, upload: ResourceAny) {
        if let Some(inst) = self.inst.as_mut() {
            let timeout = self.pool.sandbox.call_timeout;
            inst.in_call = true;
            let r = tokio::time::timeout(timeout, upload.resource_drop_async(&mut inst.store)).await;
            inst.in_call = false;
            inst.uploads = inst.uploads.saturating_sub(1);
            if !matches!(r, Ok(Ok(()))) {
                self.inst = None;
            } else {
                self.retire_if_due();
            }
        }
    }

    pub async fn list_incomplete(
        &mut self,
        prefix: &str,
    ) -> Result<Vec<(String, String, u64)>, BackendError> {
        let v = guest_call!(self, "list-incomplete", Some(prefix), |g, store| g
            .call_list_incomplete(store, prefix))?;
        Ok(v.into_iter().map(|u| (u.id, u.name, u.size)).collect())
    }

    pub async fn abort_incomplete(&mut self, id: &str) -> Result<(), BackendError> {
        if !self.pool.sandbox.allow_delete {
            return Err(self.pool.error(
                "abort-incomplete",
                Some(id),
                ErrorKind::NotGranted(
                    "this repository is append-only (repository.grants.delete = false): nothing stored is removed".into(),
                ),
            ));
        }
        guest_call!(self, "abort-incomplete", Some(id), |g, store| g.call_abort_incomplete(store, id))
    }

    pub async fn delete(&mut self, names: &[String]) -> Result<(), BackendError> {
        if !self.pool.sandbox.allow_delete {
            return Err(self.pool.error(
                "delete",
                names.first().map(String::as_str),
                ErrorKind::NotGranted(
                    "this repository is append-only (repository.grants.delete = false)".into(),
                ),
            ));
        }
        guest_call!(self, "delete", names.first().map(String::as_str), |g, store| g.call_delete(store, names))
    }
}
