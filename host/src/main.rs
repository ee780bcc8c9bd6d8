//! The `cairn` binary: parse the command line, run the command, report errors on one line.

use std::process::ExitCode;

use clap::Parser;

use cairn::cli::{Cli, Command, ConfigAction, KeyAction, PluginAction};
use cairn::commands::{self, Ctx};
use cairn::error::{exit_code, one_line};

/// glibc gives every thread that allocates its own arena, and freed memory stays spread over
/// them: restores through network plugins (many threads passing buffers around) peaked
/// 18 MiB higher than with two arenas, at no measurable cost in speed.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("cairn={level},warn")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: a pipe or a log file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .init();

    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairn: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let ctx = Ctx { config_path: cli.config, json: cli.json, lock_wait: cli.lock_wait, rt };
    let result = match cli.command {
        Command::Init { chunk_size } => commands::init::run(&ctx, chunk_size.as_deref()),
        Command::Backup { tags } => commands::backup::run(&ctx, &tags),
        Command::Plugin { action } => match action {
            PluginAction::Install { file, name, force } => {
                commands::plugin::install(&ctx, &file, name.as_deref(), force)
            }
            PluginAction::List { available } => commands::plugin::list(&ctx, available),
            PluginAction::Info { name } => commands::plugin::info(&ctx, &name),
            PluginAction::Remove { name } => commands::plugin::remove(&ctx, &name),
        },
        Command::Snapshots => commands::snapshots::run(&ctx),
        Command::Ls { snapshot, long } => commands::ls::run(&ctx, &snapshot, long),
        Command::Restore { snapshot, target, include, verify } => {
            commands::restore::run(&ctx, &snapshot, target, include, verify)
        }
        Command::Repair {
            dry_run,
            quarantine,
            delete_unrecoverable,
            purge_broken,
            read_data,
            rebuild_journal,
        } => {
            let opts = cairn::engine::repair::Options {
                dry_run,
                quarantine,
                delete_unrecoverable,
                purge_broken,
                read_data,
                pack_size: 0, // the config's: the command sets it once it has read the config
            };
            commands::repair::run(&ctx, opts, rebuild_journal)
        }
        Command::Forget { snapshots, policy, group_by, allow_empty_group, dry_run, prune, prune_limits } => {
            let prune = prune.then_some(&prune_limits);
            let how =
                commands::forget::How { group_by: group_by.as_deref(), allow_empty_group, dry_run, prune };
            commands::forget::run(&ctx, &snapshots, &policy, how)
        }
        Command::Prune { limits, dry_run } => commands::prune::run(&ctx, &limits, dry_run),
        Command::Stats { group_by } => commands::stats::run(&ctx, group_by.as_deref()),
        Command::Verify { read_data, read_data_subset } => {
            commands::verify::run(&ctx, read_data, read_data_subset)
        }
        Command::Diff { from, to } => commands::diff::run(&ctx, &from, &to),
        Command::Find { pattern, snapshot, path } => {
            commands::find::run(&ctx, &pattern, snapshot.as_deref(), path.as_deref())
        }
        Command::Dump { snapshot, path } => commands::dump::run(&ctx, &snapshot, &path),
        Command::Config { action: ConfigAction::Check } => commands::config_cmd::check(&ctx),
        Command::Config { action: ConfigAction::Show } => commands::config_cmd::show(&ctx),
        Command::Completions { shell } => commands::completions::completions(shell),
        Command::Man => commands::completions::man(),
        Command::Copy { to_config, snapshots } => commands::copy::run(&ctx, &to_config, &snapshots),
        Command::Key { action } => match action {
            KeyAction::List => commands::key::list(&ctx),
            KeyAction::Add { password } => commands::key::add(&ctx, &password),
            KeyAction::Remove { id } => commands::key::remove(&ctx, &id),
            KeyAction::Passwd { password } => commands::key::passwd(&ctx, &password),
        },
        Command::Run { jobs, parallel } => commands::run::run(&ctx, &jobs, parallel, cli.verbose > 0),
        Command::Schedule { action } => commands::schedule::run(&ctx, action),
        Command::Status { max_age } => commands::status::run(&ctx, max_age.as_deref()),
    };
    let code = match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cairn: {}", one_line(&e));
            exit_code(&e)
        }
    };
    leave(code)
}

/// Ends the process without tearing the async runtime down. Dropping the runtime cancels its
/// tasks, and wasmtime-wasi's HTTP tasks (a plugin's request still in flight when a command
/// fails, e.g. after its retries ran out) panic when they find a sibling task cancelled, so a
/// failed command would end with a panic after its one-line error. Everything that must be
/// durable is already committed (the journal commits each transition; temporary packs are
/// cleaned up by the next run), so nothing is lost by not running the runtime's teardown.
fn leave(code: u8) -> ExitCode {
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(i32::from(code))
}
