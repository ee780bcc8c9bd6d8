//! The backend as the engine uses it: whole operations (list everything, upload an object,
//! read a range) over a plugin pool, with retries.
//!
//! Retryable errors (transient, rate-limited, and instances that crashed, timed out or hit
//! their memory cap, which the pool replaces) are retried with exponential backoff and
//! jitter, up to a bound: such a failure says nothing about the stored data, and a fresh
//! instance often gets through (a guest that leaks dies every few calls, not every call). Permanent
//! errors are returned at once. An upload is retried as a whole: the plugin contract makes a
//! failed upload invisible, so starting over is always safe.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::ids::Id;
use crate::plugin::pool::{Lease, PluginPool};
use crate::plugin::{BackendError, Capabilities, ErrorKind, ObjectInfo, StorageCondition};
use crate::repo::format::ObjectName;
use crate::untrusted::escape;

/// Bytes handed to the plugin per `write` call.
const WRITE_PIECE: usize = 1 << 20;
/// Bytes asked of the plugin per `read` call (bounded by the plugin's memory cap).
pub(crate) const READ_PIECE: u64 = 8 << 20;
/// Objects per `list` page (`CAIRN_LIST_PAGE` makes it smaller, so tests page through
/// small listings) and per `delete` call.
const LIST_PAGE: u32 = 1000;
const DELETE_BATCH: usize = 200;

/// Bounds of one listing, far beyond any cairn repository (a million objects under one
/// prefix is 16 TiB of packs at the default pack size), so that a listing that never ends
/// (fresh cursors forever) stops with an error instead of filling the host's memory. The
/// name bytes are bounded too: names are short, but a plugin chooses them. A repository
/// whose journal knows more objects gets proportionally more room ([`Backend::expect_objects`]).
const MAX_LIST_PAGES: usize = 10_000;
const MAX_LIST_OBJECTS: usize = 1_000_000;
const MAX_LIST_NAME_BYTES: usize = 80 << 20;
/// Bytes of name allowed per object when the bound grows with the journal (a pack's name is
/// 72 bytes).
const NAME_BYTES_PER_OBJECT: usize = 80;

/// Attempts for transient errors, and for instances that crashed, timed out or ran out of
/// memory.
const TRANSIENT_ATTEMPTS: u32 = 6;
const CRASH_ATTEMPTS: u32 = 5;

#[derive(Default)]
pub struct Traffic {
    pub uploaded: AtomicU64,
    pub downloaded: AtomicU64,
    pub uploads: AtomicU64,
    pub retries: AtomicU64,
}

