//! Restore survives `kill -9` and never misleads: a final name only ever holds complete,
//! correct bytes; running the same restore again finishes the job, skipping what is
//! complete and downloading little more than what is missing (counted from outside, with
//! strace on the fs backend's pack files); `--verify` reads everything back.

mod common;

use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const PARTIAL: &str = ".cairn-partial-";

/// Small packs, so a restore reads many and "one pack per worker" is a tight bound.
const CONFIG: &str = "pack_size = \"1MiB\"\nthreads = 2";

/// Every regular file and symlink below `dir` (paths below it), temporary files included.
fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

fn is_partial(p: &Path) -> bool {
    p.file_name().unwrap().as_encoded_bytes().starts_with(PARTIAL.as_bytes())
}

/// Bytes allocated on disk below `dir`: what a restore has written so far (its files are
/// sparse until written). Entries renamed or removed while walking are skipped.
fn allocated(dir: &Path) -> u64 {
    entries(dir)
        .iter()
        .filter_map(|p| std::fs::symlink_metadata(dir.join(p)).ok())
        .filter(|m| m.is_file())
        .map(|m| m.blocks() * 512)
        .sum()
}

/// Checks every final-named regular file below `restored` against `src`: same bytes and
/// mtime. Returns how many there are.
fn final_files_are_correct(src: &Path, restored: &Path, when: &str) -> usize {
    let mut n = 0;
    for rel in entries(restored).iter().filter(|p| !is_partial(p)) {
        let (got, want) = (restored.join(rel), src.join(rel));
        let Ok(m) = std::fs::symlink_metadata(&got) else { continue };
        if !m.is_file() {
            continue;
        }
        let w = std::fs::symlink_metadata(&want).unwrap();
        assert!(
            std::fs::read(&got).unwrap() == std::fs::read(&want).unwrap(),
            "{when}: {} has its final name but not its bytes",
            rel.display()
        );
        assert_eq!((m.mtime(), m.mtime_nsec()), (w.mtime(), w.mtime_nsec()), "{when}: {}", rel.display());
        n += 1;
    }
    n
}

/// Plaintext bytes a completing restore still has to fetch, judged from outside: every
/// source file not at its final name, less the 4 KiB blocks its temporary file already
/// holds with the right bytes.
fn missing_bytes(src: &Path, restored: &Path) -> u64 {
    let mut missing = 0u64;
    for rel in entries(src) {
        let want = src.join(&rel);
        if !std::fs::symlink_metadata(&want).unwrap().is_file() {
            continue;
        }
        let want = std::fs::read(&want).unwrap();
        if std::fs::read(restored.join(&rel)).is_ok_and(|got| got == want) {
            continue;
        }
        let name = rel.file_name().unwrap().as_encoded_bytes().to_vec();
        let dir = restored.join(rel.parent().unwrap());
        let partial = std::fs::read_dir(&dir).ok().and_then(|rd| {
            rd.flatten().find(|e| {
                let n = e.file_name().as_encoded_bytes().to_vec();
                n.starts_with(PARTIAL.as_bytes())
                    && n.ends_with(&name)
                    && n.len() == PARTIAL.len() + 17 + name.len()
            })
        });
        let have = partial.map(|e| std::fs::read(e.path()).unwrap()).unwrap_or_default();
        let held: usize = want
            .chunks(4096)
            .enumerate()
            .filter(|(i, block)| have.get(i * 4096..i * 4096 + block.len()) == Some(block))
            .map(|(_, block)| block.len())
            .sum();
        missing += (want.len() - held) as u64;
    }
    missing
}

