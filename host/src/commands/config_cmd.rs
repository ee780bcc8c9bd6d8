//! `cairn config check` and `cairn config show`: the config as cairn reads it, without
//! touching the repository (no backend is opened: only the plugin's `describe()` is called,
//! in a sandbox that reaches nothing).

use std::time::Duration;

use anyhow::{Result, bail};
use serde_json::{Map, Value, json};

use super::Ctx;
use crate::config::{Config, OptionValue};
use crate::plugin::PluginInfo;
use crate::plugin::pool::{check_options, describe, link, uses_files, uses_network};
use crate::plugin::runtime::Runtime;
use crate::plugin::sandbox::{Sandbox, parse_origin};
use crate::untrusted::escape;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Severity {
    /// The config would not work: a command using it would fail.
    Error,
    /// It works, but probably not as meant.
    Warning,
}

struct Finding {
    severity: Severity,
    text: String,
}

/// What the plugin says about itself, and which grants it can use.
struct Described {
    info: PluginInfo,
    network: bool,
    files: bool,
}

/// Loads the backend's component and asks it to describe itself, reaching nothing.
fn describe_plugin(ctx: &Ctx, config: &Config) -> Result<Described> {
    let (name, wasm) = crate::repo::component_bytes(config)?;
    let runtime = Runtime::new(&config.cache_dir()?)?;
    let component = runtime.load(&wasm)?;
    let engine = runtime.engine();
    let (network, files) = (uses_network(engine, &component), uses_files(engine, &component));
    let pre = link(engine, &name, &component, true)?;
    let nothing = Sandbox {
        dirs: Vec::new(),
        hosts: Vec::new(),
        allow_delete: false,
        memory_bytes: 64 << 20,
        call_timeout: Duration::from_secs(10),
        recycle_after_calls: 0,
    };
    let info = ctx.rt.block_on(describe(engine, &name, &pre, &nothing))?;
    Ok(Described { info, network, files })
}

/// Everything `config check` finds, in the order a reader of the config meets it.
fn findings(ctx: &Ctx, config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut error = |text: String| out.push(Finding { severity: Severity::Error, text });
    let repo = &config.repository;

    // The password source, without running a command.
    if let Some(var) = &repo.password_env
        && std::env::var_os(var).is_none_or(|v| v.is_empty())
    {
        error(format!("the password variable ${var} (repository.password_env) is not set here"));
    }
    if let Some(file) = &repo.password_file
        && !file.is_file()
    {
        error(format!("repository.password_file {} does not exist", file.display()));
    }
    if repo.password_env.is_none() && repo.password_command.is_none() && repo.password_file.is_none() {
        error("no password source: set repository.password_env, password_command or password_file".into());
    }
    for (key, value) in &repo.options {
        if let OptionValue::Env { env } = value
            && std::env::var_os(env).is_none()
        {
            error(format!("option `{key}` comes from ${env}, which is not set here"));
        }
    }
    for h in &repo.grants.hosts {
        if parse_origin(h).is_none() {
            error(format!("repository.grants.hosts entry {h:?} is not of the form scheme://host:port"));
        }
    }
    for d in &repo.grants.dirs {
        if !d.is_dir() {
            error(format!("repository.grants.dirs entry {} is not an existing folder", d.display()));
        }
    }
    for s in &config.backup.sources {
        if std::fs::symlink_metadata(s).is_err() {
            error(format!("backup source {} does not exist", s.display()));
        }
    }
    if config.backup.sources.is_empty() {
        out.push(Finding {
            severity: Severity::Warning,
            text: "[backup] sources is empty: `cairn backup` has nothing to back up".into(),
        });
    }
    if let Err(e) = config.retention.policy() {
        out.push(Finding { severity: Severity::Error, text: format!("{e:#}") });
    }
    // The plugin: its options and the grants it can use.
    if repo.backend == "fs" {
        match repo.options.get("path") {
            Some(OptionValue::String(p)) if !std::path::Path::new(p).is_absolute() => out.push(Finding {
                severity: Severity::Error,
                text: format!("options.path {p} must be an absolute path"),
            }),
            None => out.push(Finding {
                severity: Severity::Error,
                text: "the fs backend needs options.path, the repository folder".into(),
            }),
            _ => {}
        }
    }
    let d = match describe_plugin(ctx, config) {
        Ok(d) => d,
        Err(e) => {
            out.push(Finding {
                severity: Severity::Error,
                text: format!("backend {}: {}", escape(&repo.backend), crate::error::one_line(&e)),
            });
            return out;
        }
    };
    let names: Vec<(String, String)> = repo.options.keys().map(|k| (k.clone(), String::new())).collect();
    if let Err(e) = check_options(&repo.backend, &d.info, &names) {
        out.push(Finding { severity: Severity::Error, text: escape(&format!("{e:#}")).into_owned() });
    }
    for spec in d.info.options.iter().filter(|o| o.secret) {
        if matches!(repo.options.get(&spec.name), Some(OptionValue::String(_) | OptionValue::Integer(_))) {
            out.push(Finding {
                severity: Severity::Warning,
                text: format!(
                    "option `{}` is a secret written in the config; give it as {{ env = \"VAR\" }} or {{ command = \"...\" }}",
                    escape(&spec.name)
                ),
            });
        }
    }
    if d.network && repo.grants.hosts.is_empty() {
        out.push(Finding {
            severity: Severity::Error,
            text: format!(
                "backend {} speaks HTTP but repository.grants.hosts is empty: it could reach no server",
                escape(&repo.backend)
            ),
        });
    }
    if !d.network && !repo.grants.hosts.is_empty() {
        out.push(Finding {
            severity: Severity::Warning,
            text: format!(
                "backend {} does not use the network; repository.grants.hosts is unused",
                escape(&repo.backend)
            ),
        });
    }
    if repo.backend != "fs" && !d.files && !repo.grants.dirs.is_empty() {
        out.push(Finding {
            severity: Severity::Warning,
            text: format!(
                "backend {} does not use files; repository.grants.dirs is unused",
                escape(&repo.backend)
            ),
        });
    }
    out
}

