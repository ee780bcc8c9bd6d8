//! Command-line interface definition.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "cairn",
    version,
    about = "Deduplicating, encrypted backups to sandboxed WebAssembly storage backends"
)]
pub struct Cli {
    /// Config file (default: $CAIRN_CONFIG, else ./cairn.toml)
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Machine-readable output on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// More detail on stderr (-v: progress notes, -vv: debug)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new repository at the configured backend
    Init,
    /// Back up the configured sources as a new snapshot
    Backup {
        /// Extra tag for this snapshot (repeatable)
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
    },
    /// List snapshots
    Snapshots,
    /// List the files in a snapshot
    Ls {
        /// Snapshot id (a unique prefix) or `latest`
        snapshot: String,
        /// Show type, mode, owner, size and time
        #[arg(short, long)]
        long: bool,
    },
    /// Restore a snapshot into a folder
    Restore {
        /// Snapshot id (a unique prefix) or `latest`
        snapshot: String,
        /// Folder to restore into (created if missing); paths keep their full form below it
        #[arg(long, value_name = "DIR")]
        target: PathBuf,
        /// Restore only this path of the snapshot and what is below it (repeatable)
        #[arg(long, value_name = "PATH")]
        include: Vec<PathBuf>,
    },
}
