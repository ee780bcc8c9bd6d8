//! The config file: what to back up, where to, and how.
//!
//! Found at `--config FILE`, else `$CAIRN_CONFIG`, else `./cairn.toml`. Unknown keys are
//! errors (a typo must not silently disable an exclude). Relative paths are relative to the
//! folder holding the config file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

/// Default target size of a pack file.
pub const DEFAULT_PACK_SIZE: u64 = 16 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub repository: RepositoryConfig,
    #[serde(default)]
    pub backup: BackupConfig,
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    #[serde(default)]
    pub plugins: PluginsConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Further repositories jobs may name (`[repositories.NAME]`, same keys as `[repository]`).
    #[serde(default)]
    pub repositories: BTreeMap<String, RepositoryConfig>,
    /// Named jobs (`[jobs.NAME]`): what `cairn run` runs, when, with what before and after.
    #[serde(default)]
    pub jobs: BTreeMap<String, crate::runner::jobs::JobConfig>,
    /// `[monitoring]`: where `cairn run` reports for monitoring systems.
    #[serde(default)]
    pub monitoring: MonitoringConfig,
    /// Where the config was read from (not part of the file).
    #[serde(skip)]
    pub path: PathBuf,
    /// The password (or why it cannot be had) once fetched: its command runs once per run,
    /// although the plugin's messages are masked with it before the repository is unlocked.
    #[serde(skip)]
    password: PasswordMemo,
}

/// A fetched password (or the one-line reason it could not be fetched), never shown by
/// `Debug`.
#[derive(Default, Clone)]
struct PasswordMemo(std::sync::OnceLock<std::result::Result<String, String>>);

impl std::fmt::Debug for PasswordMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "PasswordMemo(fetched)"
        } else {
            "PasswordMemo(not fetched)"
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// `fs` (built in), or the name of an installed plugin, or a path to a `.wasm` component.
    pub backend: String,
    /// Options for the backend, checked against what the plugin declares.
    #[serde(default)]
    pub options: BTreeMap<String, OptionValue>,
    /// Name of an environment variable holding the password.
    pub password_env: Option<String>,
    /// A shell command whose standard output (first line) is the password.
    pub password_command: Option<String>,
    /// A file whose first line is the password.
    pub password_file: Option<PathBuf>,
    /// What the backend's sandbox may reach.
    #[serde(default)]
    pub grants: Grants,
    /// How long a command waits for another machine's conflicting repository lock
    /// (`90s`, `10m`, `1h`; `--lock-wait` overrides it).
    pub lock_wait: Option<String>,
}

/// An option value: a literal, or a secret fetched at run time.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OptionValue {
    String(String),
    Integer(i64),
    Bool(bool),
    Env { env: String },
    Command { command: String },
}

/// The sandbox of a backend plugin. Nothing outside it is reachable.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Folders the plugin may read and write (preopened at the same path).
    #[serde(default)]
    pub dirs: Vec<PathBuf>,
    /// `scheme://host:port` entries the plugin may send HTTP requests to.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Whether the host forwards delete calls (false: an append-only repository).
    #[serde(default = "yes")]
    pub delete: bool,
    /// Linear memory cap of one plugin instance, in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// Deadline of one plugin call, in seconds.
    #[serde(default = "default_call_timeout")]
    pub call_timeout_secs: u64,
    /// Retire a plugin instance after this many calls and start a fresh one (0: only when
    /// it has grown past half its share of the memory cap). For plugins whose runtime
    /// slows down or leaks in ways memory alone does not show.
    #[serde(default)]
    pub recycle_after_calls: u64,
}

impl Default for Grants {
    fn default() -> Self {
        Grants {
            dirs: Vec::new(),
            hosts: Vec::new(),
            delete: true,
            memory_mib: default_memory_mib(),
            call_timeout_secs: default_call_timeout(),
            recycle_after_calls: 0,
        }
    }
}