/// Runs cairn under `strace -ff` and returns its output and the bytes it read from the
/// repository's pack files (`data/`), as the kernel returned them.
fn run_counting_pack_reads(env: &Env, args: &[&str]) -> (Output, u64) {
    let probe = Command::new("strace").arg("-V").output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "strace is needed to count pack reads from outside (CI installs it: .ci/run)"
    );
    let cmd = env.cmd(args);
    let dir = tempfile::tempdir().unwrap();
    let mut strace = Command::new("strace");
    strace
        .args(["-f", "-ff", "-qq", "-s", "0", "-y", "-e", "trace=read,pread64,readv,preadv,preadv2", "-o"])
        .arg(dir.path().join("t"))
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => strace.env(k, v),
            None => strace.env_remove(k),
        };
    }
    let out = strace.output().unwrap();
    let packs = format!("{}/data/", env.repo.display());
    let mut bytes = 0u64;
    for e in std::fs::read_dir(dir.path()).unwrap() {
        for line in std::fs::read_to_string(e.unwrap().path()).unwrap().lines() {
            // pread64(12</…/repo/data/ab/ab…>, ""..., 1048576, 0) = 1048576
            let Some(open) = line.find('<') else { continue };
            let Some(close) = line[open..].find('>') else { continue };
            if !line[open + 1..open + close].starts_with(&packs) {
                continue;
            }
            if let Some(n) = line.rsplit(" = ").next().and_then(|r| r.trim().parse::<i64>().ok()) {
                bytes += n.max(0) as u64;
            }
        }
    }
    (out, bytes)
}