/// Base delay of the exponential backoff (`CAIRN_RETRY_BASE_MS` overrides it, for tests).
pub fn backoff_base() -> Duration {
    std::env::var("CAIRN_RETRY_BASE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_millis(250))
}

/// How long to wait before trying again after `err` on attempt `attempt` (1-based), or
/// `None` when it is not worth another attempt. Logs the decision.
pub fn retry_delay(attempt: u32, err: &BackendError, base: Duration) -> Option<Duration> {
    let limit = match err.kind {
        ErrorKind::Trap(_) | ErrorKind::Deadline(_) | ErrorKind::MemoryLimit(_) => CRASH_ATTEMPTS,
        ErrorKind::Transient(_) | ErrorKind::RateLimited { .. } => TRANSIENT_ATTEMPTS,
        // A full, read-only or refusing storage stays so: stop at once, say what to do.
        ErrorKind::Storage { .. } => return None,
        _ => return None,
    };
    if attempt >= limit {
        return None;
    }
    let exp = base.saturating_mul(1 << (attempt - 1).min(8));
    let mut delay = exp.min(Duration::from_secs(30));
    if let ErrorKind::RateLimited { retry_after: Some(after), .. } = err.kind {
        delay = delay.max(after.min(Duration::from_secs(120)));
    }
    // Full jitter in [delay/2, delay*3/2): many clients must not retry in lockstep.
    let jitter = getrandom::u64().unwrap_or(0) % 1000;
    let delay = delay.mul_f64(0.5 + jitter as f64 / 1000.0);
    tracing::warn!("{err}; retrying in {:.1}s (attempt {}/{limit})", delay.as_secs_f64(), attempt + 1);
    Some(delay)
}

pub struct Backend {
    pool: Arc<PluginPool>,
    pub traffic: Traffic,
    /// Base delay of the exponential backoff.
    backoff: Duration,
    list_page: u32,
    /// Objects the journal knew when the repository was opened: listings may hold twice as
    /// many (another client's additions) before they count as endless.
    known_objects: AtomicU64,
}

/// How far one listing may go before it is taken as endless.
struct ListBounds {
    objects: usize,
    name_bytes: usize,
    pages: usize,
}

impl Backend {
    pub fn new(pool: Arc<PluginPool>) -> Backend {
        let backoff = backoff_base();
        let list_page = std::env::var("CAIRN_LIST_PAGE")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(LIST_PAGE);
        Backend { pool, traffic: Traffic::default(), backoff, list_page, known_objects: AtomicU64::new(0) }
    }

    /// Tells the listing bounds how many objects the journal knows: a large repository's
    /// listings are allowed to be proportionally longer.
    pub fn expect_objects(&self, known: u64) {
        self.known_objects.store(known, Ordering::Relaxed);
    }

    fn list_bounds(&self) -> ListBounds {
        let grown = (self.known_objects.load(Ordering::Relaxed) as usize).saturating_mul(2);
        let objects = MAX_LIST_OBJECTS.max(grown);
        ListBounds {
            objects,
            name_bytes: MAX_LIST_NAME_BYTES.max(grown.saturating_mul(NAME_BYTES_PER_OBJECT)),
            pages: MAX_LIST_PAGES.max(grown / self.list_page.max(1) as usize * 2),
        }
    }

    pub fn name(&self) -> &str {
        &self.pool.name
    }

    pub fn caps(&self) -> &Capabilities {
        &self.pool.caps
    }

    pub fn pool(&self) -> &Arc<PluginPool> {
        &self.pool
    }

    /// False for an append-only repository (`repository.grants.delete = false`).
    pub fn can_delete(&self) -> bool {
        self.pool.sandbox.allow_delete
    }

    /// Parallel transfers worth running: the plugin's preference, bounded by the pool.
    pub fn concurrency(&self) -> usize {
        (self.pool.caps.preferred_concurrency as usize).clamp(1, self.pool.concurrency())
    }

    /// Decides whether to try again after `err` on attempt `attempt` (1-based), and waits.
    async fn should_retry(&self, attempt: u32, err: &BackendError) -> bool {
        let Some(delay) = retry_delay(attempt, err, self.backoff) else { return false };
        self.traffic.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(delay).await;
        true
    }

    async fn lease(&self) -> Result<Lease, BackendError> {
        self.pool.lease().await
    }

    /// Runs `op` until it succeeds, fails permanently, or runs out of attempts.
    async fn retry<T, F, Fut>(&self, mut op: F) -> Result<T, BackendError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if self.should_retry(attempt, &e).await => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Every complete object whose name starts with `prefix`. A listing that repeats a
    /// cursor (anywhere in the sequence, so a cycle A->B->A is caught) or grows past the
    /// `MAX_LIST_*` bounds is the plugin's fault, and an error.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        // Hashes, not the cursors: a plugin chooses how long they are.
        let mut seen = std::collections::HashSet::new();
        let mut name_bytes = 0usize;
        let bounds = self.list_bounds();
        for page in 1.. {
            let (objects, next) = self
                .retry(|| async { self.lease().await?.list(prefix, cursor.as_deref(), self.list_page).await })
                .await?;
            for o in objects.into_iter().filter(|o| o.name.starts_with(prefix)) {
                name_bytes += o.name.len();
                out.push(o);
            }
            let more = next.is_some();
            if out.len() > bounds.objects || name_bytes > bounds.name_bytes || (more && page >= bounds.pages)
            {
                return Err(self.list_error(
                    prefix,
                    format!(
                        "its listing did not end after {page} pages and {} objects, far more than a \
                         cairn repository holds (at most {} pages, {} objects, {} MiB of names)",
                        out.len(),
                        bounds.pages,
                        bounds.objects,
                        bounds.name_bytes >> 20
                    ),
                ));
            }
            let Some(next) = next else { break };
            if !seen.insert(*blake3::hash(next.as_bytes()).as_bytes()) {
                return Err(self.list_error(
                    prefix,
                    format!("on page {page} it returned a cursor it had already returned: its listing loops"),
                ));
            }
            cursor = Some(next);
        }
        Ok(out)
    }

    fn list_error(&self, prefix: &str, message: String) -> BackendError {
        BackendError {
            plugin: self.pool.name.clone(),
            call: "list",
            object: Some(prefix.to_string()),
            kind: ErrorKind::Contract(message),
        }
    }

    /// Size of an object, or `None` if it does not exist.
    pub async fn stat(&self, name: &str) -> Result<Option<ObjectInfo>, BackendError> {
        match self.retry(|| async { self.lease().await?.stat(name).await }).await {
            Ok(info) => Ok(Some(info)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `len` bytes from `offset`; fewer only if the object ends first. Memory grows with
    /// what arrives, not with `len` (which may come from a plugin's `stat`).
    pub async fn read(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        let mut out = Vec::with_capacity(len.min(READ_PIECE) as usize);
        let mut lease: Option<Lease> = None;
        while (out.len() as u64) < len {
            let want = (len - out.len() as u64).min(READ_PIECE);
            let at = offset + out.len() as u64;
            let mut attempt = 1;
            let piece = loop {
                if lease.is_none() {
                    // Starting a fresh instance can fail transiently too (its `open`).
                    match self.lease().await {
                        Ok(l) => lease = Some(l),
                        Err(e) => {
                            if !self.should_retry(attempt, &e).await {
                                return Err(e);
                            }
                            attempt += 1;
                            continue;
                        }
                    }
                }
                let l = lease.as_mut().expect("leased above");
                match l.read(name, at, want).await {
                    Ok(p) => break p,
                    Err(e) => {
                        lease = None;
                        if !self.should_retry(attempt, &e).await {
                            return Err(e);
                        }
                        attempt += 1;
                    }
                }
            };
            let n = piece.len() as u64;
            self.traffic.downloaded.fetch_add(n, Ordering::Relaxed);
            out.extend_from_slice(&piece);
            if n < want {
                break;
            }
        }
        Ok(out)
    }

    /// The whole object, if it is at most `max` bytes: the size is checked before anything
    /// is downloaded, and no more than the size `stat` gave is read.
    pub async fn read_all(&self, name: &str, max: u64) -> Result<Vec<u8>, BackendError> {
        let info = self.stat(name).await?.ok_or_else(|| BackendError {
            plugin: self.pool.name.clone(),
            call: "stat",
            object: Some(name.to_string()),
            kind: ErrorKind::NotFound("no such object".into()),
        })?;
        if info.size > max {
            return Err(BackendError {
                plugin: self.pool.name.clone(),
                call: "stat",
                object: Some(name.to_string()),
                kind: ErrorKind::TooLarge { size: info.size, max },
            });
        }
        self.read(name, 0, info.size).await
    }

    /// Uploads `data` as `name`. With `if_absent`, an existing object is never replaced
    /// (see [`Backend::upload`] for what happens then).
    pub async fn upload_bytes(&self, name: &str, data: &[u8], if_absent: bool) -> Result<(), BackendError> {
        self.upload(name, data.len() as u64, if_absent, &mut std::io::Cursor::new(data)).await
    }

    /// Uploads the file at `path` (of `size` bytes) as `name`. With `if_absent`, as
    /// [`Backend::upload_bytes`].
    pub async fn upload_file(
        &self,
        name: &str,
        path: &Path,
        size: u64,
        if_absent: bool,
    ) -> Result<(), BackendError> {
        let mut file = std::fs::File::open(path).map_err(|e| self.local_error(name, path, e))?;
        self.upload(name, size, if_absent, &mut file).await
    }

    fn local_error(&self, name: &str, path: &Path, e: std::io::Error) -> BackendError {
        BackendError {
            plugin: self.pool.name.clone(),
            call: "upload",
            object: Some(name.to_string()),
            kind: ErrorKind::Other(format!("cannot read local file {}: {e}", path.display())),
        }
    }

    /// `name` as one of cairn's own object names, or an error: the host passes nothing else
    /// to `start-upload` or `delete`, so a name taken from a listing cannot make the plugin
    /// write or remove anything outside cairn's namespace.
    fn own_name(&self, call: &'static str, name: &str) -> Result<ObjectName, BackendError> {
        ObjectName::parse(name).ok_or_else(|| BackendError {
            plugin: self.pool.name.clone(),
            call,
            object: Some(escape(name).into_owned()),
            kind: ErrorKind::InvalidName(
                "not a name cairn writes; cairn never passes a foreign name back to its backend".into(),
            ),
        })
    }

    /// The one place where the append-only rule lives. Without the delete grant nothing
    /// stored is ever replaced, since replacing loses bytes just as deleting does: every
    /// upload is `if-absent`, and when the backend cannot honour that atomically, the host
    /// looks (`stat`) first. (Between that look and the upload another client could still
    /// write the name; such a backend can narrow that window, not close it.)
    ///
    /// An upload with `if_absent` that finds the object present succeeds without sending
    /// anything when the name is content-addressed and the stored bytes hash to it (they
    /// are the very bytes being uploaded); otherwise it fails with `already-exists` (other
    /// bytes under a content address are named as such), and the caller chooses another
    /// name or reports it.
    async fn upload<R: Read + Seek + Send>(
        &self,
        name: &str,
        size: u64,
        if_absent: bool,
        src: &mut R,
    ) -> Result<(), BackendError> {
        let parsed = self.own_name("start-upload", name)?;
        let append_only = !self.can_delete();
        let if_absent = if_absent || append_only;
        if append_only
            && !self.caps().conditional_put
            && let Some(present) = self.stat(name).await?
        {
            return self.already_present(&parsed, name, size, present.size).await;
        }
        // A Mutex only to lend the source to one attempt at a time inside `retry`.
        let src = tokio::sync::Mutex::new(src);
        let sent = self
            .retry(|| async { self.upload_once(name, size, if_absent, &mut **src.lock().await).await })
            .await;
        match sent {
            Ok(()) => {}
            Err(e) if if_absent && matches!(e.kind, ErrorKind::AlreadyExists(_)) => {
                let present = self.stat(name).await?.map_or(0, |i| i.size);
                return self.already_present(&parsed, name, size, present).await;
            }
            Err(e) => return Err(e),
        }
        self.traffic.uploads.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// An `if_absent` upload of `size` bytes found `name` already stored with `present`
    /// bytes: fine if it is content-addressed and holds exactly its content, else an error.
    async fn already_present(
        &self,
        parsed: &ObjectName,
        name: &str,
        size: u64,
        present: u64,
    ) -> Result<(), BackendError> {
        let exists = |why: String| BackendError {
            plugin: self.pool.name.clone(),
            call: "start-upload",
            object: Some(name.to_string()),
            kind: ErrorKind::AlreadyExists(why),
        };
        let Some(id) = parsed.content_id() else {
            return Err(exists("the object is already stored and is not replaced".into()));
        };
        let other_bytes = || {
            exists(
                "another object is stored under this content address (its bytes do not hash to its name); \
                 it was not replaced; run `cairn verify`, then `cairn repair`"
                    .into(),
            )
        };
        // Same bytes mean same size; a different size needs no download to be refused.
        if present != size {
            return Err(other_bytes());
        }
        let mut hasher = blake3::Hasher::new();
        let mut at = 0;
        while at < present {
            let piece = self.read(name, at, (present - at).min(READ_PIECE)).await?;
            if piece.is_empty() {
                return Err(other_bytes());
            }
            hasher.update(&piece);
            at += piece.len() as u64;
        }
        if Id(*hasher.finalize().as_bytes()) != id {
            return Err(other_bytes());
        }
        tracing::debug!("{name} is already stored with these bytes; not uploaded again");
        Ok(())
    }

    async fn upload_once<R: Read + Seek + Send>(
        &self,
        name: &str,
        size: u64,
        if_absent: bool,
        src: &mut R,
    ) -> Result<(), BackendError> {
        src.seek(SeekFrom::Start(0)).map_err(|e| self.local_error(name, Path::new("(source)"), e))?;
        let mut lease = self.lease().await?;
        let upload =
            lease.start_upload(name, size, if_absent).await.map_err(|e| self.diagnosed(e, Some(size)))?;
        let mut buf = vec![0u8; WRITE_PIECE.min(size as usize).max(1)];
        let mut sent = 0u64;
        let result = async {
            while sent < size {
                let want = ((size - sent) as usize).min(buf.len());
                src.read_exact(&mut buf[..want])
                    .map_err(|e| self.local_error(name, Path::new("(source)"), e))?;
                lease.write(upload, name, &buf[..want]).await?;
                sent += want as u64;
                self.traffic.uploaded.fetch_add(want as u64, Ordering::Relaxed);
            }
            lease.finish(upload, name).await
        }
        .await
        // Looked at before the abort frees what the failed upload took.
        .map_err(|e| self.diagnosed(e, Some(size)));
        if result.is_err() {
            // Best effort: the contract already keeps a failed upload invisible.
            let _ = lease.abort(upload, name).await;
        }
        lease.drop_upload(upload).await;
        if result.is_err() && lease.crashed() {
            // The instance died holding the upload, so it never cleaned up: remove the
            // unfinished upload of this name through a fresh instance.
            drop(lease);
            let _ = self.abort_incomplete_of(name).await;
        }
        result
    }

    /// A write (of `needed` bytes, when it stores something) that failed with the plugin's
    /// own error, checked against the folders granted to the plugin: a read-only or full
    /// file system there is the real cause, whatever the plugin could say (wasmtime gives a
    /// guest only a generic I/O error for both). A plugin's `permission-denied` on a write is
    /// a storage condition too. Either way the run stops: no retry can help.
    fn diagnosed(&self, err: BackendError, needed: Option<u64>) -> BackendError {
        let said = match &err.kind {
            ErrorKind::PermissionDenied(m) => {
                return BackendError {
                    kind: ErrorKind::Storage {
                        condition: Box::new(StorageCondition::Denied),
                        said: m.clone(),
                    },
                    ..err
                };
            }
            ErrorKind::Other(m) | ErrorKind::Transient(m) => m.clone(),
            _ => return err,
        };
        // The folders the plugin's message names (the fs backend names the file's full path),
        // so a read-only folder granted for reading is not blamed for another's failure;
        // every granted folder when it names none.
        let dirs = &self.pool.sandbox.dirs;
        let named: Vec<&PathBuf> =
            dirs.iter().filter(|d| d.to_str().is_some_and(|d| said.contains(d))).collect();
        let candidates = if named.is_empty() { dirs.iter().collect() } else { named };
        for folder in candidates {
            let Ok(space) = crate::space::of(folder) else { continue };
            let condition = match needed {
                _ if space.read_only => StorageCondition::ReadOnly { folder: folder.clone() },
                // Some room for the folder entries and the file system's own bookkeeping.
                Some(needed) if space.free < needed.saturating_add(64 << 10) => {
                    StorageCondition::NoSpace { folder: folder.clone(), free: space.free, needed }
                }
                _ => continue,
            };
            return BackendError { kind: ErrorKind::Storage { condition: Box::new(condition), said }, ..err };
        }
        err
    }

    /// Aborts every unfinished upload whose intended name is exactly `name`, one of cairn's.
    pub async fn abort_incomplete_of(&self, name: &str) -> Result<usize, BackendError> {
        self.own_name("abort-incomplete", name)?;
        let mut n = 0;
        for (id, target, _) in self.list_incomplete(name).await? {
            if target == name {
                self.abort_incomplete(&id).await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Deletes objects; missing ones are not an error. Every name must be one of cairn's
    /// own: a foreign name refuses the whole call before anything is deleted.
    pub async fn delete(&self, names: &[String]) -> Result<(), BackendError> {
        for name in names {
            self.own_name("delete", name)?;
        }
        for batch in names.chunks(DELETE_BATCH) {
            self.retry(|| async {
                self.lease().await?.delete(batch).await.map_err(|e| self.diagnosed(e, None))
            })
            .await?;
        }
        Ok(())
    }

    /// Unfinished uploads (id, intended name, size) below `prefix`.
    pub async fn list_incomplete(&self, prefix: &str) -> Result<Vec<(String, String, u64)>, BackendError> {
        self.retry(|| async { self.lease().await?.list_incomplete(prefix).await }).await
    }

    pub async fn abort_incomplete(&self, id: &str) -> Result<(), BackendError> {
        self.retry(|| async { self.lease().await?.abort_incomplete(id).await }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::StorageCondition;

    fn error(kind: ErrorKind) -> BackendError {
        BackendError { plugin: "fs".into(), call: "write", object: Some("data/ab/ab12".into()), kind }
    }

    #[test]
    fn storage_conditions_are_never_retried_and_say_what_to_do() {
        let base = Duration::from_millis(1);
        let full = error(ErrorKind::Storage {
            condition: Box::new(StorageCondition::NoSpace {
                folder: "/repo".into(),
                free: 0,
                needed: 16 << 20,
            }),
            said: "/repo/data/ab/.ab12: input/output error".into(),
        });
        assert!(retry_delay(1, &full, base).is_none());
        assert_eq!(
            full.to_string(),
            "backend fs: write data/ab/ab12: no space left on the device that holds /repo (0 B free, this upload \
             needs 16.0 MiB); free space there or move the repository, then run the command again (the plugin said: \
             /repo/data/ab/.ab12: input/output error)"
        );
        let read_only = error(ErrorKind::Storage {
            condition: Box::new(StorageCondition::ReadOnly { folder: "/repo".into() }),
            said: String::new(),
        });
        assert!(retry_delay(1, &read_only, base).is_none());
        // The same failure said as temporary is retried: the storage condition is what stops it.
        assert!(retry_delay(1, &error(ErrorKind::Transient("busy".into())), base).is_some());
    }
}