fn yes() -> bool {
    true
}
fn default_memory_mib() -> u64 {
    256
}
fn default_call_timeout() -> u64 {
    120
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// Files and folders to back up (absolute, or relative to the config file).
    #[serde(default)]
    pub sources: Vec<PathBuf>,
    /// Glob patterns; a pattern without `/` matches a name at any depth.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Tags recorded in every snapshot.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Target pack size, e.g. "16MiB" (between 1 MiB and 1 GiB).
    pub pack_size: Option<Size>,
    /// zstd level 1-19, or 0 for no compression. Default 1 (fast; higher levels trade
    /// speed for a slightly smaller repository).
    pub compression: Option<i32>,
    /// Worker threads for chunking, hashing, compression and encryption (default: cores).
    pub threads: Option<usize>,
}

/// How often a running backup makes its progress durable: uploads what it has packed, an
/// index, and a partial snapshot that a later run resumes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Seconds between checkpoints (default 300).
    #[serde(default = "default_checkpoint_secs")]
    pub interval_secs: u64,
    /// Source bytes read between checkpoints, e.g. "1GiB" (the default): a checkpoint starts
    /// at half of it, and reading waits rather than run a whole interval past the last
    /// completed checkpoint, so an interruption costs at most about this much reading.
    pub interval_bytes: Option<Size>,
}

/// A size in the config: a plain integer (bytes) or a string with a unit ("32MiB").
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    /// The number of bytes, or `None` when the text is not a size.
    pub fn bytes(&self) -> Option<u64> {
        match self {
            Size::Bytes(n) => Some(*n),
            Size::Text(t) => parse_size(t),
        }
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Size::Bytes(n) => write!(f, "{n}"),
            Size::Text(t) => write!(f, "{t:?}"),
        }
    }
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig { interval_secs: default_checkpoint_secs(), interval_bytes: None }
    }
}

fn default_checkpoint_secs() -> u64 {
    300
}

/// A count of a retention rule: a number, or "unlimited".
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum KeepCount {
    Number(u32),
    Word(String),
}

/// `[retention]`: the policy `cairn forget` applies when no `--keep-*` flag is given.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    pub keep_last: Option<KeepCount>,
    pub keep_hourly: Option<KeepCount>,
    pub keep_daily: Option<KeepCount>,
    pub keep_weekly: Option<KeepCount>,
    pub keep_monthly: Option<KeepCount>,
    pub keep_yearly: Option<KeepCount>,
    /// A span like "14d" or "1y6m", relative to the newest snapshot of a group.
    pub keep_within: Option<String>,
    /// Tag lists ("a" or "a,b"): snapshots with all tags of one are kept.
    #[serde(default)]
    pub keep_tag: Vec<String>,
    /// `host`, `paths`, `tags`, comma-separated (default "host,paths").
    pub group_by: Option<String>,
}

impl RetentionConfig {
    /// The policy it describes, checked.
    pub fn policy(&self) -> Result<crate::engine::retention::Policy> {
        use crate::engine::retention::{Keep, Policy};
        let count = |key: &str, v: &Option<KeepCount>| -> Result<Option<Keep>> {
            match v {
                None => Ok(None),
                Some(KeepCount::Number(n)) => Ok(Some(Keep::Count(*n))),
                Some(KeepCount::Word(w)) => {
                    w.parse::<Keep>().map(Some).map_err(|e| anyhow!("[retention] {key}: {e}"))
                }
            }
        };
        Ok(Policy {
            last: count("keep_last", &self.keep_last)?,
            hourly: count("keep_hourly", &self.keep_hourly)?,
            daily: count("keep_daily", &self.keep_daily)?,
            weekly: count("keep_weekly", &self.keep_weekly)?,
            monthly: count("keep_monthly", &self.keep_monthly)?,
            yearly: count("keep_yearly", &self.keep_yearly)?,
            within: self
                .keep_within
                .as_deref()
                .map(|w| {
                    crate::engine::retention::parse_span(w)
                        .map_err(|e| anyhow!("[retention] keep_within: {e}"))
                })
                .transpose()?,
            tags: self.keep_tag.iter().map(|t| crate::engine::retention::tag_list(t)).collect(),
        })
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Installed plugins. Default `$XDG_DATA_HOME/cairn/plugins`.
    pub dir: Option<PathBuf>,
}

/// `[monitoring]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitoringConfig {
    /// A Prometheus textfile-collector file (`*.prom`) rewritten atomically after each run.
    pub textfile: Option<PathBuf>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Journal, lock and temporary packs. Default `$XDG_STATE_HOME/cairn`.
    pub dir: Option<PathBuf>,
    /// Compiled plugins. Default `$XDG_CACHE_HOME/cairn`.
    pub cache_dir: Option<PathBuf>,
}

