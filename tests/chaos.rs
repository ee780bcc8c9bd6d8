//! Faults injected by the chaos test plugin: each backup either succeeds correctly or
//! fails with a clear message, and the next run without the fault completes, restores
//! identically, and loses nothing.

mod common;

use common::*;

struct Chaos {
    env: Env,
}

impl Chaos {
    fn new() -> Chaos {
        let env = Env::new();
        std::fs::create_dir_all(&env.repo).unwrap();
        let c = Chaos { env };
        c.set_faults("");
        c
    }

    /// Rewrites the config with these faults, and resets the plugin's call counters.
    fn set_faults(&self, faults: &str) {
        let env = &self.env;
        for (name, _) in repo_objects(&env.repo) {
            if name.starts_with(".chaos-count-") {
                std::fs::remove_file(env.repo.join(name)).unwrap();
            }
        }
        env.write_config(&format!(
            "[repository]\nbackend = {:?}\noptions = {{ path = {:?}, faults = {faults:?} }}\n\
             password_env = \"CAIRN_TEST_PASSWORD\"\ngrants = {{ dirs = [{:?}], call_timeout_secs = 2 }}\n\n\
             [backup]\nsources = [{:?}]\npack_size = \"1MiB\"\n\n[state]\ndir = {:?}\n",
            test_plugin("chaos"),
            env.repo,
            env.repo,
            env.src,
            env.state
        ));
    }

    /// A first good snapshot, then new data for the faulty run. Returns the first
    /// snapshot's id and file count.
    fn prepare(&self) -> (String, u64) {
        gen_dataset(&self.env.src.join("v1"), 11, 120, &[3 << 20]);
        self.env.ok(&["init"]);
        let first = self.env.json(&["backup"]);
        gen_dataset(&self.env.src.join("v2"), 12, 120, &[4 << 20, 2 << 20]);
        (first["snapshot"].as_str().unwrap().to_string(), first["files"].as_u64().unwrap())
    }

    /// Without faults: a backup completes, restores identically, the first snapshot is
    /// intact, and the repository matches the journal.
    fn recover_and_check(&self, first: &(String, u64)) {
        self.set_faults("");
        let env = &self.env;
        let b = env.json(&["backup"]);
        assert_eq!(b["errors"], 0, "{b}");
        let target = env.path("restore-latest");
        env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
        let diffs = diff_trees(&env.src, &env.restored_src(&target));
        assert!(diffs.is_empty(), "{}", diffs.join("\n"));
        let old = env.path("restore-first");
        let r = env.json(&["restore", &first.0, "--target", old.to_str().unwrap()]);
        assert_eq!(r["failed"].as_array().unwrap().len(), 0, "{r}");
        assert_eq!(r["files"].as_u64().unwrap(), first.1);
        assert_repo_matches_journal(&env.repo, &env.state);
    }
}

#[test]
fn transient_errors_are_retried() {
    let c = Chaos::new();
    let first = c.prepare();
    c.set_faults("write#3:transient,start-upload#2:transient,stat#4:transient,list#2:transient");
    let b = c.env.json(&["backup"]);
    assert!(b["retries"].as_u64().unwrap() >= 3, "{b}");
    c.recover_and_check(&first);
}

#[test]
fn a_permanent_error_fails_clearly_and_the_next_run_completes() {
    let c = Chaos::new();
    let first = c.prepare();
    c.set_faults("finish#3:permanent");
    let (code, err) = c.env.fails(&["backup"]);
    assert_eq!(code, 1);
    assert!(err.contains("chaos: permanent fault in finish"), "{err}");
    assert!(!err.contains("retrying"), "permanent errors are not retried: {err}");
    c.recover_and_check(&first);
}

#[test]
fn a_trapping_instance_is_replaced() {
    let c = Chaos::new();
    let first = c.prepare();
    c.set_faults("start-upload#2:trap,write#5:trap");
    let out = c.env.run(&["backup"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("crashed in `start-upload`") && err.contains("retrying"), "{err}");
    c.recover_and_check(&first);
}

#[test]
fn a_hang_past_the_deadline_is_cut_and_retried() {
    let c = Chaos::new();
    let first = c.prepare();
    c.set_faults("write#2:hang");
    let out = c.env.run(&["backup"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("did not return within its 2s deadline"), "{err}");
    c.recover_and_check(&first);
}

#[test]
fn a_truncated_put_reported_as_success_is_caught() {
    let c = Chaos::new();
    let first = c.prepare();
    // Once: caught by the size check after the upload, and uploaded again.
    c.set_faults("finish#2:truncate");
    let out = c.env.run(&["backup"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("uploading again"), "{err}");
    assert_repo_matches_journal(&c.env.repo, &c.env.state);
    // Always: the backup fails and says why.
    gen_dataset(&c.env.src.join("v3"), 13, 10, &[2 << 20]);
    c.set_faults("finish:truncate");
    let (code, err) = c.env.fails(&["backup"]);
    assert_eq!(code, 1);
    assert!(err.contains("reported") && err.contains("as stored, but holds"), "{err}");
    c.recover_and_check(&first);
}

#[test]
fn a_listing_that_omits_objects_loses_nothing() {
    let c = Chaos::new();
    let first = c.prepare();
    c.set_faults("list:hide");
    let b = c.env.json(&["backup"]);
    assert_eq!(b["errors"], 0);
    c.recover_and_check(&first);
}

#[test]
fn forged_bytes_from_a_read_are_never_restored() {
    let c = Chaos::new();
    let first = c.prepare();
    c.env.ok(&["backup"]);
    c.set_faults("read:forge");
    let target = c.env.path("forged");
    let (code, err) = c.env.fails(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(code == 1 || code == 3, "{err}");
    assert!(err.contains("authentication") || err.contains("damaged"), "{err}");
    // No file holds forged bytes: whatever exists is empty (created, never filled).
    for (path, bytes) in snapshot_dir(&target) {
        assert!(bytes.is_empty(), "{} holds unverified bytes", path.display());
    }
    c.recover_and_check(&first);
}
