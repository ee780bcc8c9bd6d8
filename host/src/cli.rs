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
    /// How long to wait for another machine's conflicting lock on the repository (90s, 10m,
    /// 1h; default: `[repository] lock_wait`, else 10m)
    #[arg(long, global = true, value_name = "DURATION")]
    pub lock_wait: Option<String>,
    /// More detail on stderr (-v: progress notes, -vv: debug)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new repository at the configured backend
    Init {
        /// Average chunk size of the new repository (default 1MiB; 256B to 4MiB). Smaller
        /// chunks deduplicate finer but cost more journal and index space.
        #[arg(long, value_name = "SIZE")]
        chunk_size: Option<String>,
    },
    /// Install, list, inspect or remove storage backend plugins
    Plugin {
        #[command(subcommand)]
        action: PluginAction,
    },
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
    /// Check that the repository is whole: listing against the journal, every snapshot's
    /// folders and chunks, and with --read-data every byte (exit code 3 when damage is found)
    Verify {
        /// Download every pack and authenticate every chunk
        #[arg(long)]
        read_data: bool,
        /// Download part of the packs: N% (least recently verified first) or n/t
        #[arg(long, value_name = "N%|n/t", conflicts_with = "read_data")]
        read_data_subset: Option<crate::engine::verify::Subset>,
    },
    /// Reconcile the journal with the repository and heal what can be healed; never deletes
    /// what it cannot prove is cairn's own garbage
    Repair {
        /// Print the plan; change nothing
        #[arg(long)]
        dry_run: bool,
        /// Move foreign and replaced objects to quarantine/ instead of leaving them
        #[arg(long)]
        quarantine: bool,
        /// Delete unfinished and partial uploads that are provably cairn's own
        #[arg(long)]
        delete_unrecoverable: bool,
        /// Rewrite snapshots without the files whose data cannot be recovered
        #[arg(long)]
        purge_broken: bool,
        /// Read every pack first, to find corruption a listing cannot show
        #[arg(long)]
        read_data: bool,
        /// Rebuild a lost or corrupt journal from the repository (index objects, pack headers)
        #[arg(long)]
        rebuild_journal: bool,
    },
    /// Remove snapshots: those named, or those a retention policy does not keep (the
    /// `--keep-*` flags, or `[retention]` in the config when no flag is given). Only snapshot
    /// objects are removed; their data stays until a prune
    Forget {
        /// Snapshot ids (unique prefixes) to remove; with none, the policy decides
        snapshots: Vec<String>,
        #[command(flatten)]
        policy: ForgetPolicy,
        /// Group snapshots by these before applying the policy: host, paths, tags
        /// (comma-separated; default host,paths)
        #[arg(long, value_name = "LIST")]
        group_by: Option<String>,
        /// Let a policy remove every complete snapshot of a group (by default the newest is kept)
        #[arg(long)]
        allow_empty_group: bool,
        /// Print what would be kept (and why) and what would go; change nothing
        #[arg(long, short = 'n')]
        dry_run: bool,
        /// Prune after forgetting, in the same run (with --dry-run: print the prune plan too)
        #[arg(long)]
        prune: bool,
        #[command(flatten)]
        prune_limits: PruneLimits,
    },
    /// Delete the packs no snapshot needs and repack those mostly unused; deletes only after
    /// the new packs and index objects are stored
    Prune {
        #[command(flatten)]
        limits: PruneLimits,
        /// Print the plan (packs to delete and repack, bytes freed, downloaded, uploaded);
        /// change nothing
        #[arg(long, short = 'n')]
        dry_run: bool,
    },
    /// Snapshots, files, logical and stored size, deduplication, unused bytes: for the
    /// repository and per snapshot group
    Stats {
        /// Group snapshots by these: host, paths, tags (comma-separated; default host,paths)
        #[arg(long, value_name = "LIST")]
        group_by: Option<String>,
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
        /// Then read every restored file back and check it against the snapshot (exit 3 on
        /// any difference)
        #[arg(long)]
        verify: bool,
    },
}

/// The `--keep-*` flags of `forget` (counts are numbers or `unlimited`).
#[derive(clap::Args, Debug, Default)]
pub struct ForgetPolicy {
    /// Keep the N newest snapshots
    #[arg(long, value_name = "N")]
    pub keep_last: Option<crate::engine::retention::Keep>,
    /// Keep the newest snapshot of each of the N newest hours that have one
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<crate::engine::retention::Keep>,
    /// Keep the newest snapshot of each of the N newest days that have one
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<crate::engine::retention::Keep>,
    /// Keep the newest snapshot of each of the N newest ISO weeks that have one
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<crate::engine::retention::Keep>,
    /// Keep the newest snapshot of each of the N newest months that have one
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<crate::engine::retention::Keep>,
    /// Keep the newest snapshot of each of the N newest years that have one
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<crate::engine::retention::Keep>,
    /// Keep every snapshot newer than the group's newest minus this span (e.g. 14d, 1y6m)
    #[arg(long, value_name = "SPAN")]
    pub keep_within: Option<String>,
    /// Keep snapshots that carry all of these tags (a,b; repeatable)
    #[arg(long, value_name = "TAGS")]
    pub keep_tag: Vec<String>,
}

/// How much `prune` repacks.
#[derive(clap::Args, Debug, Default)]
pub struct PruneLimits {
    /// Repack packs whose unused share is above this (default 10%)
    #[arg(long, value_name = "PCT")]
    pub max_unused: Option<String>,
    /// Repack at most this many bytes of packs (e.g. 1GiB; default: no limit)
    #[arg(long, value_name = "SIZE")]
    pub max_repack: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum PluginAction {
    /// Check, compile and install a plugin component (.wasm)
    Install {
        file: PathBuf,
        /// Name to use in `repository.backend` (default: the name the plugin gives itself)
        #[arg(long)]
        name: Option<String>,
    },
    /// List installed plugins
    List,
    /// Show a plugin's version, options, capabilities and the grants it needs
    Info { name: String },
    /// Remove an installed plugin
    Remove { name: String },
}