impl Config {
    /// Finds and loads the config: `explicit`, else `$CAIRN_CONFIG`, else `./cairn.toml`.
    pub fn locate(explicit: Option<&Path>) -> Result<Config> {
        let (path, how) = match explicit {
            Some(p) => (p.to_path_buf(), "given with --config"),
            None => match std::env::var_os("CAIRN_CONFIG") {
                Some(p) if !p.is_empty() => (PathBuf::from(p), "named by $CAIRN_CONFIG"),
                _ => (PathBuf::from("cairn.toml"), "the default"),
            },
        };
        if !path.exists() {
            bail!(
                "config file {} ({how}) does not exist; pass --config FILE or set CAIRN_CONFIG",
                path.display()
            );
        }
        Config::load(&path)
    }

    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut config = Config::parse(&text).map_err(|e| anyhow!("config {}: {e}", path.display()))?;
        config.path = std::path::absolute(path)?;
        config.resolve_paths();
        config.validate().map_err(|e| anyhow!("config {}: {e}", path.display()))?;
        Ok(config)
    }

    /// Parses TOML text, with a one-line error that gives the line and column.
    pub fn parse(text: &str) -> std::result::Result<Config, String> {
        toml::from_str::<Config>(text).map_err(|e| {
            let place = e.span().map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
                format!("line {line}, column {col}: ")
            });
            format!("{}{}", place.unwrap_or_default(), e.message().trim().replace('\n', " "))
        })
    }

    fn base_dir(&self) -> PathBuf {
        self.path.parent().map(Path::to_path_buf).unwrap_or_default()
    }

    fn resolve_paths(&mut self) {
        let base = self.base_dir();
        let fix = |p: &mut PathBuf| *p = resolve_path(&base, p);
        self.backup.sources.iter_mut().for_each(fix);
        self.repository.grants.dirs.iter_mut().for_each(fix);
        if let Some(d) = self.state.dir.as_mut() {
            fix(d);
        }
        if let Some(d) = self.state.cache_dir.as_mut() {
            fix(d);
        }
        if let Some(d) = self.plugins.dir.as_mut() {
            fix(d);
        }
        if let Some(d) = self.repository.password_file.as_mut() {
            fix(d);
        }
        for repo in self.repositories.values_mut() {
            repo.grants.dirs.iter_mut().for_each(fix);
            if let Some(d) = repo.password_file.as_mut() {
                fix(d);
            }
        }
        for job in self.jobs.values_mut() {
            job.sources.iter_mut().for_each(fix);
        }
        if let Some(d) = self.monitoring.textfile.as_mut() {
            fix(d);
        }
    }

    /// The config as job `name` sees it: its repository as `[repository]`, its sources,
    /// excludes and tags as `[backup]`, its retention (else `[retention]`) as `[retention]`,
    /// and no jobs. What `cairn run` hands to the backup, forget and verify of that job.
    pub fn job_view(&self, name: &str) -> Result<Config> {
        let default_job = crate::repo::format::DEFAULT_JOB;
        let (repository, backup, retention, same_repository) = match self.jobs.get(name) {
            Some(job) => {
                let (repository, same) = match &job.repository {
                    None => (self.repository.clone(), true),
                    Some(r) => (
                        self.repositories.get(r).cloned().ok_or_else(|| {
                            anyhow!("[jobs.{name}] repository {r:?} is not a [repositories.{r}] table")
                        })?,
                        false,
                    ),
                };
                let backup = BackupConfig {
                    sources: job.sources.clone(),
                    exclude: job.exclude.clone(),
                    tags: job.tags.clone(),
                    ..self.backup.clone()
                };
                (repository, backup, job.retention.clone().unwrap_or_else(|| self.retention.clone()), same)
            }
            None if name == default_job && !self.backup.sources.is_empty() => {
                (self.repository.clone(), self.backup.clone(), self.retention.clone(), true)
            }
            None => bail!(
                "no job {} in {}; the jobs are: {}",
                crate::untrusted::escape(name),
                self.path.display(),
                crate::runner::jobs::names(self).join(", ")
            ),
        };
        Ok(Config {
            repository,
            backup,
            state: self.state.clone(),
            checkpoint: self.checkpoint.clone(),
            plugins: self.plugins.clone(),
            retention,
            repositories: BTreeMap::new(),
            jobs: BTreeMap::new(),
            monitoring: self.monitoring.clone(),
            path: self.path.clone(),
            // The same repository's password is fetched once for all its jobs.
            password: if same_repository { self.password.clone() } else { PasswordMemo::default() },
        })
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let pw = [
            self.repository.password_env.is_some(),
            self.repository.password_command.is_some(),
            self.repository.password_file.is_some(),
        ];
        if pw.iter().filter(|x| **x).count() > 1 {
            bail!(
                "[repository] sets more than one of password_env, password_command, password_file; keep one"
            );
        }
        self.pack_size()?;
        self.checkpoint_interval()?;
        crate::runner::jobs::validate(self)?;
        if let Some(level) = self.backup.compression
            && !(0..=19).contains(&level)
        {
            bail!("[backup] compression must be between 0 (off) and 19, not {level}");
        }
        if self.repository.grants.memory_mib < 16 {
            bail!("[repository.grants] memory_mib must be at least 16");
        }
        if self.repository.grants.call_timeout_secs == 0 {
            bail!("[repository.grants] call_timeout_secs must be at least 1");
        }
        for dir in &self.repository.grants.dirs {
            self.check_grant("repository.grants.dirs entry", dir)?;
        }
        // The fs backend is granted its repository folder; a literal one is checked now, one
        // fetched at run time ({ env } or { command }) when the backend starts.
        if self.repository.backend == "fs"
            && let Some(OptionValue::String(path)) = self.repository.options.get("path")
            && Path::new(path).is_absolute()
        {
            self.check_grant("options.path", Path::new(path))?;
        }
        Ok(())
    }

    /// Refuses a folder a plugin would be granted (`what` names where it was given) when it
    /// equals, contains or lies inside one of cairn's own folders, or contains the config
    /// file: a plugin that can write there can replace the code cairn runs, the journal it
    /// trusts, or the grants themselves. Both sides are compared canonicalised, so `..` and
    /// symlinks cannot disguise an overlap; a grant holding a symlink on the way to one of
    /// them is refused too (the plugin could point the link elsewhere).
    pub fn check_grant(&self, what: &str, grant: &Path) -> Result<()> {
        let real = canonical(grant);
        for (own, path) in self.own_paths() {
            let places = own_places(&path);
            let own_real = places.last().expect("own_places ends with the path itself");
            let (overlap, link) = if &real == own_real {
                (Overlap::Equals, None)
            } else if real.starts_with(own_real) && own != OwnPath::ConfigFile {
                (Overlap::IsInside, None)
            } else if let Some(place) = places.iter().find(|p| p.starts_with(&real)) {
                (Overlap::Contains, Some(place).filter(|p| p != &own_real))
            } else {
                continue;
            };
            let resolved = if real != grant {
                format!(" (which resolves to {})", real.display())
            } else {
                String::new()
            };
            let through = link.map(|l| format!(" (through the symlink {})", l.display())).unwrap_or_default();
            bail!(
                "{what} {}{resolved} {} cairn's {} {}{through}: a plugin must not reach cairn's own files; \
                 grant a separate folder{}",
                grant.display(),
                overlap.verb(),
                own.describe(),
                path.display(),
                own.hint()
            );
        }
        Ok(())
    }

    /// cairn's own folders and the config file, as far as they can be determined (one that
    /// cannot be, for want of $HOME, is not used by this run either).
    fn own_paths(&self) -> Vec<(OwnPath, PathBuf)> {
        [
            (OwnPath::State, self.state_dir()),
            (OwnPath::Cache, self.cache_dir()),
            (OwnPath::Plugins, self.plugins_dir()),
            (OwnPath::ConfigFile, Ok(self.path.clone())),
        ]
        .into_iter()
        .filter_map(|(own, path)| Some((own, path.ok()?)))
        .collect()
    }

    pub fn pack_size(&self) -> Result<u64> {
        match &self.backup.pack_size {
            None => Ok(DEFAULT_PACK_SIZE),
            Some(text) => {
                let size = text
                    .bytes()
                    .ok_or_else(|| anyhow!("[backup] pack_size {text} is not a size like \"16MiB\""))?;
                if !(1 << 20..=1 << 30).contains(&size) {
                    bail!("[backup] pack_size must be between 1MiB and 1GiB, not {text}");
                }
                Ok(size)
            }
        }
    }

    /// How long to wait for a conflicting repository lock.
    pub fn lock_wait(&self) -> Result<std::time::Duration> {
        match &self.repository.lock_wait {
            None => Ok(crate::repo::locks::DEFAULT_WAIT),
            Some(t) => crate::repo::locks::parse_wait(t),
        }
    }

    /// (seconds, bytes) between checkpoints.
    pub fn checkpoint_interval(&self) -> Result<(std::time::Duration, u64)> {
        let bytes = match &self.checkpoint.interval_bytes {
            None => 1 << 30,
            Some(t) => t
                .bytes()
                .filter(|b| *b > 0)
                .ok_or_else(|| anyhow!("[checkpoint] interval_bytes {t} is not a size like \"1GiB\""))?,
        };
        if self.checkpoint.interval_secs == 0 {
            bail!("[checkpoint] interval_secs must be at least 1");
        }
        Ok((std::time::Duration::from_secs(self.checkpoint.interval_secs), bytes))
    }

    pub fn compression_level(&self) -> i32 {
        self.backup.compression.unwrap_or(1)
    }

    pub fn threads(&self) -> usize {
        self.backup
            .threads
            .filter(|n| *n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2))
    }

    /// The state folder: journal, lock, temporary packs.
    pub fn state_dir(&self) -> Result<PathBuf> {
        if let Some(d) = &self.state.dir {
            return Ok(d.clone());
        }
        xdg_dir("XDG_STATE_HOME", ".local/state").map(|d| d.join("cairn"))
    }

    /// The cache folder: compiled plugin components.
    pub fn cache_dir(&self) -> Result<PathBuf> {
        if let Some(d) = &self.state.cache_dir {
            return Ok(d.clone());
        }
        if let Some(d) = std::env::var_os("CAIRN_CACHE_DIR").filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(d));
        }
        xdg_dir("XDG_CACHE_HOME", ".cache").map(|d| d.join("cairn"))
    }

    /// Where installed plugins live.
    pub fn plugins_dir(&self) -> Result<PathBuf> {
        plugins_dir(self.plugins.dir.as_deref())
    }

    /// The repository password, from the configured source (fetched once).
    pub fn password(&self) -> Result<String> {
        let fetched = self.password.0.get_or_init(|| self.fetch_password().map_err(|e| format!("{e:#}")));
        fetched.clone().map_err(anyhow::Error::msg)
    }

    fn fetch_password(&self) -> Result<String> {
        let r = &self.repository;
        let pw = if let Some(var) = &r.password_env {
            std::env::var(var)
                .map_err(|_| anyhow!("the password variable ${var} (repository.password_env) is not set"))?
        } else if let Some(cmd) = &r.password_command {
            run_secret_command(cmd).context("repository.password_command")?
        } else if let Some(file) = &r.password_file {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read repository.password_file {}", file.display()))?;
            text.lines().next().unwrap_or("").to_string()
        } else {
            bail!(
                "no password source: set repository.password_env, password_command or password_file in {}",
                self.path.display()
            );
        };
        if pw.is_empty() {
            bail!("the repository password is empty");
        }
        Ok(pw)
    }
}

