//! Interruption costs nothing: `kill -9` of the real process at any moment loses nothing
//! already uploaded, needs no manual step, and the next run carries on.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

const CRASH_CONFIG: &str = "pack_size = \"1MiB\"\n\n[checkpoint]\ninterval_bytes = \"4MiB\"";

fn kill(child: &mut Child) -> bool {
    // std's kill is SIGKILL on Unix: no cleanup runs in the victim.
    let exited = child.try_wait().unwrap().is_some();
    if !exited {
        child.kill().unwrap();
    }
    child.wait().unwrap();
    !exited
}

/// True once an upload is in flight: the fs backend's temporary file exists.
fn upload_in_flight(repo: &std::path::Path) -> bool {
    repo_objects(repo).iter().any(|(n, _)| n.contains(".cairn-upload-"))
}

#[test]
fn kill_at_random_points_then_finish_loses_nothing() {
    let big = std::env::var("CAIRN_KILL_TEST_BIG").is_ok_and(|v| v == "1");
    let seed: u64 = std::env::var("CAIRN_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("kill test seed {seed} (replay with CAIRN_KILL_SEED={seed}); big dataset: {big}");
    let env = Env::with_backup_toml(CRASH_CONFIG);
    let (small, medium): (usize, Vec<usize>) = if big {
        (20_000, vec![64 << 20, 48 << 20, 32 << 20, 24 << 20, 16 << 20, 9 << 20, 5 << 20])
    } else {
        (1_500, vec![12 << 20, 6 << 20, 3 << 20, (1 << 20) + 7])
    };
    let mut total = gen_dataset(&env.src, 1, small, &medium);
    env.ok(&["init"]);

    let mut rng = Rng::new(seed);
    let (mut kills, mut in_flight, mut first_second, mut completed, mut round) = (0, 0, 0, 0, 1u64);
    let started = Instant::now();
    while kills < 30 {
        let mut child = env.cmd(&["backup"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let t0 = Instant::now();
        let killed = match rng.below(3) {
            0 => {
                // Inside the first second.
                std::thread::sleep(Duration::from_millis(rng.below(1000)));
                first_second += 1;
                kill(&mut child)
            }
            1 => {
                // While a pack upload is in flight (or give up after 20 s).
                while t0.elapsed() < Duration::from_secs(20)
                    && child.try_wait().unwrap().is_none()
                    && !upload_in_flight(&env.repo)
                {
                    std::thread::sleep(Duration::from_micros(200));
                }
                let during = upload_in_flight(&env.repo);
                let k = kill(&mut child);
                if k && during {
                    in_flight += 1;
                }
                k
            }
            _ => {
                std::thread::sleep(Duration::from_millis(rng.below(4000)));
                kill(&mut child)
            }
        };
        if killed {
            kills += 1;
        } else {
            // The run finished before the kill: give the next runs new data to work on.
            completed += 1;
            round += 1;
            total += gen_dataset(&env.src, round, small / 4, &medium[..2]);
        }
        assert!(started.elapsed() < Duration::from_secs(900), "kill test is taking too long");
    }
    println!(
        "{kills} kill points ({first_second} in the first second, {in_flight} with an upload in flight), \
         {completed} runs completed between kills, {} MiB of source",
        total >> 20
    );
    assert!(in_flight > 0, "no kill happened while an upload was in flight");

    // Now let it finish.
    let done = env.json(&["backup"]);
    assert_eq!(done["errors"], 0, "{done}");
    let snaps = env.json(&["snapshots"]);
    let partial: Vec<_> = snaps.as_array().unwrap().iter().filter(|s| s["partial"] == true).collect();
    assert!(partial.is_empty(), "partial snapshots remain after a complete run: {partial:?}");

    let target = env.path("restore");
    let r = env.json(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(r["failed"].as_array().unwrap().len(), 0, "{r}");
    let diffs = diff_trees(&env.src, &env.restored_src(&target));
    assert!(diffs.is_empty(), "restore differs after {kills} kills:\n{}", diffs.join("\n"));
    assert_repo_matches_journal(&env.repo, &env.state);

    // Same data, backed up without interruption, into a fresh repository.
    let clean = Env::with_backup_toml(CRASH_CONFIG);
    std::fs::remove_dir(&clean.src).unwrap();
    let text = std::fs::read_to_string(&clean.config)
        .unwrap()
        .replace(&format!("sources = [{:?}]", clean.src), &format!("sources = [{:?}]", env.src));
    clean.write_config(&text);
    clean.ok(&["init"]);
    clean.ok(&["backup"]);
    let (a, b) = (pack_bytes(&env.repo), pack_bytes(&clean.repo));
    let ratio = a as f64 / b as f64;
    println!("repository size: {a} bytes after {kills} kills, {b} bytes uninterrupted: ratio {ratio:.3}");
    assert!(ratio < 1.05, "interrupted repository is {ratio:.3}x an uninterrupted one");
}

#[test]
fn resumed_backup_repeats_only_the_work_after_the_last_checkpoint() {
    let env = Env::with_backup_toml("pack_size = \"1MiB\"\n\n[checkpoint]\ninterval_bytes = \"6MiB\"");
    let total =
        gen_dataset(&env.src, 2, 600, &[8 << 20, 8 << 20, 8 << 20, 8 << 20, 8 << 20, 8 << 20, 4 << 20]);
    env.ok(&["init"]);
    let mut child = env.cmd(&["backup"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    while pack_bytes(&env.repo) < total / 2 && t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(2));
    }
    let uploaded_before = pack_bytes(&env.repo);
    assert!(kill(&mut child), "the backup finished before it could be interrupted");

    let snaps = env.json(&["snapshots"]);
    // A run's partial snapshots share its start time (their order is by id): the last
    // checkpoint's is the one whose tree covers the most.
    let partial = snaps
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["partial"] == true)
        .max_by_key(|s| s["bytes"].as_u64().unwrap())
        .cloned();
    let partial = partial.expect("a checkpoint should have written a partial snapshot");
    let checkpointed = partial["bytes"].as_u64().unwrap();
    assert!(checkpointed > 0);

    // The partial snapshot restores what it covers.
    let target = env.path("partial-restore");
    env.ok(&["restore", partial["id"].as_str().unwrap(), "--target", target.to_str().unwrap()]);

    let resumed = env.json(&["backup"]);
    let read = resumed["bytes_read"].as_u64().unwrap();
    let uploaded = resumed["bytes_uploaded"].as_u64().unwrap();
    println!(
        "resume efficiency: source {total} bytes; interrupted after {uploaded_before} bytes of packs were stored; \
         last checkpoint covered {checkpointed} bytes; the resumed run read {read} bytes and uploaded {uploaded} bytes \
         (an uninterrupted run reads {total})"
    );
    // Files covered by the checkpoint are not read again; work after it is.
    assert!(
        read <= total - checkpointed,
        "read {read}, but only {} were after the checkpoint",
        total - checkpointed
    );
    // Packs finished after the checkpoint are kept: nothing is uploaded twice.
    assert!(uploaded <= total - checkpointed + (1 << 20), "uploaded {uploaded}");
    assert!(
        uploaded < total - uploaded_before / 2,
        "uploaded {uploaded}: work stored before the kill was redone"
    );
    let target = env.path("restore");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(diff_trees(&env.src, &env.restored_src(&target)).is_empty());
    assert_repo_matches_journal(&env.repo, &env.state);
}

/// Spawns `cairn backup` with `$CAIRN_TEST_PAUSE=point` and waits until it pauses there.
fn spawn_paused(env: &Env, point: &str) -> Child {
    let mut child = env
        .cmd(&["backup"])
        .env("CAIRN_TEST_PAUSE", point)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let want = format!("cairn-test-pause: {point}");
    loop {
        match lines.next() {
            Some(Ok(l)) if l == want => break,
            Some(_) => {}
            None => panic!("cairn exited before reaching {point}: {:?}", child.wait()),
        }
    }
    child
}

#[test]
fn kill_inside_a_large_journal_transaction_recovers() {
    let env = Env::new();
    gen_dataset(&env.src, 3, 5000, &[]);
    env.ok(&["init"]);
    let mut child = spawn_paused(&env, "journal-publish-file-cache");
    let wal = find_journal(&env.state).with_extension("sqlite-wal");
    assert!(wal.exists(), "the journal runs in WAL mode");
    assert!(kill(&mut child));

    // The next run opens the journal (SQLite rolls the open transaction back), reconciles,
    // and completes; nothing was published from the killed run, so its files are read again.
    let b = env.json(&["backup"]);
    assert_eq!(b["errors"], 0);
    assert_eq!(b["files"], 5000);
    let target = env.path("restore");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(diff_trees(&env.src, &env.restored_src(&target)).is_empty());
    assert_repo_matches_journal(&env.repo, &env.state);
    // And the file cache works again: a rerun reads nothing.
    let again = env.json(&["backup"]);
    assert_eq!(again["files_read"], 0, "{again}");
}

#[test]
fn a_second_process_is_refused_and_a_dead_holder_is_taken_over() {
    let env = Env::new();
    write_file(&env.src.join("a.txt"), b"a", 0o644, 1_600_000_000);
    env.ok(&["init"]);
    let mut holder = spawn_paused(&env, "lock-held");
    let (code, err) = env.fails(&["backup"]);
    assert_eq!(code, 1);
    assert!(err.contains("another cairn process holds the journal lock"), "{err}");
    assert!(err.contains(&format!("pid {}", holder.id())), "the holder is named: {err}");
    // Reading is not blocked by a writer.
    env.ok(&["snapshots"]);
    assert!(kill(&mut holder));
    // The dead holder's lock is taken over without asking.
    env.ok(&["backup"]);
}

#[test]
fn unknown_objects_are_reported_after_an_interruption_and_never_deleted() {
    let env = Env::new();
    write_file(&env.src.join("a.txt"), b"a", 0o644, 1_600_000_000);
    env.ok(&["init"]);
    env.ok(&["backup"]);
    let mut holder = spawn_paused(&env, "lock-held");
    assert!(kill(&mut holder));
    // Another client's pack, or one from a lost journal: cairn has no record of it.
    let foreign = env.repo.join(format!("data/ab/{}", "ab".repeat(32)));
    std::fs::create_dir_all(foreign.parent().unwrap()).unwrap();
    std::fs::write(&foreign, b"not ours").unwrap();
    let out = env.run(&["backup"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("not in this journal") && err.contains("left alone"), "{err}");
    assert_eq!(std::fs::read(&foreign).unwrap(), b"not ours");
}
