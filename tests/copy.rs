//! `cairn copy --to-config OTHER.toml` (issue 15, 3-2-1): snapshots copied into a second
//! repository with its own key and chunker seed, only the chunks it lacks sent, copies
//! recognised and skipped, and a copy killed by `kill -9` anywhere finished by the next run.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

use common::remote::{Flavour, remote_env_with, visible_objects};
use common::*;

const TARGET_PASSWORD: &str = "the target repository has its own password";

/// A source repository (the usual test env) and a target one, each with its own folder,
/// state and password; the source's commands can reach the target's password.
struct Pair {
    src: Env,
    dst: Env,
}

impl Pair {
    fn fs() -> Pair {
        let dst = Env::new();
        dst.write_config(&format!(
            "[repository]\nbackend = \"fs\"\noptions = {{ path = {:?} }}\npassword_env = \"CAIRN_TARGET_PASSWORD\"\n\n\
             [backup]\nsources = [{:?}]\npack_size = \"1MiB\"\n\n[state]\ndir = {:?}\n",
            dst.repo, dst.src, dst.state
        ));
        Pair::with_target(dst)
    }

    fn with_target(mut dst: Env) -> Pair {
        dst.extra_env.push(("CAIRN_TARGET_PASSWORD".into(), TARGET_PASSWORD.into()));
        let mut src = Env::new();
        src.extra_env.extend(dst.extra_env.iter().cloned());
        Pair { src, dst }
    }

    /// Two snapshots of a changing tree in the source, and an empty target.
    fn two_snapshots(&self) -> Vec<String> {
        gen_dataset(&self.src.src.join("one"), 5, 60, &[3 << 20]);
        self.src.ok(&["init"]);
        let first = self.src.json(&["backup"]);
        gen_dataset(&self.src.src.join("two"), 6, 40, &[2 << 20]);
        let second = self.src.json(&["backup"]);
        self.dst.ok(&["init"]);
        [first, second].iter().map(|b| b["snapshot"].as_str().unwrap().to_string()).collect()
    }

    fn copy(&self, snapshots: &[&str]) -> serde_json::Value {
        let mut args = vec!["copy", "--to-config", self.dst.config.to_str().unwrap()];
        args.extend_from_slice(snapshots);
        self.src.json(&args)
    }

    fn copy_cmd(&self) -> std::process::Command {
        self.src.cmd(&["copy", "--to-config", self.dst.config.to_str().unwrap()])
    }

    /// The target holds what the source holds: every snapshot (time, host, sources, tags),
    /// whole when every byte is read, and restoring to the same bytes as the source's (every
    /// snapshot, or with `newest_only` the newest, which holds every file the test wrote).
    fn check_target(&self, newest_only: bool) {
        let key = |v: &serde_json::Value| -> BTreeSet<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|s| format!("{} {} {} {}", s["time"], s["hostname"], s["sources"], s["tags"]))
                .collect()
        };
        let (src_snaps, dst_snaps) = (self.src.json(&["snapshots"]), self.dst.json(&["snapshots"]));
        assert_eq!(key(&src_snaps), key(&dst_snaps), "{src_snaps:#}\n{dst_snaps:#}");
        let v = self.dst.json(&["verify", "--read-data"]);
        assert_eq!(v["whole"], true, "{v:#}");
        let all = src_snaps.as_array().unwrap();
        let newest = all.iter().max_by_key(|s| s["time"].as_str().unwrap().to_string()).unwrap();
        for (i, s) in all.iter().enumerate() {
            if newest_only && s != newest {
                continue;
            }
            let twin = dst_snaps.as_array().unwrap().iter().find(|d| d["time"] == s["time"]).unwrap();
            let (a, b) =
                (self.src.path(&format!("from-source-{i}")), self.src.path(&format!("from-target-{i}")));
            self.src.ok(&["restore", s["id"].as_str().unwrap(), "--target", a.to_str().unwrap()]);
            self.dst.ok(&["restore", twin["id"].as_str().unwrap(), "--target", b.to_str().unwrap()]);
            let diffs = diff_trees(&self.src.restored_src(&a), &self.src.restored_src(&b));
            assert!(diffs.is_empty(), "snapshot {} differs in its copy: {diffs:?}", s["id"]);
        }
    }

    /// A second copy finds everything there: nothing copied, nothing uploaded, not one
    /// object of the target changed.
    fn check_nothing_more_to_copy(&self, objects: impl Fn() -> Vec<(String, u64)>) {
        let before = objects();
        let again = self.copy(&[]);
        assert_eq!(again["copied"].as_array().unwrap().len(), 0, "{again:#}");
        assert_eq!(again["packs_uploaded"], 0, "{again:#}");
        assert_eq!(again["blobs_added"], 0, "{again:#}");
        assert_eq!(objects(), before, "a copy with nothing to do changed the target");
    }
}

