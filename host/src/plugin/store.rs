//! Installed plugins: `<plugins dir>/<name>/plugin.wasm` beside a `manifest.json` that
//! records its hash, what it declared, and what it imports.
//!
//! Installing checks that the file is a component exporting `cairn:storage/backend@0.1.0`
//! with the expected types, calls `describe()`, and compiles it into the component cache.
//! Loading re-hashes the file: a plugin changed after it was installed is refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::error::{IoAt, Role};

use super::Bundled;
use super::pool::{describe, link, uses_files, uses_network};
use super::runtime::{Runtime, write_atomic};
use super::sandbox::Sandbox;

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct OptionDoc {
    pub name: String,
    pub required: bool,
    pub secret: bool,
    pub help: String,
    pub default: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Manifest {
    /// The name the config uses in `repository.backend`.
    pub name: String,
    /// The name and version the plugin gives itself.
    pub plugin_name: String,
    pub version: String,
    pub description: String,
    pub options: Vec<OptionDoc>,
    /// blake3 of plugin.wasm, hex.
    pub hash: String,
    pub size: u64,
    /// It imports wasi:http: it needs `grants.hosts`.
    pub network: bool,
    /// It imports wasi:filesystem: it can use `grants.dirs`.
    pub files: bool,
    pub installed: String,
    pub source: String,
    /// Installed from the component bundled in cairn (`cairn plugin install s3`), not a file.
    #[serde(default)]
    pub bundled: bool,
}

/// What `cairn plugin install` installs.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// A component file (a third-party plugin, or a build of one of ours).
    File(&'a Path),
    /// A component embedded in this binary.
    Bundled(&'static Bundled),
}

impl Source<'_> {
    /// `cairn plugin install ARG`: a path that exists (and is not a folder) is a file;
    /// otherwise a bundled backend's name; otherwise an error naming both possibilities.
    pub fn parse(arg: &Path) -> Result<Source<'_>> {
        if arg.exists() && !arg.is_dir() {
            return Ok(Source::File(arg));
        }
        let name = arg.to_str().unwrap_or_default();
        match super::bundled(name) {
            Some(b) if RESERVED.contains(&b.name) => bail!(
                "{} is built in: use it with [repository] backend = \"{}\", no install needed",
                b.name,
                b.name
            ),
            Some(b) => Ok(Source::Bundled(b)),
            None => bail!(
                "{}: no such file, and no backend of that name is bundled (bundled: {}; see `cairn plugin list --available`)",
                crate::untrusted::escape(&arg.display().to_string()),
                installable_names().join(", ")
            ),
        }
    }

    /// For messages: what is installed, with the name and version the plugin gives itself.
    fn describe(&self, plugin_name: &str, version: &str) -> String {
        match self {
            Source::File(path) => format!("{} ({plugin_name} {version})", path.display()),
            Source::Bundled(b) => format!("the bundled {} {}", b.name, b.version),
        }
    }
}

/// The bundled backends `cairn plugin install` takes by name (fs is built in instead).
pub fn installable_names() -> Vec<&'static str> {
    super::BUNDLED.iter().map(|b| b.name).filter(|n| !RESERVED.contains(n)).collect()
}

impl Manifest {
    /// The grants this plugin can use, for humans.
    pub fn grants_needed(&self) -> Vec<String> {
        let mut g = Vec::new();
        if self.network {
            g.push(
                "hosts: the scheme://host:port of its server(s) (it speaks HTTP through wasi:http)".into(),
            );
        }
        if self.files {
            g.push("dirs: the folder(s) it stores in, if it keeps data in local files".into());
        }
        if g.is_empty() {
            g.push("none (it imports neither files nor network)".into());
        }
        g
    }
}

pub struct PluginStore {
    dir: PathBuf,
}

/// Names reserved for built-in backends.
const RESERVED: &[&str] = &["fs"];

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !ok {
        bail!("plugin name {name:?}: use 1-64 lower-case letters, digits, '-' or '_' (give one with --name)");
    }
    if RESERVED.contains(&name) {
        bail!("plugin name {name:?} is reserved for the built-in backend; give another with --name");
    }
    Ok(())
}

