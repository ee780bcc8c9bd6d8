//! The repository: its format, and opening or creating one through a backend.
//!
//! Opening means: start the backend plugin, unlock a key with the password, read the
//! repository parameters, and open (and lock, for writing commands) the local journal in
//! `<state dir>/<repository id>/`.

pub mod format;
pub mod keys;
pub mod locks;
pub mod rebuild;
pub mod reconcile;
pub mod sync;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};

use crate::backend::Backend;
use crate::config::{Config, OptionValue};
use crate::crypto::{KeyFile, MasterKey};
use crate::error::{IoAt, Role};
use crate::ids::Id;
use crate::journal::{Journal, ObjectKind};
use crate::lock::{Lock, hostname};
use crate::plugin::Secrets;
use crate::plugin::pool::PluginPool;
use crate::plugin::runtime::Runtime;
use crate::plugin::sandbox::{Sandbox, parse_origin};
use format::{CONFIG_NAME, ChunkerParams, RepoConfig, WholeObject};

pub struct Repository {
    pub backend: Arc<Backend>,
    pub key: Arc<MasterKey>,
    pub params: RepoConfig,
    /// The key file (`keys/<id>`) the password opened: the one `key remove` refuses.
    pub key_name: String,
    pub journal: Arc<Journal>,
    /// `<state dir>/<repository id>`: journal, lock, temporary packs.
    pub dir: PathBuf,
    lock: Option<Lock>,
    /// This command's lock in the repository (`locks/`), until [`Repository::release`].
    remote_lock: std::sync::Mutex<Option<locks::Held>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads only; no lock, no reconciliation (may run beside a backup).
    Read,
    /// May write: takes the journal lock and reconciles interrupted work first.
    Write,
    /// Takes the lock and settles interrupted work, but deletes nothing (`verify`,
    /// `repair` without `--delete-unrecoverable`).
    Inspect,
    /// As `Write`, alone: an exclusive lock in the repository (`prune`), so no other
    /// machine's command runs meanwhile.
    Exclusive,
}

impl Access {
    /// The repository lock a command of this access takes: reads that do not depend on the
    /// data staying (listing snapshots) take none.
    fn remote_lock(self) -> Option<format::LockKind> {
        match self {
            Access::Read => None,
            Access::Write | Access::Inspect => Some(format::LockKind::Shared),
            Access::Exclusive => Some(format::LockKind::Exclusive),
        }
    }
}

/// Where a backend's component comes from: built in, installed (checked against its
/// install-time hash), bundled (a name like `s3` that is not installed: it just works, and an
/// installed plugin of that name takes precedence), or a `.wasm` path (for development).
pub fn component_bytes(config: &Config) -> Result<(String, Vec<u8>)> {
    let backend = &config.repository.backend;
    if backend == "fs" {
        return Ok(("fs".into(), crate::plugin::BUILTIN_FS.to_vec()));
    }
    if backend.ends_with(".wasm") {
        let path =
            crate::config::resolve_path(config.path.parent().unwrap_or(Path::new(".")), Path::new(backend));
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read plugin {}", path.display()))?;
        let name =
            path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| backend.clone());
        return Ok((name, bytes));
    }
    let store = crate::plugin::store::PluginStore::new(&config.plugins_dir()?);
    if store.get(backend)?.is_none()
        && let Some(bundled) = crate::plugin::bundled(backend)
    {
        return Ok((bundled.name.into(), bundled.wasm.to_vec()));
    }
    let (manifest, bytes) = store.load(backend)?;
    Ok((manifest.name, bytes))
}