/// One of the places no plugin may be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OwnPath {
    State,
    Cache,
    Plugins,
    ConfigFile,
}

impl OwnPath {
    fn describe(self) -> &'static str {
        match self {
            OwnPath::State => "state folder (journal, lock)",
            OwnPath::Cache => "cache folder (compiled plugins)",
            OwnPath::Plugins => "plugins folder",
            OwnPath::ConfigFile => "config file",
        }
    }

    /// Where to move it instead, when the overlap is wanted.
    fn hint(self) -> &'static str {
        match self {
            OwnPath::State => ", or move [state] dir",
            OwnPath::Cache => ", or move [state] cache_dir",
            OwnPath::Plugins => ", or move [plugins] dir",
            OwnPath::ConfigFile => ", or move the config file",
        }
    }
}

/// How a granted folder overlaps one of cairn's own paths.
#[derive(Debug, Clone, Copy)]
enum Overlap {
    Equals,
    Contains,
    IsInside,
}

impl Overlap {
    fn verb(self) -> &'static str {
        match self {
            Overlap::Equals => "is",
            Overlap::Contains => "contains",
            Overlap::IsInside => "is inside",
        }
    }
}

/// `path` made absolute, with the symlinks of its longest existing part resolved and `.` and
/// `..` of the rest (which does not exist yet) applied by name.
fn canonical(path: &Path) -> PathBuf {
    use std::path::Component;
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let parts: Vec<Component> = abs.components().collect();
    for n in (1..=parts.len()).rev() {
        let Ok(mut out) = parts[..n].iter().collect::<PathBuf>().canonicalize() else { continue };
        for part in &parts[n..] {
            match part {
                Component::ParentDir => {
                    out.pop();
                }
                Component::Normal(name) => out.push(name),
                _ => {}
            }
        }
        return out;
    }
    abs
}