/// Packs stored under their final names (not unfinished uploads, which are hidden files).
fn packs(repo: &Path) -> BTreeSet<String> {
    repo_objects(repo)
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n.starts_with("data/") && !n.rsplit('/').next().unwrap().starts_with('.'))
        .collect()
}

#[test]
fn copy_between_fs_repositories_sends_only_what_the_target_lacks() {
    let pair = Pair::fs();
    let ids = pair.two_snapshots();

    // The first snapshot alone, by id.
    let one = pair.copy(&[&ids[0][..8]]);
    assert_eq!(one["copied"].as_array().unwrap().len(), 1, "{one:#}");
    assert_eq!(one["copied"][0]["source"], ids[0].as_str());
    let after_first = one["bytes_added"].as_u64().unwrap();
    assert!(after_first > 3 << 20, "{one:#}");

    // Then all: the first is recognised, only the second's new data is sent.
    let all = pair.copy(&[]);
    assert_eq!(all["skipped"], serde_json::json!([ids[0]]), "{all:#}");
    assert_eq!(all["copied"].as_array().unwrap().len(), 1, "{all:#}");
    let added = all["bytes_added"].as_u64().unwrap();
    assert!(added > 2 << 20 && added < (2 << 20) + (1 << 20), "only the second snapshot's new data: {all:#}");

    pair.check_target(false);
    assert_repo_matches_journal(&pair.dst.repo, &pair.dst.state);
    pair.check_nothing_more_to_copy(|| repo_objects(&pair.dst.repo));

    // A third snapshot that changes one small file: one chunk and its folders travel.
    write_file(&pair.src.src.join("one/changed.txt"), b"a small change", 0o644, 1_600_000_000);
    pair.src.ok(&["backup"]);
    let third = pair.copy(&[]);
    assert_eq!(third["copied"].as_array().unwrap().len(), 1, "{third:#}");
    assert!(third["bytes_added"].as_u64().unwrap() < 64 << 10, "{third:#}");
    pair.check_target(true);

    // The human summary.
    write_file(&pair.src.src.join("one/changed.txt"), b"another change", 0o644, 1_600_000_000);
    pair.src.ok(&["backup"]);
    let out = pair.src.ok(&["copy", "--to-config", pair.dst.config.to_str().unwrap()]);
    assert!(out.contains("1 snapshot(s) copied, 3 already in the target"), "{out}");
}