/// Starts the configured backend. `creating` makes the fs backend's folder if missing.
pub async fn open_backend(config: &Config, creating: bool) -> Result<Backend> {
    let (name, wasm) = component_bytes(config)?;
    let repo = &config.repository;
    let mut options = Vec::new();
    // Masked out of whatever the plugin says: the password, and values fetched at run time
    // (the pool adds the options the plugin declares secret). A password that cannot be
    // had yet is reported where it is needed.
    let mut secrets = Secrets::default();
    if let Ok(password) = config.password() {
        secrets.add(&password);
    }
    for (k, v) in &repo.options {
        let value = v.resolve(k)?;
        if matches!(v, OptionValue::Env { .. } | OptionValue::Command { .. }) {
            secrets.add(&value);
        }
        options.push((k.clone(), value));
    }
    let grants = &repo.grants;
    let mut dirs = grants.dirs.clone();
    if repo.backend == "fs" {
        // The built-in backend is granted exactly its repository folder.
        let path = options
            .iter()
            .find(|(k, _)| k == "path")
            .map(|(_, v)| PathBuf::from(v))
            .ok_or_else(|| anyhow!("the fs backend needs options.path, the repository folder"))?;
        if !path.is_absolute() {
            bail!("options.path {} must be an absolute path", path.display());
        }
        config.check_grant("options.path", &path)?;
        dirs.push(path);
    }
    for dir in &dirs {
        if creating && !dir.exists() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        if !dir.is_dir() {
            bail!(
                "the folder {} does not exist; check the repository options in {}, or run `cairn init`",
                dir.display(),
                config.path.display()
            );
        }
    }
    let mut hosts = Vec::new();
    for h in &grants.hosts {
        hosts.push(parse_origin(h).ok_or_else(|| {
            anyhow!("repository.grants.hosts entry {h:?} is not of the form scheme://host:port")
        })?);
    }
    let sandbox = Sandbox {
        dirs,
        hosts,
        allow_delete: grants.delete,
        memory_bytes: (grants.memory_mib as usize) << 20,
        call_timeout: std::time::Duration::from_secs(grants.call_timeout_secs),
        recycle_after_calls: grants.recycle_after_calls,
    };
    let runtime = Runtime::new(&config.cache_dir()?)?;
    let component = runtime.load(&wasm).with_context(|| format!("plugin {name}"))?;
    let instances = config.threads().max(4);
    let pool = PluginPool::start(runtime, &name, &component, sandbox, options, secrets, instances).await?;
    Ok(Backend::new(pool))
}

impl Repository {
    /// Creates a new repository.
    pub async fn init(config: &Config, chunker: ChunkerParams) -> Result<(Repository, String)> {
        let backend = open_backend(config, true).await?;
        if backend.stat(CONFIG_NAME).await?.is_some() || !backend.list("keys/").await?.is_empty() {
            bail!(
                "a repository already exists at {}; nothing was changed. To join it from this machine, \
                 keep this config pointing at it with its password and run any command (e.g. `cairn \
                 snapshots`): the first one builds this machine's journal from the repository",
                describe(config)
            );
        }
        let password = config.password()?;
        let key = MasterKey::generate();
        let mut id = [0u8; 16];
        getrandom::fill(&mut id)?;
        let params = RepoConfig {
            version: 1,
            id: hex::encode(id),
            chunker,
            created: jiff::Timestamp::now().to_string(),
        };
        let keyfile =
            serde_json::to_vec_pretty(&KeyFile::create(&key, &password, &hostname(), &keys::username())?)?;
        let key_name = format::key_name(&Id::of_bytes(&keyfile));
        let sealed = format::seal_object(&key, format::AAD_CONFIG, &params, true)?;
        // The key first: a `config` without a key would be an unopenable repository.
        backend.upload_bytes(&key_name, &keyfile, true).await?;
        backend.upload_bytes(CONFIG_NAME, &sealed, true).await?;
        let unlocked = Unlocked { backend, key, params, key_name: key_name.clone() };
        let repo = Repository::attach(config, unlocked, Access::Write)?;
        repo.journal.record_present(
            &key_name,
            ObjectKind::Key,
            keyfile.len() as u64,
            Some(&Id::of_bytes(&keyfile)),
            &[],
        )?;
        repo.journal.record_present(CONFIG_NAME, ObjectKind::Config, sealed.len() as u64, None, &[])?;
        Ok((repo, key_name))
    }

