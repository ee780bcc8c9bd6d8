//! Machines sharing one repository: locks in the repository (`locks/`), a sync that forgets
//! what another machine's forget or prune removed, and two machines backing up in a loop
//! while a third forgets (and prunes), with a fourth run from a journal copied before two
//! prunes. Every remaining snapshot must restore to exactly what its machine's source held
//! when it was taken, and `verify --read-data` must be clean.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn::ids::Id;
use cairn::repo::format::{self, LockFile, LockKind};
use common::forge::Forge;
use common::{Env, PASSWORD, Rng, write_file};

/// Writes a lock object into an fs repository as another machine would.
fn forge_lock(env: &Env, host: &str, pid: u32, kind: LockKind, age: Duration) -> PathBuf {
    let forge = Forge::unlock(&env.repo, PASSWORD);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
    let at = now - age.as_nanos() as i64;
    let file = LockFile {
        version: 1,
        host: host.into(),
        user: "someone".into(),
        pid,
        kind,
        created_ns: at,
        refreshed_ns: at,
        nonce: [7; 16],
        released: false,
    };
    let bytes = format::seal_object(&forge.key, format::AAD_LOCK, &file, false).unwrap();
    let name = format::lock_name(&Id::of_bytes(&bytes));
    forge.write_object(&name, &bytes);
    env.repo.join(name)
}