/// Every place where `path` can be changed: the location of each symlink on the way to it
/// (whoever can write the folder holding a link can point it elsewhere), then its canonical
/// form, last.
fn own_places(path: &Path) -> Vec<PathBuf> {
    use std::path::Component;
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut places = Vec::new();
    let mut at = PathBuf::new();
    for part in abs.components() {
        match part {
            Component::ParentDir => {
                at.pop();
            }
            Component::CurDir => {}
            Component::Normal(name) => {
                at.push(name);
                if at.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
                    places.push(at.clone());
                    at = canonical(&at);
                }
            }
            root => at.push(root),
        }
    }
    places.push(at);
    places
}

/// The plugin folder: `configured`, else `$CAIRN_PLUGINS_DIR`, else
/// `$XDG_DATA_HOME/cairn/plugins`.
pub fn plugins_dir(configured: Option<&Path>) -> Result<PathBuf> {
    if let Some(d) = configured {
        return Ok(d.to_path_buf());
    }
    if let Some(d) = std::env::var_os("CAIRN_PLUGINS_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    xdg_dir("XDG_DATA_HOME", ".local/share").map(|d| d.join("cairn").join("plugins"))
}

/// Runs `sh -c CMD` and returns the first line of its output.
pub fn run_secret_command(cmd: &str) -> Result<String> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("command {cmd:?} failed with {}", out.status);
    }
    let text =
        String::from_utf8(out.stdout).map_err(|_| anyhow!("command {cmd:?} printed non-UTF-8 output"))?;
    Ok(text.lines().next().unwrap_or("").to_string())
}

