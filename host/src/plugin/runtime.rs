//! The wasmtime engine shared by every plugin, and the cache of compiled components.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::error::{IoAt, Role};

use wasmtime::component::Component;
use wasmtime::{Config, Engine};

/// How often the epoch advances. A running guest yields to the async runtime at every tick,
/// which is what lets a call's deadline fire even when the guest never returns.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

pub struct Runtime {
    engine: Engine,
    cache_dir: PathBuf,
}

impl Runtime {
    pub fn new(cache_dir: &Path) -> Result<Arc<Runtime>> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config)
            .map_err(|e| anyhow::anyhow!("cannot create the WebAssembly engine: {e:#}"))?;
        let weak = engine.weak();
        std::thread::Builder::new().name("epoch-ticker".into()).spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })?;
        Ok(Arc::new(Runtime { engine, cache_dir: cache_dir.join("components") }))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles `wasm`, or loads the compiled form cached under its hash and the engine's
    /// compatibility fingerprint, so later runs skip compilation (~0.5 ms instead of ~0.1-3 s).
    ///
    /// Deserializing runs the bytes as native code, unchecked. So a cached artifact is only
    /// loaded when its blake3 hash is the one recorded (in a sidecar file) when this cairn
    /// compiled it: anything else (a tampered file, another plugin's code, a half-written
    /// file) is recompiled and rewritten, never loaded.
    pub fn load(&self, wasm: &[u8]) -> Result<Component> {
        let path = self.cache_path(wasm);
        match self.cached(&path) {
            Cached::Trusted(compiled) => {
                // SAFETY: these bytes hash to what this cairn recorded when it compiled them
                // with an engine of the same compatibility hash (part of the file name).
                match unsafe { Component::deserialize(&self.engine, &compiled) } {
                    Ok(c) => return Ok(c),
                    Err(e) => tracing::warn!("discarding cached component {}: {e}", path.display()),
                }
            }
            Cached::Mismatch => tracing::warn!(
                "the compiled plugin {} is not what cairn compiled (its hash differs from the one recorded); \
                 recompiling it",
                path.display()
            ),
            // Written by a cairn that recorded no hashes, or interrupted before it did.
            Cached::Unrecorded => {
                tracing::info!("recompiling {}: no hash was recorded for it", path.display())
            }
            Cached::Absent => {}
        }
        let compiled = self
            .engine
            .precompile_component(wasm)
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("not a valid WebAssembly component")?;
        if let Err(e) = write_cached(&path, &compiled).at(Role::Cache, &path) {
            // Only slower next time: the component was compiled and runs.
            tracing::warn!("cannot cache the compiled plugin: {e}");
        }
        // SAFETY: these bytes were just produced by this engine.
        Ok(unsafe { Component::deserialize(&self.engine, &compiled) }?)
    }

    /// The cached artifact at `path`, read once (so what is checked is what is loaded).
    fn cached(&self, path: &Path) -> Cached {
        let Ok(compiled) = std::fs::read(path) else { return Cached::Absent };
        let Ok(recorded) = std::fs::read_to_string(hash_path(path)) else { return Cached::Unrecorded };
        if recorded.trim() == blake3::hash(&compiled).to_hex().as_str() {
            Cached::Trusted(compiled)
        } else {
            Cached::Mismatch
        }
    }

    fn cache_path(&self, wasm: &[u8]) -> PathBuf {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let engine_fp = h.finish();
        let id = blake3::hash(wasm).to_hex();
        self.cache_dir.join(format!("{}-{engine_fp:016x}.cwasm", &id[..32]))
    }
}

/// What the cache holds for one component.
enum Cached {
    Absent,
    /// Present, without a recorded hash.
    Unrecorded,
    /// Present, not matching its recorded hash.
    Mismatch,
    /// The compiled bytes, matching the hash recorded when they were compiled.
    Trusted(Vec<u8>),
}

/// The sidecar holding the blake3 hash (hex) of the compiled artifact at `path`.
fn hash_path(path: &Path) -> PathBuf {
    path.with_extension("cwasm.blake3")
}

/// Writes a compiled artifact, then the hash that makes it loadable. A crash in between
/// leaves an artifact without a matching hash, which is recompiled.
fn write_cached(path: &Path, compiled: &[u8]) -> std::io::Result<()> {
    write_atomic(path, compiled)?;
    write_atomic(&hash_path(path), blake3::hash(compiled).to_hex().as_bytes())
}

/// Writes a file under a temporary name and renames it, so readers never see half a file.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, data)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
