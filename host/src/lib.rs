//! cairn: deduplicating, encrypted backups whose storage backends are sandboxed
//! WebAssembly components.
//!
//! Module map:
//! - [`config`]: the config file; [`cli`] and [`commands`]: the command line.
//! - [`repo`]: the repository format and opening one; [`journal`]: the local SQLite journal;
//!   [`lock`]: one writer per journal.
//! - [`engine`]: backup and restore; [`crypto`]: keys and sealing.
//! - [`runner`]: named jobs, schedules, hooks, run records and status (`cairn run`).
//! - [`plugin`]: the WebAssembly runtime and sandbox; [`backend`]: retries over it.

pub mod backend;
pub mod cli;
pub mod commands;
pub mod config;
pub mod crypto;
pub mod engine;
pub mod error;
pub mod ids;
pub mod journal;
pub mod lock;
pub mod plugin;
pub mod progress;
pub mod repo;
pub mod runner;
pub mod space;
pub mod testing;
pub mod untrusted;