pub fn check(ctx: &Ctx) -> Result<()> {
    // Loading checks keys, types, sizes and that no grant reaches cairn's own folders.
    let config = ctx.config()?;
    let found = findings(ctx, &config);
    let errors = found.iter().filter(|f| f.severity == Severity::Error).count();
    if ctx.json {
        let list: Vec<Value> = found
            .iter()
            .map(|f| {
                json!({
                    "severity": match f.severity { Severity::Error => "error", Severity::Warning => "warning" },
                    "message": f.text,
                })
            })
            .collect();
        ctx.print_json(&json!({"config": config.path, "ok": errors == 0, "findings": list}));
    } else {
        for f in &found {
            let label = match f.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            println!("{label}: {}", f.text);
        }
    }
    if errors > 0 {
        bail!("config {} has {errors} error(s) (listed above); nothing was touched", config.path.display());
    }
    if !ctx.json {
        println!(
            "config {} is valid ({} warning(s)); the repository was not contacted",
            config.path.display(),
            found.len()
        );
    }
    Ok(())
}

/// What a secret's place shows instead of it.
const MASKED: &str = "(secret, not shown)";

pub fn show(ctx: &Ctx) -> Result<()> {
    let config = ctx.config()?;
    let repo = &config.repository;
    // Which options the plugin declares secret; when it cannot say, every literal is hidden.
    let secret_names: Option<Vec<String>> = if repo.backend == "fs" {
        Some(Vec::new())
    } else {
        describe_plugin(ctx, &config)
            .ok()
            .map(|d| d.info.options.into_iter().filter(|o| o.secret).map(|o| o.name).collect())
    };
    let mut options = Map::new();
    for (k, v) in &repo.options {
        let secret = secret_names.as_ref().is_none_or(|s| s.contains(k));
        let shown = match v {
            OptionValue::Env { env } => json!({ "env": env }),
            OptionValue::Command { .. } => json!({ "command": MASKED }),
            _ if secret => json!(MASKED),
            OptionValue::String(s) => json!(s),
            OptionValue::Integer(i) => json!(i),
            OptionValue::Bool(b) => json!(b),
        };
        options.insert(k.clone(), shown);
    }
    let mut repository = json!({ "backend": repo.backend, "options": options });
    if let Some(v) = &repo.password_env {
        repository["password_env"] = json!(v);
    }
    if repo.password_command.is_some() {
        repository["password_command"] = json!(MASKED);
    }
    if let Some(f) = &repo.password_file {
        repository["password_file"] = json!(f);
    }
    let g = &repo.grants;
    repository["grants"] = json!({
        "dirs": g.dirs,
        "hosts": g.hosts,
        "delete": g.delete,
        "memory_mib": g.memory_mib,
        "call_timeout_secs": g.call_timeout_secs,
        "recycle_after_calls": g.recycle_after_calls,
    });
    let (interval, interval_bytes) = config.checkpoint_interval()?;
    let r = &config.retention;
    let count = |c: &Option<crate::config::KeepCount>| match c {
        None => None,
        Some(crate::config::KeepCount::Number(n)) => Some(json!(n)),
        Some(crate::config::KeepCount::Word(w)) => Some(json!(w)),
    };
    let mut retention = Map::new();
    for (k, v) in [
        ("keep_last", count(&r.keep_last)),
        ("keep_hourly", count(&r.keep_hourly)),
        ("keep_daily", count(&r.keep_daily)),
        ("keep_weekly", count(&r.keep_weekly)),
        ("keep_monthly", count(&r.keep_monthly)),
        ("keep_yearly", count(&r.keep_yearly)),
        ("keep_within", r.keep_within.as_ref().map(|w| json!(w))),
        ("group_by", Some(json!(r.group_by.as_deref().unwrap_or("host,paths")))),
    ] {
        if let Some(v) = v {
            retention.insert(k.into(), v);
        }
    }
    retention.insert("keep_tag".into(), json!(r.keep_tag));
    let effective = json!({
        "repository": repository,
        "backup": {
            "sources": config.backup.sources,
            "exclude": config.backup.exclude,
            "tags": config.backup.tags,
            "pack_size": config.pack_size()?,
            "compression": config.compression_level(),
            "threads": config.threads(),
        },
        "checkpoint": { "interval_secs": interval.as_secs(), "interval_bytes": interval_bytes },
        "retention": retention,
        "state": { "dir": config.state_dir()?, "cache_dir": config.cache_dir()? },
        "plugins": { "dir": config.plugins_dir()? },
    });
    if ctx.json {
        ctx.print_json(&effective);
    } else {
        println!("# effective config from {}: defaults filled in, secrets masked", config.path.display());
        print!("{}", toml::to_string(&effective)?);
    }
    Ok(())
}