    /// Starts the backend and unlocks the repository: its key and parameters.
    async fn unlock(config: &Config) -> Result<Unlocked> {
        let backend = open_backend(config, false).await?;
        let (keys, foreign): (Vec<_>, Vec<_>) =
            backend.list("keys/").await?.into_iter().partition(|k| {
                matches!(format::ObjectName::parse(&k.name), Some(format::ObjectName::Key(_)))
            });
        for k in &foreign {
            tracing::warn!(
                "ignoring {}: not a key file name cairn writes",
                crate::untrusted::escape(&k.name)
            );
        }
        if keys.is_empty() {
            bail!("no cairn repository at {} (it has no keys/); run `cairn init` first", describe(config));
        }
        let password = config.password()?;
        let mut key = None;
        // Key files are untrusted data: one that cannot be read, parsed, or afforded is
        // skipped with a warning, and the next one is tried.
        let mut skipped = Vec::new();
        for k in &keys {
            match try_key(&backend, &k.name, &password).await {
                Ok(Some(found)) => {
                    key = Some((found, k.name.clone()));
                    break;
                }
                Ok(None) => {}
                Err(why) => {
                    let name = crate::untrusted::escape(&k.name).into_owned();
                    tracing::warn!("skipping key file {name}: {why}");
                    skipped.push(name);
                }
            }
        }
        if key.is_none() && skipped.len() == keys.len() {
            bail!(
                "no key file in the repository could be used ({}; see the warnings above); \
                 restore keys/ from a copy, nothing was changed",
                skipped.join(", ")
            );
        }
        let (key, key_name) = key.ok_or_else(|| {
            anyhow!(
                "wrong password: none of the {} key(s) in the repository opens with it; nothing was changed",
                keys.len() - skipped.len()
            )
        })?;
        let sealed = format::read_object(&backend, WholeObject::Config, CONFIG_NAME)
            .await
            .context("cannot read the repository config")?;
        let params: RepoConfig = format::open_object(&key, format::AAD_CONFIG, &sealed, true)
            .context("the repository config object is damaged")?;
        if params.version != 1 {
            bail!("repository format version {} is not supported by this cairn", params.version);
        }
        Ok(Unlocked { backend, key, params, key_name })
    }

    /// Opens an existing repository: its lock in the repository taken first (for accesses
    /// that take one), then interrupted work settled and the journal brought up to date, so
    /// what the journal says holds while the lock is held.
    pub async fn open(config: &Config, access: Access) -> Result<Repository> {
        Repository::open_locked(config, access, access.remote_lock()).await
    }

    /// Opens for reading the data (`restore`): as [`Access::Read`], but with a shared lock in
    /// the repository, so that no prune deletes what is being read.
    pub async fn open_reading(config: &Config) -> Result<Repository> {
        Repository::open_locked(config, Access::Read, Some(format::LockKind::Shared)).await
    }

    async fn open_locked(
        config: &Config,
        access: Access,
        lock: Option<format::LockKind>,
    ) -> Result<Repository> {
        let unlocked = Repository::unlock(config).await?;
        let repo = Repository::attach_or_join(config, unlocked, access).await?;
        if let Some(kind) = lock {
            match repo.take_remote_lock(kind, config.lock_wait()?).await {
                Ok(()) => {}
                // Commands that only read (restore, verify) still run with credentials that
                // cannot write a lock, and say what that risks.
                Err(e)
                    if matches!(access, Access::Read | Access::Inspect)
                        && e.downcast_ref::<locks::Busy>().is_none() =>
                {
                    tracing::warn!(
                        "cannot take a shared lock in the repository ({}); going on without: a prune on \
                         another machine could remove data while this command reads it",
                        crate::error::one_line(&e)
                    );
                }
                Err(e) => return Err(e),
            }
        }
        let report = match access {
            Access::Write | Access::Exclusive => Some(reconcile::reconcile(&repo, true).await?),
            Access::Inspect => Some(reconcile::reconcile(&repo, false).await?),
            Access::Read => None,
        };
        sync::sync_remote(&repo).await?;
        let took_over = repo.lock.as_ref().is_some_and(|l| l.took_over);
        if took_over || report.is_some_and(|r| r.interrupted()) {
            reconcile::report_unknown(&repo).await?;
        }
        Ok(repo)
    }

