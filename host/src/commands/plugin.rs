//! `cairn plugin install|list|info|remove`: manage storage backend plugins.

use std::path::Path;

use anyhow::Result;
use serde_json::json;

use super::Ctx;
use crate::config::Config;
use crate::plugin::Secrets;
use crate::plugin::runtime::Runtime;
use crate::plugin::store::{Manifest, PluginStore, Source};

/// The plugin store and cache of the config when there is one, else the defaults (plugin
/// commands work before any config exists).
fn store(ctx: &Ctx) -> Result<(PluginStore, std::path::PathBuf, Option<Config>)> {
    let config = match (&ctx.config_path, std::env::var_os("CAIRN_CONFIG"), Path::new("cairn.toml").exists())
    {
        (None, None, false) => None,
        _ => Some(ctx.config()?),
    };
    let (plugins, cache) = match &config {
        Some(c) => (c.plugins_dir()?, c.cache_dir()?),
        None => (crate::config::plugins_dir(None)?, default_cache()?),
    };
    Ok((PluginStore::new(&plugins), cache, config))
}

fn default_cache() -> Result<std::path::PathBuf> {
    let probe = Config::parse("[repository]\nbackend = \"fs\"\n").map_err(anyhow::Error::msg)?;
    probe.cache_dir()
}

/// The manifest with everything the plugin said about itself (recorded at install) cleaned
/// by `secrets` (masked and escaped) for display.
fn cleaned(m: &Manifest, secrets: &Secrets) -> Manifest {
    let mut m = m.clone();
    m.plugin_name = secrets.clean(&m.plugin_name);
    m.version = secrets.clean(&m.version);
    m.description = secrets.clean(&m.description);
    for o in &mut m.options {
        o.name = secrets.clean(&o.name);
        o.help = secrets.clean(&o.help);
        o.default = o.default.as_deref().map(|d| secrets.clean(d));
    }
    m
}

fn manifest_json(m: &Manifest) -> serde_json::Value {
    json!({
        "name": m.name,
        "plugin_name": m.plugin_name,
        "version": m.version,
        "description": m.description,
        "options": m.options,
        "hash": m.hash,
        "size": m.size,
        "uses_network": m.network,
        "uses_files": m.files,
        "grants_needed": m.grants_needed(),
        "installed": m.installed,
        "source": m.source,
        "bundled": m.bundled,
    })
}

pub fn install(ctx: &Ctx, file: &Path, name: Option<&str>, force: bool) -> Result<()> {
    let source = Source::parse(file)?;
    let (store, cache, _) = store(ctx)?;
    let runtime = Runtime::new(&cache)?;
    let m = cleaned(&ctx.rt.block_on(store.install(&runtime, source, name, force))?, &Secrets::default());
    if ctx.json {
        ctx.print_json(&manifest_json(&m));
    } else {
        println!(
            "installed plugin {} ({} {}) in {}",
            m.name,
            m.plugin_name,
            m.version,
            store.dir().display()
        );
        println!("use it with: [repository] backend = \"{}\"", m.name);
        for g in m.grants_needed() {
            println!("grants it needs: {g}");
        }
    }
    Ok(())
}

pub fn list(ctx: &Ctx, available: bool) -> Result<()> {
    let (store, _, _) = store(ctx)?;
    if available {
        return list_available(ctx, &store);
    }
    let all: Vec<Manifest> = store.list()?.iter().map(|m| cleaned(m, &Secrets::default())).collect();
    if ctx.json {
        let mut v = vec![json!({"name": "fs", "builtin": true})];
        v.extend(all.iter().map(manifest_json));
        ctx.print_json(&json!(v));
        return Ok(());
    }
    println!("{:<16} {:<10} DESCRIPTION", "NAME", "VERSION");
    println!(
        "{:<16} {:<10} a folder on a local or mounted filesystem (built in)",
        "fs",
        env!("CARGO_PKG_VERSION")
    );
    for m in &all {
        println!("{:<16} {:<10} {}", m.name, m.version, m.description);
    }
    Ok(())
}

