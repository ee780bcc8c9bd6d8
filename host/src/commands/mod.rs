//! The command-line commands. Each parses nothing itself (clap does that in `cli`), opens
//! what it needs, and prints a human summary, or JSON with `--json`.

pub mod backup;
pub mod browse;
pub mod completions;
pub mod config_cmd;
pub mod copy;
pub mod diff;
pub mod dump;
pub mod find;
pub mod forget;
pub mod init;
pub mod key;
pub mod ls;
pub mod plugin;
pub mod prune;
pub mod repair;
pub mod restore;
pub mod run;
pub mod schedule;
pub mod snapshots;
pub mod stats;
pub mod status;
pub mod verify;

use std::path::PathBuf;

use anyhow::Result;

use crate::config::Config;

/// What every command gets.
pub struct Ctx {
    pub config_path: Option<PathBuf>,
    pub json: bool,
    /// `--lock-wait`, over `[repository] lock_wait`.
    pub lock_wait: Option<String>,
    pub rt: tokio::runtime::Runtime,
}

impl Ctx {
    pub fn config(&self) -> Result<Config> {
        let mut config = Config::locate(self.config_path.as_deref())?;
        if let Some(wait) = &self.lock_wait {
            crate::repo::locks::parse_wait(wait)?;
            config.repository.lock_wait = Some(wait.clone());
        }
        Ok(config)
    }

    /// Releases the repository's lock whatever `result` is, and passes `result` on: the
    /// explicit end of every command that opened the repository.
    pub fn released<T>(&self, repo: &crate::repo::Repository, result: Result<T>) -> Result<T> {
        self.rt.block_on(repo.release());
        result
    }

    pub fn print_json(&self, value: &serde_json::Value) {
        println!("{}", serde_json::to_string_pretty(value).expect("JSON values serialise"));
    }
}

/// Bytes for humans: 1.5 GiB.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}