    /// Attaches the local journal; a machine joining an existing repository has none yet
    /// (or a join that was interrupted left one half built), so it is built from the
    /// repository first (index objects and pack headers, never whole packs), with progress on
    /// stderr, and the command carries on. The lock is held while building, even for reading
    /// commands, so two first commands do not build the same journal at once.
    async fn attach_or_join(config: &Config, unlocked: Unlocked, access: Access) -> Result<Repository> {
        let dir = config.state_dir()?.join(&unlocked.params.id);
        let path = dir.join("journal.sqlite");
        if !needs_join(&path) {
            return Repository::attach(config, unlocked, access);
        }
        let Unlocked { backend, key, params, key_name } = unlocked;
        std::fs::create_dir_all(&dir).at(Role::StateFolder, &dir)?;
        let lock = Lock::acquire(&dir.join("lock"))?;
        let journal = Journal::open(&path)?;
        let mut repo = Repository {
            backend: Arc::new(backend),
            key: Arc::new(key),
            params,
            key_name,
            journal: Arc::new(journal),
            dir,
            lock: Some(lock),
            remote_lock: std::sync::Mutex::new(None),
        };
        eprintln!(
            "cairn: this machine has no journal for repository {} at {} yet; building it from the \
             repository's index (a one-time step when joining)",
            repo.params.id,
            describe(config)
        );
        let started = std::time::Instant::now();
        let report = rebuild::rebuild_with_progress(&repo, true).await?;
        eprintln!(
            "cairn: journal built in {:.1}s: {} pack(s), {} chunk(s), {} snapshot(s); carrying on",
            started.elapsed().as_secs_f64(),
            report.packs_from_index + report.packs_from_headers,
            report.blobs,
            report.snapshots
        );
        if access == Access::Read {
            repo.lock = None;
        }
        repo.backend.expect_objects(repo.journal.object_count()?);
        Ok(repo)
    }

    fn attach(config: &Config, unlocked: Unlocked, access: Access) -> Result<Repository> {
        let Unlocked { backend, key, params, key_name } = unlocked;
        let dir = config.state_dir()?.join(&params.id);
        let journal_path = dir.join("journal.sqlite");
        std::fs::create_dir_all(&dir).at(Role::StateFolder, &dir)?;
        let lock = match access {
            Access::Write | Access::Inspect | Access::Exclusive => {
                let lock = Lock::acquire(&dir.join("lock"))?;
                crate::testing::pause_point("lock-held");
                Some(lock)
            }
            Access::Read => None,
        };
        let journal = Journal::open(&journal_path)?;
        backend.expect_objects(journal.object_count()?);
        Ok(Repository {
            backend: Arc::new(backend),
            key: Arc::new(key),
            params,
            key_name,
            journal: Arc::new(journal),
            dir,
            lock,
            remote_lock: std::sync::Mutex::new(None),
        })
    }

    /// Takes this command's lock in the repository (see `locks`), waiting up to `wait`.
    async fn take_remote_lock(&self, kind: format::LockKind, wait: std::time::Duration) -> Result<()> {
        let held = locks::acquire(self.backend.clone(), self.key.clone(), kind, wait).await?;
        *self.remote_lock.lock().unwrap() = Some(held);
        Ok(())
    }

    /// Whether this command holds a lock in the repository (and so may trust a listing to
    /// be a settled state, not a prune half way).
    pub fn holds_remote_lock(&self) -> bool {
        self.remote_lock.lock().unwrap().is_some()
    }