impl PluginStore {
    pub fn new(dir: &Path) -> PluginStore {
        PluginStore { dir: dir.to_path_buf() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn wasm_path(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("plugin.wasm")
    }

    fn manifest_path(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("manifest.json")
    }

    /// Checks, describes, compiles and stores a plugin, from a file or bundled: the same
    /// checks and compile path either way. Replaces an installed plugin of the same name (an
    /// upgrade), except that a file never silently takes the place of a bundled backend, nor
    /// a bundled one the place of a file: that needs `force` (see [`replaces`]).
    pub async fn install(
        &self,
        runtime: &Arc<Runtime>,
        source: Source<'_>,
        name: Option<&str>,
        force: bool,
    ) -> Result<Manifest> {
        let (wasm, origin) = match source {
            Source::File(file) => (
                std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?,
                std::path::absolute(file)?.display().to_string(),
            ),
            Source::Bundled(b) => {
                (b.wasm.to_vec(), format!("bundled in cairn {}", env!("CARGO_PKG_VERSION")))
            }
        };
        let shown = match source {
            Source::File(file) => file.display().to_string(),
            Source::Bundled(b) => format!("the bundled {}", b.name),
        };
        let label = name.map(str::to_string).unwrap_or_else(|| shown.clone());
        let component = runtime.load(&wasm).with_context(|| format!("{shown} is not a usable plugin"))?;
        let engine = runtime.engine();
        let network = uses_network(engine, &component);
        let files = uses_files(engine, &component);
        // Link with everything cairn can grant, to check the exports (and their types).
        let pre = link(engine, &label, &component, true)?;
        let nothing = Sandbox {
            dirs: Vec::new(),
            hosts: Vec::new(),
            allow_delete: false,
            memory_bytes: 64 << 20,
            call_timeout: Duration::from_secs(10),
            recycle_after_calls: 0,
        };
        let info = describe(engine, &label, &pre, &nothing).await.context("describe() failed")?;
        let name = name.map(str::to_string).unwrap_or_else(|| info.name.clone());
        check_name(&name)?;
        if !force && let Some(replaced) = self.replaces(&name, source)? {
            bail!(
                "plugin {name}: {} would replace {}; run again with --force to replace it",
                crate::untrusted::escape(&source.describe(&info.name, &info.version)),
                crate::untrusted::escape(&replaced)
            );
        }
        let manifest = Manifest {
            name: name.clone(),
            plugin_name: info.name.clone(),
            version: info.version.clone(),
            description: info.description.clone(),
            options: info
                .options
                .iter()
                .map(|o| OptionDoc {
                    name: o.name.clone(),
                    required: o.required,
                    secret: o.secret,
                    help: o.help.clone(),
                    default: o.default_value.clone(),
                })
                .collect(),
            hash: blake3::hash(&wasm).to_hex().to_string(),
            size: wasm.len() as u64,
            network,
            files,
            installed: jiff::Timestamp::now().to_string(),
            source: origin,
            bundled: matches!(source, Source::Bundled(_)),
        };
        let wasm_path = self.wasm_path(&name);
        write_atomic(&wasm_path, &wasm).at(Role::PluginsFolder, &wasm_path)?;
        let manifest_path = self.manifest_path(&name);
        write_atomic(&manifest_path, &serde_json::to_vec_pretty(&manifest)?)
            .at(Role::PluginsFolder, &manifest_path)?;
        Ok(manifest)
    }

    /// What installing `source` as `name` would take the place of, when that is of the other
    /// kind: a file over a bundled backend (installed, or used by name without an install),
    /// or a bundled backend over a file. Same kind over same kind is an upgrade.
    fn replaces(&self, name: &str, source: Source<'_>) -> Result<Option<String>> {
        let bundled_source = matches!(source, Source::Bundled(_));
        Ok(match (self.get(name)?, super::bundled(name)) {
            (Some(m), _) if m.bundled != bundled_source => Some(if m.bundled {
                format!("the installed bundled {} {}", m.name, m.version)
            } else {
                format!("the installed {} {} (from {})", m.name, m.version, m.source)
            }),
            (None, Some(b)) if !bundled_source => Some(format!("the bundled {} {}", b.name, b.version)),
            _ => None,
        })
    }

    pub fn get(&self, name: &str) -> Result<Option<Manifest>> {
        let path = self.manifest_path(name);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Some(
            serde_json::from_slice(&text)
                .with_context(|| format!("{} is damaged; reinstall the plugin", path.display()))?,
        ))
    }

    pub fn list(&self) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Ok(out) };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(m) = self.get(&name)? {
                out.push(m);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The plugin's bytes, refused if they are not what was installed.
    pub fn load(&self, name: &str) -> Result<(Manifest, Vec<u8>)> {
        let manifest = self.get(name)?.ok_or_else(|| {
            anyhow!(
                "unknown backend {name:?}: it is not built in (\"fs\"), not bundled ({}) and not installed in {} \
                 (see `cairn plugin list --available`; install a third-party one with `cairn plugin install FILE.wasm`)",
                installable_names().join(", "),
                self.dir.display()
            )
        })?;
        let wasm = std::fs::read(self.wasm_path(name))
            .with_context(|| format!("plugin {name} is installed but unreadable"))?;
        let hash = blake3::hash(&wasm).to_hex().to_string();
        if hash != manifest.hash {
            bail!(
                "plugin {name} changed after it was installed (its hash is {}, {} was installed); refusing to run it. \
                 If the change is yours, install it again with `cairn plugin install`",
                &hash[..16],
                &manifest.hash[..16]
            );
        }
        Ok((manifest, wasm))
    }

    pub fn remove(&self, name: &str) -> Result<Manifest> {
        let manifest = self.get(name)?.ok_or_else(|| anyhow!("no plugin named {name:?} is installed"))?;
        std::fs::remove_dir_all(self.dir.join(name))
            .with_context(|| format!("cannot remove {}", self.dir.join(name).display()))?;
        Ok(manifest)
    }
}