fn xdg_dir(var: &str, fallback: &str) -> Result<PathBuf> {
    if let Some(d) = std::env::var_os(var).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| anyhow!("neither ${var} nor $HOME is set; set [state] dir in the config"))?;
    Ok(PathBuf::from(home).join(fallback))
}

/// Expands a leading `~/` and makes relative paths relative to `base`.
pub fn resolve_path(base: &Path, p: &Path) -> PathBuf {
    if let Ok(rest) = p.strip_prefix("~")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    if p.is_absolute() { p.to_path_buf() } else { base.join(p) }
}

/// Parses sizes like `16MiB`, `16M`, `512KiB`, `1GiB`, `1048576`.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    Some((num * mult as f64) as u64)
}

impl OptionValue {
    /// The value as the plugin will see it; secrets are fetched here.
    pub fn resolve(&self, name: &str) -> Result<String> {
        match self {
            OptionValue::String(s) => Ok(s.clone()),
            OptionValue::Integer(i) => Ok(i.to_string()),
            OptionValue::Bool(b) => Ok(b.to_string()),
            OptionValue::Env { env } => {
                std::env::var(env).map_err(|_| anyhow!("option `{name}` comes from ${env}, which is not set"))
            }
            OptionValue::Command { command } => {
                run_secret_command(command).with_context(|| format!("option `{name}`"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let c = Config::parse(
            r#"
            [repository]
            backend = "fs"
            options = { path = "/srv/backup/repo" }
            password_env = "CAIRN_PASSWORD"

            [backup]
            sources = ["/home/me/Documents"]
            exclude = ["*.tmp", "**/node_modules"]

            [state]
            dir = "/var/lib/cairn"
            "#,
        )
        .unwrap();
        assert_eq!(c.repository.backend, "fs");
        assert_eq!(c.backup.exclude.len(), 2);
        assert_eq!(c.state.dir.as_deref(), Some(Path::new("/var/lib/cairn")));
        assert!(
            matches!(c.repository.options["path"], OptionValue::String(ref s) if s == "/srv/backup/repo")
        );
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = Config::parse("[repository]\nbackend = \"fs\"\nsorces = 1\n").unwrap_err();
        assert!(e.starts_with("line 3, column 1:"), "{e}");
        assert!(e.contains("sorces"), "{e}");
        let e = Config::parse("[repository\n").unwrap_err();
        assert!(e.starts_with("line 1"), "{e}");
    }

    #[test]
    fn option_values_may_come_from_env() {
        let c = Config::parse(
            "[repository]\nbackend = \"x\"\noptions = { key = { env = \"CAIRN_TEST_NOPE_123\" }, n = 3 }\n",
        )
        .unwrap();
        let err = c.repository.options["key"].resolve("key").unwrap_err().to_string();
        assert!(err.contains("CAIRN_TEST_NOPE_123"), "{err}");
        assert_eq!(c.repository.options["n"].resolve("n").unwrap(), "3");
    }

    #[test]
    fn canonical_resolves_symlinks_and_the_dotdots_of_missing_parts() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        std::fs::create_dir(real.join("a")).unwrap();
        std::os::unix::fs::symlink(real.join("a"), real.join("link")).unwrap();
        assert_eq!(canonical(&real.join("link")), real.join("a"));
        assert_eq!(canonical(&real.join("link/new/../x")), real.join("a/x"));
        assert_eq!(canonical(&real.join("missing/../a/./b")), real.join("a/b"));
    }

    #[test]
    fn own_places_include_each_symlink_on_the_way() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(real.join("target/state")).unwrap();
        std::os::unix::fs::symlink(real.join("target"), real.join("link")).unwrap();
        assert_eq!(own_places(&real.join("link/state")), vec![real.join("link"), real.join("target/state")]);
        assert_eq!(own_places(&real.join("target/./state")), vec![real.join("target/state")]);
    }

    #[test]
    fn size_options_take_integers_or_strings() {
        let base = "[repository]\nbackend = \"x\"\n";
        let c = Config::parse(&format!("{base}[checkpoint]\ninterval_bytes = 33554432\n")).unwrap();
        assert_eq!(c.checkpoint_interval().unwrap().1, 33554432);
        let c = Config::parse(&format!("{base}[checkpoint]\ninterval_bytes = \"32MiB\"\n")).unwrap();
        assert_eq!(c.checkpoint_interval().unwrap().1, 32 << 20);
        let c = Config::parse(&format!("{base}[backup]\npack_size = 8388608\n")).unwrap();
        assert_eq!(c.pack_size().unwrap(), 8 << 20);
        let c = Config::parse(&format!("{base}[backup]\npack_size = 1000\n")).unwrap();
        let e = c.pack_size().unwrap_err().to_string();
        assert!(e.contains("between 1MiB and 1GiB, not 1000"), "{e}");
        let c = Config::parse(&format!("{base}[backup]\npack_size = \"lots\"\n")).unwrap();
        let e = c.pack_size().unwrap_err().to_string();
        assert!(e.contains("pack_size \"lots\" is not a size"), "{e}");
        assert!(Config::parse(&format!("{base}[backup]\npack_size = -5\n")).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16MiB"), Some(16 << 20));
        assert_eq!(parse_size("1 GiB"), Some(1 << 30));
        assert_eq!(parse_size("512k"), Some(512 << 10));
        assert_eq!(parse_size("lots"), None);
    }
}
