//! Command-line interface definition.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// `cairn --version`: the package version and the commit it was built from (`git describe`
/// when built, "commit unknown" outside a git checkout).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("CAIRN_COMMIT"), ")");

#[derive(Parser, Debug)]
#[command(
    name = "cairn",
    version = VERSION,
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
    /// What changed from snapshot A to snapshot B: paths added, removed and changed
    /// (content, type, mode, owner, time), with sizes. Reads only the folders that differ
    Diff {
        /// The older snapshot (id prefix or `latest`)
        from: String,
        /// The newer snapshot (id prefix or `latest`)
        to: String,
    },
    /// Which snapshots hold paths matching a glob, with size and time in each. A pattern
    /// without `/` matches names at any depth; with `/`, whole paths (`**` crosses folders)
    Find {
        pattern: String,
        /// Search only this snapshot (id prefix or `latest`)
        #[arg(long, value_name = "ID")]
        snapshot: Option<String>,
        /// Search only below this path of the snapshots
        #[arg(long, value_name = "PREFIX")]
        path: Option<PathBuf>,
    },
    /// Write a file of a snapshot to stdout, or a folder as a tar stream
    Dump {
        /// Snapshot id (a unique prefix) or `latest`
        snapshot: String,
        /// Full path in the snapshot (`/` for all of it)
        path: PathBuf,
    },
    /// Check the config or show it as cairn reads it; never touches the repository
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Print a shell completion script (e.g. `cairn completions bash > /etc/bash_completion.d/cairn`)
    Completions { shell: clap_complete::Shell },
    /// Print the man page (e.g. `cairn man > cairn.1; man ./cairn.1`)
    Man,
    /// Copy snapshots into another repository (for example a local folder and an S3 bucket),
    /// sending only the chunks it lacks, re-encrypted with its key; snapshots it already holds
    /// are skipped, and an interrupted copy is finished by running it again
    Copy {
        /// Config of the target repository (its backend, password and state folder)
        #[arg(long, value_name = "FILE")]
        to_config: PathBuf,
        /// Snapshot ids (unique prefixes) or `latest`; default: every complete snapshot
        snapshots: Vec<String>,
    },
    /// List, add or remove the passwords (key files) that open the repository
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Run jobs (`[jobs.NAME]`): those named, or every scheduled job that is due. Per job:
    /// before hooks, backup, forget, prune when due, verify, after (or on_failure) hooks.
    /// Exit code 1 when a job failed or was skipped, 3 when one finished with warnings
    Run {
        /// Jobs to run (default: every job whose schedule says it is due)
        jobs: Vec<String>,
        /// Run jobs of up to this many repositories at once (jobs sharing one run in turn)
        #[arg(long, value_name = "N", default_value_t = 1)]
        parallel: usize,
    },
    /// Show the jobs' next runs, or install or remove systemd timers that run them
    Schedule {
        #[command(subcommand)]
        action: ScheduleAction,
    },
    /// Per job: last success, last failure and its error, age, duration, data added, next due
    Status {
        /// Exit 3, naming them, when a job's last success is older than this (e.g. 26h)
        #[arg(long, value_name = "SPAN")]
        max_age: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigAction {
    /// Validate keys, sizes, paths, the password source, the plugin's options (against its
    /// describe()) and grants; exit 1 on any error
    Check,
    /// Print the effective config: defaults filled in, secrets masked
    Show,
}

#[derive(Subcommand, Debug)]
pub enum KeyAction {
    /// List the key files: id, host, user, creation time; `*` marks the one in use
    List,
    /// Add a key file for a new password (asked for on the terminal unless given otherwise)
    Add {
        #[command(flatten)]
        password: NewPassword,
    },
    /// Remove a key file (never the one in use, never the last one)
    Remove {
        /// Key id (a unique prefix, as `cairn key list` shows it)
        id: String,
    },
    /// Change the password: add a key for the new password, then remove the key in use
    Passwd {
        #[command(flatten)]
        password: NewPassword,
    },
}

/// Where a new password comes from (at most one; none: asked for on the terminal).
#[derive(clap::Args, Debug, Default)]
#[group(multiple = false)]
pub struct NewPassword {
    /// Environment variable holding the new password
    #[arg(long, value_name = "VAR")]
    pub new_password_env: Option<String>,
    /// Shell command whose standard output (first line) is the new password
    #[arg(long, value_name = "CMD")]
    pub new_password_command: Option<String>,
    /// File whose first line is the new password
    #[arg(long, value_name = "FILE")]
    pub new_password_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum ScheduleAction {
    /// Print each scheduled job's next runs
    Show {
        /// How many runs per job
        #[arg(long, default_value_t = 3)]
        count: usize,
    },
    /// Write a systemd service and timer per scheduled job (Persistent=true) and enable the
    /// timers
    Install {
        #[command(flatten)]
        place: UnitPlace,
        /// Print the units instead of installing them
        #[arg(long)]
        print: bool,
        /// Print crontab lines instead (for systems without systemd); installs nothing
        #[arg(long)]
        crontab: bool,
    },
    /// Disable and delete the units `schedule install` wrote
    Remove {
        #[command(flatten)]
        place: UnitPlace,
    },
}

/// Where `schedule install` and `remove` put units.
#[derive(clap::Args, Debug)]
pub struct UnitPlace {
    /// Per-user units (~/.config/systemd/user; the default)
    #[arg(long, conflicts_with = "system")]
    pub user: bool,
    /// System units (/etc/systemd/system; needs root)
    #[arg(long)]
    pub system: bool,
    /// Write the units into this folder and leave systemctl alone
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
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
    /// Check, compile and install a plugin: a component file (.wasm), or the name of a
    /// backend bundled in cairn (s3, webdav)
    Install {
        /// A .wasm component file, or a bundled backend's name when no such file exists
        #[arg(value_name = "FILE|NAME")]
        file: PathBuf,
        /// Name to use in `repository.backend` (default: the name the plugin gives itself)
        #[arg(long)]
        name: Option<String>,
        /// Replace a plugin of the other kind: a file over a bundled backend, or a bundled
        /// backend over one installed from a file
        #[arg(long)]
        force: bool,
    },
    /// List installed plugins (with --available: the backends bundled in cairn)
    List {
        /// List the backends bundled in this binary, with versions, and whether installed
        #[arg(long)]
        available: bool,
    },
    /// Show a plugin's version, options, capabilities and the grants it needs
    Info { name: String },
    /// Remove an installed plugin
    Remove { name: String },
}