#[test]
fn copy_into_the_source_itself_is_refused() {
    let env = Env::new();
    env.ok(&["init"]);
    let (code, err) = env.fails(&["copy", "--to-config", env.config.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("the target is the source repository"), "{err}");
}

/// Where a copy is killed: a pause point, or an upload that hangs (after this many finished).
#[derive(Debug, Clone, Copy)]
enum KillAt {
    Pause(&'static str),
    UploadHangs(u32),
}

/// The target on the chaos plugin (the fs backend, plus a hang when asked).
fn chaos_target(dst: &Env, faults: &str) {
    for (name, _) in repo_objects(&dst.repo) {
        if name.starts_with(".chaos-count-") {
            std::fs::remove_file(dst.repo.join(name)).unwrap();
        }
    }
    dst.write_config(&format!(
        "[repository]\nbackend = {:?}\noptions = {{ path = {:?}, faults = {faults:?} }}\n\
         password_env = \"CAIRN_TARGET_PASSWORD\"\ngrants = {{ dirs = [{:?}], call_timeout_secs = 600 }}\n\n\
         [backup]\nsources = [{:?}]\npack_size = \"1MiB\"\n\n[state]\ndir = {:?}\n",
        test_plugin("chaos"),
        dst.repo,
        dst.repo,
        dst.src,
        dst.state
    ));
}

fn kill_copy_at(pair: &Pair, at: KillAt) {
    let mut cmd = pair.copy_cmd();
    cmd.stderr(Stdio::piped()).stdout(Stdio::null());
    if let KillAt::Pause(point) = at {
        cmd.env("CAIRN_TEST_PAUSE", point);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    match at {
        KillAt::Pause(point) => {
            let mut lines = BufReader::new(stderr).lines();
            loop {
                let line = lines.next().expect("cairn ended before the pause point").unwrap();
                if line.contains(&format!("cairn-test-pause: {point}")) {
                    break;
                }
            }
        }
        KillAt::UploadHangs(n) => {
            let marker = pair.dst.repo.join(format!(".chaos-count-finish.{}", n + 1));
            while !marker.exists() {
                assert!(child.try_wait().unwrap().is_none(), "cairn ended before the hanging upload");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGKILL) }, 0);
    child.wait().unwrap();
}

#[test]
fn a_copy_killed_anywhere_is_finished_by_the_next_run() {
    for at in [
        KillAt::UploadHangs(2),
        KillAt::Pause("copy-packed"),
        KillAt::Pause("copy-indexed"),
        KillAt::Pause("copy-snapshot-written"),
    ] {
        let pair = Pair::fs();
        chaos_target(&pair.dst, "");
        pair.two_snapshots();
        let faults = match at {
            KillAt::UploadHangs(n) => format!("finish#{}:hang", n + 1),
            KillAt::Pause(_) => String::new(),
        };
        chaos_target(&pair.dst, &faults);
        kill_copy_at(&pair, at);
        chaos_target(&pair.dst, "");
        let before = packs(&pair.dst.repo);
        assert!(!before.is_empty(), "{at:?}: nothing was uploaded before the kill");
        // Packs the killed run had begun to upload but not stored: the one whose upload hung,
        // and any other upload in flight at the kill (their number depends on timing).
        let in_flight = journal_objects(&pair.dst.state)
            .into_iter()
            .filter(|(n, st, _, _)| n.starts_with("data/") && st == "uploading" && !before.contains(n))
            .count() as u64;
        if matches!(at, KillAt::UploadHangs(_)) {
            assert!(in_flight >= 1, "{at:?}: the hanging upload is not in the journal");
        }

        let done = pair.copy(&[]);
        let after = packs(&pair.dst.repo);
        // The packs uploaded before the kill are used, not sent again.
        assert!(
            before.is_subset(&after),
            "{at:?}: packs of the killed run are gone: {:?}",
            before.difference(&after).collect::<Vec<_>>()
        );
        // A pack whose upload was cut was finished on disk: the rerun uploads it from there as
        // it opens the target (not counted in the copy's own uploads), not packed again.
        assert_eq!(
            after.len() as u64,
            before.len() as u64 + in_flight + done["packs_uploaded"].as_u64().unwrap(),
            "{at:?}: {done:#}"
        );
        let copied = done["copied"].as_array().unwrap().len() + done["skipped"].as_array().unwrap().len();
        assert_eq!(copied, 2, "{at:?}: {done:#}");
        match at {
            KillAt::Pause("copy-snapshot-written") => {
                assert_eq!(done["skipped"].as_array().unwrap().len(), 1, "{at:?}: {done:#}")
            }
            KillAt::Pause(_) => {
                // The first snapshot's packs were all uploaded: only the second's data goes.
                assert!(done["bytes_added"].as_u64().unwrap() < 3 << 20, "{at:?}: {done:#}")
            }
            KillAt::UploadHangs(_) => {}
        }
        pair.check_target(true);
        assert_repo_matches_journal(&pair.dst.repo, &pair.dst.state);
        pair.check_nothing_more_to_copy(|| {
            repo_objects(&pair.dst.repo).into_iter().filter(|(n, _)| !n.starts_with(".chaos")).collect()
        });
    }
}

#[test]
fn copy_to_s3_on_seaweedfs() {
    let Some(server) = common::servers::require(common::servers::seaweedfs_s3()) else { return };
    let dst = remote_env_with(Flavour::Seaweed, &server, &server.origin(), "pack_size = \"1MiB\"", "");
    let text = std::fs::read_to_string(&dst.config).unwrap();
    dst.write_config(&text.replace("\"CAIRN_TEST_PASSWORD\"", "\"CAIRN_TARGET_PASSWORD\""));
    let pair = Pair::with_target(dst);
    pair.two_snapshots();
    let done = pair.copy(&[]);
    assert_eq!(done["copied"].as_array().unwrap().len(), 2, "{done:#}");
    assert!(done["packs_uploaded"].as_u64().unwrap() > 2, "{done:#}");
    pair.check_target(true);
    // What the target holds, straight from the server.
    let objects =
        || visible_objects(Flavour::Seaweed, &server).into_iter().map(|(n, b)| (n, b.len() as u64)).collect();
    pair.check_nothing_more_to_copy(objects);
}

/// Reads of packs the chaos plugin logged in `repo` since the logs were last removed, which
/// this removes.
fn take_pack_reads(repo: &Path) -> usize {
    let mut reads = 0;
    for (name, _) in repo_objects(repo) {
        if name.starts_with(".chaos-log-") {
            let text = std::fs::read_to_string(repo.join(&name)).unwrap();
            reads += text.lines().filter(|l| l.starts_with("read \"data/")).count();
            std::fs::remove_file(repo.join(&name)).unwrap();
        }
    }
    reads
}

#[test]
fn chunks_the_target_holds_are_not_read_from_the_source_again() {
    let pair = Pair::fs();
    // The source on the chaos plugin, logging every read of a pack.
    let src = &pair.src;
    std::fs::create_dir_all(&src.repo).unwrap();
    src.write_config(&format!(
        "[repository]\nbackend = {:?}\noptions = {{ path = {:?}, log = \"1\" }}\n\
         password_env = \"CAIRN_TEST_PASSWORD\"\ngrants = {{ dirs = [{:?}] }}\n\n\
         [backup]\nsources = [{:?}]\n\n[state]\ndir = {:?}\n",
        test_plugin("chaos"),
        src.repo,
        src.repo,
        src.src,
        src.state
    ));
    pair.two_snapshots();
    pair.copy(&[]);

    // One small file changed: the new snapshot's other chunks are known to the target, so
    // only tree packs and the new chunk's pack are read.
    write_file(&src.src.join("one/changed.txt"), b"a small change", 0o644, 1_600_000_000);
    src.ok(&["backup"]);
    take_pack_reads(&src.repo);
    let third = pair.copy(&[]);
    assert_eq!(third["copied"].as_array().unwrap().len(), 1, "{third:#}");
    let reads = take_pack_reads(&src.repo);
    assert!(reads <= 8, "{reads} reads of source packs to copy one changed file");

    // Without the map, every chunk of the snapshot is read again (and none is stored).
    let dst_dir = find_journal(&pair.dst.state).parent().unwrap().to_path_buf();
    for entry in std::fs::read_dir(&dst_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with("copy-from-") {
            std::fs::remove_file(path).unwrap();
        }
    }
    write_file(&src.src.join("one/changed.txt"), b"another change", 0o644, 1_600_000_000);
    src.ok(&["backup"]);
    take_pack_reads(&src.repo);
    let fourth = pair.copy(&[]);
    assert!(fourth["blobs_added"].as_u64().unwrap() < 10, "{fourth:#}");
    let reads = take_pack_reads(&src.repo);
    assert!(reads > 90, "only {reads} reads of source packs without the map (101 small files)");
    pair.check_target(true);
}