    /// Fails unless this command still holds its repository lock (refreshed in time, not
    /// removed by another machine as stale). Called before a snapshot is written: a
    /// snapshot written without the lock could reference data a prune is deleting.
    pub async fn check_lock(&self) -> Result<()> {
        let held = self.remote_lock.lock().unwrap().take();
        let Some(held) = held else { return Ok(()) };
        let result = held.check().await;
        *self.remote_lock.lock().unwrap() = Some(held);
        result
    }

    /// Releases this command's repository lock. Every command calls it when done, failed
    /// or not (an async removal cannot run in `Drop`); a lock a crash leaves goes stale.
    pub async fn release(&self) {
        let held = self.remote_lock.lock().unwrap().take();
        if let Some(held) = held {
            held.release().await;
        }
    }

    /// Opens for `repair`: locked, interrupted work settled without deleting anything, and
    /// the snapshots the journal did not know yet that are newer than any it knew (another
    /// client's, or this journal is an old copy): destructive repairs are refused then.
    pub async fn open_for_repair(config: &Config) -> Result<(Repository, Vec<(Id, format::Snapshot)>)> {
        let unlocked = Repository::unlock(config).await?;
        let repo = Repository::attach_or_join(config, unlocked, Access::Inspect).await?;
        repo.take_remote_lock(format::LockKind::Exclusive, config.lock_wait()?).await?;
        reconcile::reconcile(&repo, false).await?;
        let before = repo.journal.snapshots()?;
        let newest = before.iter().map(|(_, s)| s.time_ns).max().unwrap_or(i64::MIN);
        let known: std::collections::HashSet<Id> = before.into_iter().map(|(id, _)| id).collect();
        sync::sync_remote(&repo).await?;
        let stale = repo
            .journal
            .snapshots()?
            .into_iter()
            .filter(|(id, s)| !known.contains(id) && s.time_ns > newest && !known.is_empty())
            .collect();
        Ok((repo, stale))
    }

    /// Opens the repository with a journal rebuilt from the repository alone. A rebuild
    /// that was interrupted continues; any other journal there (corrupt, or healthy but
    /// unwanted) is moved aside, never deleted.
    pub async fn open_rebuilding(config: &Config) -> Result<(Repository, rebuild::Report, Option<PathBuf>)> {
        let Unlocked { backend, key, params, key_name } = Repository::unlock(config).await?;
        let dir = config.state_dir()?.join(&params.id);
        std::fs::create_dir_all(&dir).at(Role::StateFolder, &dir)?;
        let lock = Lock::acquire(&dir.join("lock"))?;
        let path = dir.join("journal.sqlite");
        let resumable = path.exists()
            && Journal::open(&path).ok().and_then(|j| j.meta("rebuild").ok().flatten()).as_deref()
                == Some("in progress");
        let mut moved = None;
        if path.exists() && !resumable {
            let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%S").to_string();
            let aside = dir.join(format!("journal.sqlite.replaced-{stamp}"));
            std::fs::rename(&path, &aside)?;
            for ext in ["-wal", "-shm"] {
                let side = dir.join(format!("journal.sqlite{ext}"));
                if side.exists() {
                    std::fs::rename(&side, dir.join(format!("journal.sqlite.replaced-{stamp}{ext}")))?;
                }
            }
            moved = Some(aside);
        }
        let journal = Journal::open(&path)?;
        let repo = Repository {
            backend: Arc::new(backend),
            key: Arc::new(key),
            params,
            key_name,
            journal: Arc::new(journal),
            dir,
            lock: Some(lock),
            remote_lock: std::sync::Mutex::new(None),
        };
        repo.take_remote_lock(format::LockKind::Shared, config.lock_wait()?).await?;
        let report = rebuild::rebuild(&repo).await?;
        Ok((repo, report, moved))
    }