fn lock_objects(repo: &Path) -> Vec<String> {
    match std::fs::read_dir(repo.join("locks")) {
        // Hidden names are the fs backend's uploads in progress.
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn count_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.map(|e| e.unwrap())
        .map(|e| if e.file_type().unwrap().is_dir() { count_files(&e.path()) } else { 1 })
        .sum()
}

/// Small packs: little room needed for temporary packs, and prunes that have packs to delete.
const SMALL_PACKS: &str = "pack_size = \"1MiB\"";

fn small_repo() -> Env {
    let env = Env::with_backup_toml(SMALL_PACKS);
    common::gen_dataset(&env.src, 5, 30, &[200_000]);
    env.ok(&["init", "--chunk-size", "64KiB"]);
    env
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A process that has exited: its pid names no running process.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn backup_waits_for_a_live_exclusive_lock_then_proceeds() {
    let env = small_repo();
    let lock = forge_lock(&env, "pruning-host", 4242, LockKind::Exclusive, Duration::ZERO);
    let mut child = env
        .cmd(&["--lock-wait", "10m", "backup"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let waiting =
        lines.by_ref().map(|l| l.unwrap()).find(|l| l.contains("waiting")).expect("a waiting message");
    assert!(waiting.contains("host \"pruning-host\"") && waiting.contains("pid 4242"), "{waiting}");
    assert!(waiting.contains("exclusive lock since"), "{waiting}");
    assert_eq!(count_files(&env.repo.join("snapshots")), 0, "nothing was written while waiting");
    // The holder finishes.
    std::fs::remove_file(&lock).unwrap();
    let status = child.wait().unwrap();
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(status.success(), "{rest:?}");
    assert_eq!(count_files(&env.repo.join("snapshots")), 1);
    assert!(
        lock_objects(&env.repo).is_empty(),
        "the backup removed its own lock: {:?}",
        lock_objects(&env.repo)
    );
}

#[test]
fn backup_fails_after_the_lock_wait_naming_the_holder() {
    let env = small_repo();
    forge_lock(&env, "pruning-host", 4242, LockKind::Exclusive, Duration::from_secs(60));
    let (code, err) = env.fails(&["--lock-wait", "1s", "backup"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cairn: the repository is locked by host \"pruning-host\""), "{err}");
    assert!(err.contains("pid 4242") && err.contains("--lock-wait"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(count_files(&env.repo.join("snapshots")), 0);
    assert_eq!(lock_objects(&env.repo).len(), 1, "only the holder's lock is left");
    // Shared locks do not exclude each other: forget runs beside a backup's lock.
    let env2 = small_repo();
    forge_lock(&env2, "backing-up-host", 4243, LockKind::Shared, Duration::ZERO);
    env2.ok(&["--lock-wait", "0", "backup"]);
}

#[test]
fn a_stale_lock_of_a_dead_local_process_is_removed_at_once() {
    let env = small_repo();
    let host = cairn::lock::hostname();
    let lock = forge_lock(&env, &host, dead_pid(), LockKind::Exclusive, Duration::ZERO);
    let out = env.run(&["--lock-wait", "0", "backup"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("its process is gone"), "{}", stderr_of(&out));
    assert!(!lock.exists(), "the stale lock was removed");
    assert!(lock_objects(&env.repo).is_empty());
}

#[test]
fn a_lock_from_another_host_older_than_the_stale_time_is_removed() {
    let env = small_repo();
    // Refreshed 29 minutes ago: live, the backup cannot run beside it.
    let live = forge_lock(&env, "far-away", 99, LockKind::Exclusive, Duration::from_secs(29 * 60));
    let (_, err) = env.fails(&["--lock-wait", "0", "backup"]);
    assert!(err.contains("host \"far-away\""), "{err}");
    std::fs::remove_file(live).unwrap();
    let stale = forge_lock(&env, "far-away", 99, LockKind::Exclusive, Duration::from_secs(31 * 60));
    let out = env.run(&["--lock-wait", "0", "backup"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("not refreshed for more than 30 minutes"), "{}", stderr_of(&out));
    assert!(!stale.exists());
    assert!(lock_objects(&env.repo).is_empty());
}

#[test]
fn a_backup_whose_lock_was_removed_writes_no_snapshot() {
    let mut env = small_repo();
    let release = env.path("go-on");
    env.extra_env.push(("CAIRN_TEST_HOLD".into(), "before-snapshot".into()));
    env.extra_env.push(("CAIRN_TEST_HOLD_RELEASE".into(), release.display().to_string()));
    let mut child = env.cmd(&["backup"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    lines.by_ref().map(|l| l.unwrap()).find(|l| l.contains("cairn-test-hold: before-snapshot")).unwrap();
    // Another machine judged the lock stale and removed it.
    let locks = lock_objects(&env.repo);
    assert_eq!(locks.len(), 1, "{locks:?}");
    std::fs::remove_file(env.repo.join("locks").join(&locks[0])).unwrap();
    std::fs::write(&release, b"").unwrap();
    let status = child.wait().unwrap();
    let err: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let err = err.join("\n");
    assert!(!status.success());
    assert!(err.contains("lost its repository lock: another machine removed it"), "{err}");
    assert!(err.contains("no snapshot was written"), "{err}");
    assert_eq!(count_files(&env.repo.join("snapshots")), 0);
    let packs = count_files(&env.repo.join("data"));
    assert!(packs > 0, "the packs uploaded are kept");
    // The next run reuses them: no file is read or stored again.
    env.extra_env.clear();
    let b = env.json(&["backup"]);
    assert_eq!((b["files_read"].as_u64(), b["data_added"].as_u64()), (Some(0), Some(0)), "{b}");
    assert!(count_files(&env.repo.join("data")) <= packs + 1);
}

/// While a command runs, its lock is written anew (refreshed) and the previous object
/// removed; at the end nothing is left.
#[test]
fn a_running_command_refreshes_its_lock() {
    let mut env = small_repo();
    let release = env.path("go-on");
    env.extra_env.push(("CAIRN_LOCK_REFRESH_MS".into(), "100".into()));
    env.extra_env.push(("CAIRN_TEST_HOLD".into(), "before-snapshot".into()));
    env.extra_env.push(("CAIRN_TEST_HOLD_RELEASE".into(), release.display().to_string()));
    let mut child = env.cmd(&["backup"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    lines.by_ref().map(|l| l.unwrap()).find(|l| l.contains("cairn-test-hold: before-snapshot")).unwrap();
    let first = lock_objects(&env.repo);
    assert_eq!(first.len(), 1, "{first:?}");
    // Until a refresh replaced it (the test's own timeout bounds this).
    let refreshed = loop {
        let now = lock_objects(&env.repo);
        if now.len() == 1 && now != first {
            break now;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_ne!(refreshed, first);
    std::fs::write(&release, b"").unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{:?}", lines.map(|l| l.unwrap()).collect::<Vec<_>>());
    assert_eq!(
        count_files(&env.repo.join("snapshots")),
        1,
        "the refreshed lock is held: the snapshot is written"
    );
    assert!(lock_objects(&env.repo).is_empty());
}

/// An append-only client cannot delete its lock: it writes a release record, which ends the
/// claim at once (a prune need not wait), and a client that may delete removes both.
#[test]
fn an_append_only_client_releases_its_lock_with_a_record() {
    let env = small_repo();
    let full = std::fs::read_to_string(&env.config).unwrap();
    env.write_config(&full.replace("[repository]\n", "[repository]\ngrants = { delete = false }\n"));
    env.ok(&["backup"]);
    let left = lock_objects(&env.repo);
    assert_eq!(left.len(), 2, "the lock and its release record stay: {left:?}");
    env.write_config(&full);
    // An exclusive lock is not kept waiting by the released claim (no --lock-wait needed).
    let out = env.run(&["--lock-wait", "0", "prune"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(lock_objects(&env.repo).is_empty(), "{:?}", lock_objects(&env.repo));
}

/// Another machine forgets every snapshot and prunes everything (done here by hand: the
/// snapshot, index and pack objects go). The next backup of the same unchanged files must
/// not trust its journal or file cache: it uploads the data again, and the snapshot restores.
#[test]
fn the_sync_forgets_packs_of_a_vanished_index_so_the_next_backup_uploads_again() {
    let env = small_repo();
    let first = env.json(&["backup"]);
    assert!(first["packs_uploaded"].as_u64().unwrap() > 0, "{first}");
    let packs_before = count_files(&env.repo.join("data"));
    for folder in ["snapshots", "index", "data"] {
        std::fs::remove_dir_all(env.repo.join(folder)).unwrap();
        std::fs::create_dir_all(env.repo.join(folder)).unwrap();
    }
    let again = env.json(&["backup"]);
    assert_eq!(
        again["packs_uploaded"].as_u64().unwrap(),
        first["packs_uploaded"].as_u64().unwrap(),
        "every pack is uploaded again: {again}"
    );
    assert_eq!(count_files(&env.repo.join("data")), packs_before);
    assert_eq!(again["files_read"], first["files_read"], "every file was read again (its chunks were gone)");
    let target = env.path("restored");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(common::diff_trees(&env.src, &env.restored_src(&target)).is_empty());
    env.ok(&["verify", "--read-data"]);
    let snaps = env.json(&["snapshots"]);
    assert_eq!(snaps.as_array().unwrap().len(), 1, "the vanished snapshot left the journal: {snaps}");
}

// ---- machines sharing one repository ------------------------------------------------------

/// A machine: its own state folder, source folder and config, the shared repository.
fn machine_like(base: &Env) -> Env {
    let mut m = Env::new();
    let text = std::fs::read_to_string(&base.config).unwrap();
    let text = text
        .replace(&format!("{:?}", base.src), &format!("{:?}", m.src))
        .replace(&format!("{:?}", base.state), &format!("{:?}", m.state));
    m.write_config(&text);
    m.extra_env = base.extra_env.clone();
    m.repo = base.repo.clone();
    m
}

/// Content hashes of every file below `dir`, by relative path.
fn contents(dir: &Path) -> BTreeMap<PathBuf, Id> {
    common::snapshot_dir(dir)
        .into_iter()
        .map(|(p, bytes)| (p.strip_prefix(dir).unwrap().to_path_buf(), Id::of_bytes(&bytes)))
        .collect()
}

/// Changes a machine's source between runs: a few files rewritten, added and removed; most
/// stay, so deduplication and the file cache are used (and must not trust pruned data).
fn mutate(src: &Path, rng: &mut Rng, round: u64) {
    let mut files: Vec<PathBuf> = common::snapshot_dir(src).into_iter().map(|(p, _)| p).collect();
    for _ in 0..3 {
        if files.is_empty() {
            break;
        }
        let i = rng.below(files.len() as u64) as usize;
        let len = 1 + rng.below(40_000) as usize;
        write_file(&files[i], &rng.bytes(len), 0o644, 1_700_000_000 + round as i64);
    }
    let len = 1 + rng.below(120_000) as usize;
    write_file(&src.join(format!("new/r{round}.bin")), &rng.bytes(len), 0o644, 1_700_000_000);
    if files.len() > 10 {
        let i = rng.below(files.len() as u64) as usize;
        std::fs::remove_file(files.remove(i)).unwrap();
    }
}

type Expected = Arc<Mutex<BTreeMap<String, BTreeMap<PathBuf, Id>>>>;

/// One backup of `m`, its source first changed; records what the snapshot must hold.
fn backup_round(m: &Env, rng: &mut Rng, round: u64, expected: &Expected) {
    mutate(&m.src, rng, round);
    let out = m.json(&["--lock-wait", "10m", "backup"]);
    let id = out["snapshot"].as_str().unwrap().to_string();
    expected.lock().unwrap().insert(id, contents(&m.src));
}

/// What the third machine does in its loop: forget (keeping two per machine) and prune
/// (everything unused goes: `--max-unused 0%` repacks any pack with an unused byte).
fn retention_round(c: &Env) -> serde_json::Value {
    let out = c.run(&[
        "--json",
        "--lock-wait",
        "10m",
        "forget",
        "--keep-last",
        "2",
        "--prune",
        "--max-unused",
        "0%",
    ]);
    assert!(out.status.success(), "forget --prune failed: {}", stderr_of(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn shared_repository_scenario(a: Env, rounds: u64) {
    let seed = std::env::var("CAIRN_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    });
    eprintln!("concurrency seed {seed} (CAIRN_TEST_SEED={seed} repeats it)");
    common::gen_dataset(&a.src, seed, 25, &[150_000]);
    a.ok(&["init", "--chunk-size", "64KiB"]);
    let b = machine_like(&a);
    let c = machine_like(&a);
    common::gen_dataset(&b.src, seed + 1, 25, &[150_000]);
    for m in [&b, &c] {
        m.ok(&["repair", "--rebuild-journal"]);
    }
    let expected: Expected = Arc::default();
    let offline = b.path("state-offline");
    let offline_src = b.path("src-offline");
    std::thread::scope(|s| {
        let (ea, eb) = (expected.clone(), expected.clone());
        let a = &a;
        let b = &b;
        let (offline, offline_src) = (&offline, &offline_src);
        let c = &c;
        s.spawn(move || {
            let mut rng = Rng::new(seed ^ 0xa);
            for round in 0..rounds {
                backup_round(a, &mut rng, round, &ea);
            }
        });
        s.spawn(move || {
            let mut rng = Rng::new(seed ^ 0xb);
            for round in 0..rounds {
                backup_round(b, &mut rng, round, &eb);
                if round == 0 {
                    copy_dir(&b.state, offline);
                    copy_dir(&b.src, offline_src);
                }
            }
        });
        s.spawn(move || {
            for _ in 0..rounds {
                retention_round(c);
            }
        });
    });
    // Two more retention rounds while the copy of B's journal is still the old one (each
    // prunes: a snapshot of each machine goes, and with it data B's old journal lists); then
    // B comes back with it.
    let mut rng = Rng::new(seed ^ 0xbb);
    for round in 0..2 {
        backup_round(&a, &mut rng, rounds + 1 + round, &expected);
        let r = retention_round(&c);
        assert!(r["prune"]["done"]["packs_deleted"].as_u64().unwrap() > 0, "a prune deleted packs: {r}");
    }
    // B comes back with its journal and its files of then: the chunks of those files that
    // later runs changed were pruned, and its journal still lists their packs.
    std::fs::remove_dir_all(&b.state).unwrap();
    copy_dir(&offline, &b.state);
    std::fs::remove_dir_all(&b.src).unwrap();
    copy_dir(&offline_src, &b.src);
    backup_round(&b, &mut rng, rounds, &expected);
    backup_round(&a, &mut rng, rounds + 3, &expected);

    // Every remaining snapshot restores to what its source held.
    let snaps = c.json(&["snapshots"]);
    let snaps = snaps.as_array().unwrap();
    assert!(snaps.len() >= 4, "{snaps:?}");
    let expected = expected.lock().unwrap();
    for snap in snaps {
        let id = snap["id"].as_str().unwrap();
        let want = expected.get(id).unwrap_or_else(|| panic!("snapshot {id} was not made by this test"));
        let target = c.path(&format!("restore-{}", &id[..12]));
        c.ok(&["restore", id, "--target", target.to_str().unwrap()]);
        let source = snap["sources"][0].as_str().unwrap();
        let restored = target.join(source.strip_prefix('/').unwrap());
        assert_eq!(&contents(&restored), want, "snapshot {id} restores to what {source} held");
    }
    for m in [&a, &b, &c] {
        let out = m.run(&["verify", "--read-data"]);
        assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), stderr_of(&out));
    }
    if a.repo.exists() {
        assert!(lock_objects(&a.repo).is_empty(), "every command released its lock");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

#[test]
fn two_machines_back_up_while_a_third_forgets_and_prunes() {
    shared_repository_scenario(Env::with_backup_toml(SMALL_PACKS), 4);
}

/// The same through the S3 plugin against SeaweedFS (conditional put on): skipped with a loud
/// message on a machine without `weed`, a failure in CI.
#[test]
fn seaweedfs_two_machines_back_up_while_a_third_forgets_and_prunes() {
    let Some(server) = common::servers::require(common::servers::seaweedfs_s3()) else { return };
    let base = common::remote::remote_env_with(
        common::remote::Flavour::Seaweed,
        &server,
        &server.origin(),
        SMALL_PACKS,
        ", conditional_put = true",
    );
    shared_repository_scenario(base, 3);
}