fn json_of(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "restore failed with {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The largest pack file in the repository: "one pack", measured.
fn largest_pack(repo: &Path) -> u64 {
    repo_objects(repo).iter().filter(|(n, _)| n.starts_with("data/")).map(|(_, s)| *s).max().unwrap()
}

/// A tree with many small files, a few large ones (spanning many packs), a read-only
/// file, symlinks and set folder times.
fn build_source(env: &Env) -> u64 {
    let mut total = gen_dataset(&env.src, 7, 400, &[5 << 20, 3 << 20, (2 << 20) + 4321]);
    write_file(&env.src.join("ro/read-only.txt"), b"read only\n", 0o444, 1_620_000_000);
    write_file(&env.src.join("ro/exec.sh"), b"#!/bin/sh\necho hi\n", 0o755, 1_620_000_001);
    total += 28;
    symlink("read-only.txt", env.src.join("ro/link")).unwrap();
    symlink("/nowhere/dangling", env.src.join("ro/dangling")).unwrap();
    fix_dir_times(&env.src, 1_630_000_000);
    total
}

#[test]
fn killed_restores_never_show_wrong_bytes_and_the_completing_run_downloads_only_what_is_missing() {
    let seed: u64 =
        std::env::var("CAIRN_RESTORE_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
    println!("restore kill test seed {seed} (replay with CAIRN_RESTORE_KILL_SEED={seed})");
    let env = Env::with_backup_toml(CONFIG);
    let total = build_source(&env);
    env.ok(&["init"]);
    env.ok(&["backup"]);
    let pack = largest_pack(&env.repo);

    // An uninterrupted restore, for comparison.
    let full_target = env.path("full");
    let target_arg = full_target.to_str().unwrap();
    let (out, full_download) =
        run_counting_pack_reads(&env, &["--json", "restore", "latest", "--target", target_arg]);
    let full = json_of(&out);
    let diffs = diff_trees(&env.src, &env.restored_src(&full_target));
    assert!(diffs.is_empty(), "uninterrupted restore differs:\n{}", diffs.join("\n"));
    let workers = full["workers"].as_u64().unwrap();

    let target = env.path("target");
    let restored = env.restored_src(&target);
    let src_alloc = allocated(&env.src);
    let mut rng = Rng::new(seed);
    let (mut kills, mut finished_first, mut partial_seen, mut final_checked) = (0, 0, 0, 0);
    let started = Instant::now();
    while kills < 10 {
        assert!(started.elapsed() < Duration::from_secs(300), "kill test is taking too long");
        // Kill once the target holds a random share of what is still to be written. A
        // target that is mostly there is started over, so kill points cover the whole
        // restore, and the last run is killed in the middle of a fresh one.
        if allocated(&target) > src_alloc / 2 || kills == 9 {
            let _ = std::fs::remove_dir_all(&target);
        }
        let before = allocated(&target);
        let share = 5 + rng.below(86);
        let threshold = before + src_alloc.saturating_sub(before) * share / 100;
        let mut child = env
            .cmd(&["restore", "latest", "--target", target.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let killed = loop {
            if child.try_wait().unwrap().is_some() {
                break false;
            }
            if allocated(&target) >= threshold {
                child.kill().unwrap(); // SIGKILL: nothing runs in the victim.
                child.wait().unwrap();
                break true;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let when = format!("after kill {kills} at {share}% of the rest (seed {seed})");
        final_checked += final_files_are_correct(&env.src, &restored, &when);
        if !killed {
            // It finished first: start over so the next kill lands in real work.
            finished_first += 1;
            std::fs::remove_dir_all(&target).unwrap();
            continue;
        }
        kills += 1;
        partial_seen += entries(&target).iter().filter(|p| is_partial(p)).count();
    }

    // The kills saw both kinds of name, so both checks above had something to check.
    assert!(
        final_checked > 0 && partial_seen > 0,
        "kills saw {final_checked} final and {partial_seen} temporary files"
    );
    let missing = missing_bytes(&env.src, &restored);
    let (out, resumed_download) =
        run_counting_pack_reads(&env, &["--json", "restore", "latest", "--target", target.to_str().unwrap()]);
    let resumed = json_of(&out);
    let diffs = diff_trees(&env.src, &restored);
    assert!(diffs.is_empty(), "restore differs after {kills} kills (seed {seed}):\n{}", diffs.join("\n"));
    let left: Vec<_> = entries(&target).into_iter().filter(|p| is_partial(p)).collect();
    assert!(left.is_empty(), "temporary files left behind: {left:?}");

    // What a restore into a complete target reads: the trees only.
    let (out, trees_download) =
        run_counting_pack_reads(&env, &["--json", "restore", "latest", "--target", target.to_str().unwrap()]);
    let again = json_of(&out);
    assert_eq!(again["skipped"], again["files"], "{again}");
    assert_eq!(again["downloaded_bytes"], 0, "{again}");

    println!(
        "source {total} bytes; {kills} kills ({finished_first} runs finished first), {partial_seen} temporary \
         files seen, {final_checked} final-named files checked after kills; packs up to {pack} bytes, {workers} \
         workers"
    );
    println!(
        "pack bytes read (strace): uninterrupted {full_download}; completing run {resumed_download} with \
         {missing} bytes missing and {} files skipped; into a complete target {trees_download}",
        resumed["skipped"]
    );
    let bound = trees_download + missing + missing / 50 + workers * pack;
    assert!(
        resumed_download <= bound,
        "the completing restore read {resumed_download} pack bytes; missing were {missing}, trees \
         {trees_download}, one pack per worker {} (seed {seed})",
        workers * pack
    );
}

#[test]
fn verify_catches_a_file_edited_after_restore_and_the_next_restore_rewrites_changed_files() {
    let env = Env::with_backup_toml(CONFIG);
    write_file(&env.src.join("same-size.txt"), b"the original words\n", 0o644, 1_600_000_000);
    write_file(&env.src.join("big.bin"), &Rng::new(3).bytes(700 << 10), 0o600, 1_600_000_001);
    write_file(&env.src.join("grown.txt"), b"short\n", 0o640, 1_600_000_002);
    env.ok(&["init"]);
    env.ok(&["backup"]);
    let target = env.path("target");
    let t = target.to_str().unwrap();
    env.ok(&["restore", "latest", "--target", t]);
    let restored = env.restored_src(&target);
    assert!(diff_trees(&env.src, &restored).is_empty());

    // An edit that keeps size and mtime (only reading the bytes can tell), and an
    // ordinary one.
    let edited = restored.join("same-size.txt");
    std::fs::write(&edited, b"THE ORIGINAL WORDS\n").unwrap();
    set_mtime(&edited, 1_600_000_000, 123_456_789);
    std::fs::write(restored.join("grown.txt"), b"short, and then some more\n").unwrap();

    let (code, stderr) = env.fails(&["restore", "latest", "--target", t, "--verify"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("differs: ") && stderr.contains("same-size.txt: content differs from byte 0"),
        "{stderr}"
    );
    assert!(stderr.contains("1 restored file(s) differ from the snapshot"), "{stderr}");
    assert!(!stderr.contains("grown.txt"), "{stderr}");
    // The ordinary edit was noticed by size and mtime and written again.
    assert_eq!(std::fs::read(restored.join("grown.txt")).unwrap(), b"short\n");
    assert_eq!(std::fs::read(&edited).unwrap(), b"THE ORIGINAL WORDS\n");

    // The next restore writes the file `--verify` flagged, and only that one.
    let out = env.json(&["restore", "latest", "--target", t, "--verify"]);
    assert_eq!((out["files"].as_u64(), out["skipped"].as_u64()), (Some(3), Some(2)), "{out}");
    assert_eq!(out["mismatched"], serde_json::json!([]), "{out}");
    assert_eq!(out["verified"], 3, "{out}");
    let diffs = diff_trees(&env.src, &restored);
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    assert!(entries(&target).iter().all(|p| !is_partial(p)));

    // The human summary says how many were skipped.
    let human = env.ok(&["restore", "latest", "--target", t]);
    assert!(human.contains("skipped 3 file(s)"), "{human}");
}

#[test]
fn a_file_with_the_longest_name_is_restored_through_its_temporary_name() {
    let env = Env::with_backup_toml(CONFIG);
    let long = "é".repeat(127) + "x"; // 255 bytes
    write_file(&env.src.join(&long), &Rng::new(5).bytes(300 << 10), 0o644, 1_600_000_000);
    env.ok(&["init"]);
    env.ok(&["backup"]);
    let target = env.path("target");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let restored = env.restored_src(&target);
    let diffs = diff_trees(&env.src, &restored);
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    assert_eq!(entries(&restored), vec![PathBuf::from(&long)]);
}

#[test]
fn leftover_temporary_files_are_removed_and_snapshot_entries_with_such_names_are_kept() {
    let env = Env::with_backup_toml(CONFIG);
    // A name in the snapshot that looks like a temporary file is the user's, and kept.
    let lookalike = format!("{PARTIAL}0123456789abcdef-mine.txt");
    write_file(&env.src.join("d").join(&lookalike), b"user data\n", 0o644, 1_600_000_000);
    write_file(&env.src.join("d/f.txt"), b"restored\n", 0o644, 1_600_000_001);
    fix_dir_times(&env.src, 1_630_000_000);
    env.ok(&["init"]);
    env.ok(&["backup"]);
    let target = env.path("target");
    let t = target.to_str().unwrap();
    env.ok(&["restore", "latest", "--target", t]);
    let restored = env.restored_src(&target);

    // What an interrupted restore of another snapshot would leave: temporary files of
    // files this snapshot does not have, in the target's root and deeper.
    let planted = [
        target.join(format!("{PARTIAL}00000000000000aa-gone.bin")),
        restored.join(format!("d/{PARTIAL}00000000000000bb-gone.bin")),
    ];
    for p in &planted {
        std::fs::write(p, b"half a file").unwrap();
    }
    let out = env.json(&["restore", "latest", "--target", t]);
    assert_eq!(out["skipped"], 2, "{out}");
    for p in &planted {
        assert!(!p.exists(), "{} was left behind", p.display());
    }
    assert_eq!(std::fs::read(restored.join("d").join(&lookalike)).unwrap(), b"user data\n");
    let diffs = diff_trees(&env.src, &restored);
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

/// A temporary file holding the first three quarters of a large file (what a killed run
/// leaves) is continued: the completing run reads from packs the missing quarter, at most
/// one more chunk (the one the kill cut), and the trees. Counted with strace.
#[test]
fn a_partial_file_is_continued_from_the_chunks_it_holds() {
    let env = Env::with_backup_toml(CONFIG);
    let content = Rng::new(11).bytes(12 << 20);
    write_file(&env.src.join("big.bin"), &content, 0o640, 1_600_000_000);
    env.ok(&["init"]);
    env.ok(&["backup"]);
    let target = env.path("target");
    let t = target.to_str().unwrap();
    env.ok(&["restore", "latest", "--target", t]);
    let (out, trees) = run_counting_pack_reads(&env, &["--json", "restore", "latest", "--target", t]);
    assert_eq!(json_of(&out)["skipped"], 1);

    // What a run killed at 75% leaves: no final name, a sparse temporary file.
    let restored = env.restored_src(&target);
    std::fs::remove_file(restored.join("big.bin")).unwrap();
    let hash = blake3::hash(b"big.bin");
    let hex: String = hash.as_bytes()[..8].iter().map(|b| format!("{b:02x}")).collect();
    let partial = restored.join(format!("{PARTIAL}{hex}-big.bin"));
    let held = 9 << 20;
    let mut half = content[..held].to_vec();
    half.resize(content.len(), 0);
    std::fs::write(&partial, &half).unwrap();

    let (out, read) = run_counting_pack_reads(&env, &["--json", "restore", "latest", "--target", t]);
    let out = json_of(&out);
    assert!(!partial.exists(), "the temporary file was left behind");
    let diffs = diff_trees(&env.src, &restored);
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    let missing = (content.len() - held) as u64;
    let max_chunk = 4 << 20;
    println!(
        "continued: {read} pack bytes read for {missing} missing (trees {trees}); claimed {}",
        out["downloaded_bytes"]
    );
    assert!(
        read <= trees + missing + max_chunk,
        "read {read} pack bytes for {missing} missing (trees {trees})"
    );
    assert!(read >= missing, "read {read} pack bytes, less than the {missing} missing: the count is wrong");
}

fn marker_of(path: &Path) -> Option<Vec<u8>> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: valid NUL-terminated strings and a buffer of the given size.
    let n = unsafe {
        libc::lgetxattr(p.as_ptr(), c"user.cairn.restored".as_ptr(), buf.as_mut_ptr().cast(), buf.len())
    };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

/// A complete file without the marker (a copy, a filesystem without user extended
/// attributes) is read, found complete, skipped without a download, and marked; a file
/// whose bytes differ is written again.
#[test]
fn a_complete_file_without_its_marker_is_checked_skipped_and_marked() {
    let env = Env::with_backup_toml(CONFIG);
    write_file(&env.src.join("a.bin"), &Rng::new(21).bytes(900 << 10), 0o644, 1_600_000_000);
    write_file(&env.src.join("b.bin"), &Rng::new(22).bytes(900 << 10), 0o644, 1_600_000_000);
    env.ok(&["init"]);
    env.ok(&["backup"]);
    let target = env.path("target");
    let t = target.to_str().unwrap();
    env.ok(&["restore", "latest", "--target", t]);
    let restored = env.restored_src(&target);
    let (a, b) = (restored.join("a.bin"), restored.join("b.bin"));
    let marker = marker_of(&a).expect("a restored file carries the marker");
    assert_eq!(marker.len(), 32);
    for p in [&a, &b] {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid NUL-terminated strings.
        assert_eq!(unsafe { libc::removexattr(c.as_ptr(), c"user.cairn.restored".as_ptr()) }, 0);
    }
    // b keeps its size and mtime but not its bytes.
    let mut bytes = std::fs::read(&b).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&b, &bytes).unwrap();
    set_mtime(&b, 1_600_000_000, 123_456_789);

    let out = env.json(&["restore", "latest", "--target", t]);
    assert_eq!(out["skipped"], 1, "{out}");
    assert_eq!(marker_of(&a), Some(marker), "a was checked but not marked");
    assert!(marker_of(&b).is_some());
    let diffs = diff_trees(&env.src, &restored);
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    let again = env.json(&["restore", "latest", "--target", t]);
    assert_eq!(
        (again["skipped"].as_u64(), again["downloaded_bytes"].as_u64()),
        (Some(2), Some(0)),
        "{again}"
    );
}