    /// Where temporary packs are written before upload.
    /// Deletes objects by the one deletion protocol: all are journaled as `deleting` (in one
    /// committed transaction) before the first delete is sent, and forgotten (a snapshot with its row) only
    /// once the backend has confirmed. A run killed in between leaves `deleting` rows, which
    /// the next writing command rolls forward (`reconcile`), so a deletion is never half done
    /// and never forgotten before it happened.
    pub async fn delete_objects(&self, objects: &[(String, ObjectKind)]) -> Result<()> {
        self.journal.begin_deletes(objects)?;
        crate::testing::pause_point("delete-journaled");
        // Batches run side by side on the runtime's threads, as many as the backend takes
        // at once: deleting a large file costs the storage time (freeing its blocks), and a
        // few deletions at once overlap it. Every batch is waited for, also after one fails,
        // so no call is cut off half way; the first error is returned.
        let lanes = self.backend.concurrency();
        let per = objects.len().div_ceil(lanes).clamp(1, 256);
        let mut running = tokio::task::JoinSet::new();
        let mut first_error = None;
        for batch in objects.chunks(per) {
            if running.len() >= lanes
                && let Some(Err(e)) = running.join_next().await.map(flatten_join)
            {
                first_error.get_or_insert(e);
            }
            if first_error.is_some() {
                break;
            }
            let names: Vec<String> = batch.iter().map(|(n, _)| n.clone()).collect();
            let (backend, journal) = (self.backend.clone(), self.journal.clone());
            running.spawn(async move {
                backend.delete(&names).await?;
                journal.confirm_deletes(&names)
            });
        }
        while let Some(done) = running.join_next().await {
            if let Err(e) = flatten_join(done) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Deletes snapshot objects (see [`Repository::delete_objects`]).
    pub async fn delete_snapshots(&self, ids: &[Id]) -> Result<()> {
        let objects: Vec<(String, ObjectKind)> =
            ids.iter().map(|id| (format::snapshot_name(id), ObjectKind::Snapshot)).collect();
        self.delete_objects(&objects).await
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }
}

/// A spawned task's result, with a panic as an error.
fn flatten_join(done: Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    done.map_err(|e| anyhow!("a delete task failed: {e}"))?
}

/// Whether this machine must build its journal before using the repository: it has none,
/// or the build was interrupted. A journal that cannot be opened is not rebuilt silently
/// (opening it reports it as corrupt and says how to replace it).
fn needs_join(journal: &Path) -> bool {
    if !journal.exists() {
        return true;
    }
    Journal::open(journal).ok().and_then(|j| j.meta("rebuild").ok().flatten()).as_deref()
        == Some("in progress")
}

/// What unlocking gives: the started backend, the master key, the key file that opened it,
/// and the repository parameters.
struct Unlocked {
    backend: Backend,
    key: MasterKey,
    params: RepoConfig,
    key_name: String,
}

/// Why a key file was skipped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeySkipped {
    #[error("{0}")]
    Read(#[from] format::ReadObjectError),
    #[error("it is not a key file: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("{0}")]
    Unusable(#[from] crate::crypto::KeyFileError),
}

/// Reads one key file (capped at a key file's maximum size) and tries the password on it:
/// `Ok(None)` when the password does not open it, `Err` when it cannot be used at all.
pub(crate) async fn try_key(
    backend: &Backend,
    name: &str,
    password: &str,
) -> Result<Option<MasterKey>, KeySkipped> {
    let bytes = format::read_object(backend, WholeObject::Key, name).await?;
    let file: KeyFile = serde_json::from_slice(&bytes)?;
    Ok(file.unlock(password)?)
}

/// A short description of where the repository is, for messages.
pub fn describe(config: &Config) -> String {
    let r = &config.repository;
    match r.options.get("path") {
        Some(crate::config::OptionValue::String(p)) => format!("{}:{p}", r.backend),
        _ => r.backend.clone(),
    }
}