/// The backends bundled in this binary: name, version, size, and what is installed under
/// that name (nothing, the bundled one, or a file that replaced it).
fn list_available(ctx: &Ctx, store: &PluginStore) -> Result<()> {
    let mut rows = Vec::new();
    for b in crate::plugin::BUNDLED {
        let installed = match store.get(b.name)? {
            _ if b.name == "fs" => "built in".to_string(),
            None => "not installed (used by name)".to_string(),
            Some(m) if m.bundled => format!("installed: bundled {}", m.version),
            Some(m) => format!("installed: {} from a file", m.version),
        };
        let installed = crate::untrusted::escape(&installed).into_owned();
        rows.push((b, installed));
    }
    if ctx.json {
        let v: Vec<_> = rows
            .iter()
            .map(|(b, installed)| {
                json!({
                    "name": b.name,
                    "version": b.version,
                    "description": b.description,
                    "size": b.wasm.len(),
                    "status": installed,
                })
            })
            .collect();
        ctx.print_json(&json!(v));
        return Ok(());
    }
    println!("{:<10} {:<10} {:>8}  {:<30} DESCRIPTION", "NAME", "VERSION", "SIZE", "STATUS");
    for (b, installed) in &rows {
        println!(
            "{:<10} {:<10} {:>8}  {:<30} {}",
            b.name,
            b.version,
            crate::commands::human_bytes(b.wasm.len() as u64),
            installed,
            b.description
        );
    }
    Ok(())
}

pub fn info(ctx: &Ctx, name: &str) -> Result<()> {
    let (store, _, config) = store(ctx)?;
    let m = store.get(name)?.ok_or_else(|| match crate::plugin::bundled(name) {
        Some(b) => anyhow::anyhow!(
            "{name} {} is bundled in cairn but not installed: `cairn plugin install {name}` installs it (and shows its options and grants)",
            b.version
        ),
        None => anyhow::anyhow!("no plugin named {name:?} is installed (see `cairn plugin list`)"),
    })?;
    // Capabilities come from `open`, which needs the plugin's options: report them when the
    // config uses this plugin (whose secrets are then masked out of what it says).
    let (caps, secrets) = match &config {
        Some(c) if c.repository.backend == name => {
            let backend = ctx.rt.block_on(crate::repo::open_backend(c, false))?;
            let caps = *backend.caps();
            let caps = json!({
                "ranged_reads": caps.ranged_reads,
                "atomic_put": caps.atomic_put,
                "conditional_put": caps.conditional_put,
                "max_object_size": caps.max_object_size,
                "preferred_concurrency": caps.preferred_concurrency,
            });
            (Some(caps), backend.pool().secrets().clone())
        }
        _ => (None, Secrets::default()),
    };
    let m = cleaned(&m, &secrets);
    if ctx.json {
        let mut v = manifest_json(&m);
        v["capabilities"] = caps.unwrap_or(serde_json::Value::Null);
        ctx.print_json(&v);
        return Ok(());
    }
    println!("{} ({} {}): {}", m.name, m.plugin_name, m.version, m.description);
    println!("installed {} from {}; {} bytes, blake3 {}", m.installed, m.source, m.size, m.hash);
    println!("options:");
    for o in &m.options {
        let mut flags = vec![if o.required { "required" } else { "optional" }];
        if o.secret {
            flags.push("secret: give it as { env = \"VAR\" } or { command = \"...\" }");
        }
        let default = match o.default.as_deref() {
            Some("") => " (default empty)".to_string(),
            Some(d) => format!(" (default {d})"),
            None => String::new(),
        };
        println!("  {:<20} [{}]{default} {}", o.name, flags.join(", "), o.help);
    }
    println!("grants it needs:");
    for g in m.grants_needed() {
        println!("  {g}");
    }
    match caps {
        Some(c) => println!("capabilities (as opened with this config): {c}"),
        None => println!(
            "capabilities: reported when it is opened; name it in a config and run `cairn plugin info {name}` with that config"
        ),
    }
    Ok(())
}

pub fn remove(ctx: &Ctx, name: &str) -> Result<()> {
    let (store, _, _) = store(ctx)?;
    let m = store.remove(name)?;
    if ctx.json {
        ctx.print_json(&json!({"removed": m.name}));
    } else {
        println!("removed plugin {} ({} {})", m.name, m.plugin_name, m.version);
    }
    Ok(())
}
