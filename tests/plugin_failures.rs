//! A failing plugin is not damaged data (issue 10): a plugin that traps or runs out of
//! memory every few calls is retried on a fresh instance, and every command still gives the
//! same results; a plugin that keeps failing makes `verify` fail without marking anything
//! damaged; a `damaged` mark is cleared by a sound read in the same run.

mod common;

use common::*;

/// An env whose repository goes through the chaos plugin with `faults`, under a 64 MiB cap
/// (so `alloc` hits it quickly).
fn chaos_env(env: &Env, faults: &str) {
    for (name, _) in repo_objects(&env.repo) {
        if name.starts_with(".chaos-count-") {
            std::fs::remove_file(env.repo.join(name)).unwrap();
        }
    }
    env.write_config(&format!(
        "[repository]\nbackend = {:?}\noptions = {{ path = {:?}, faults = {faults:?} }}\n\
         password_env = \"CAIRN_TEST_PASSWORD\"\n\
         grants = {{ dirs = [{:?}], call_timeout_secs = 20, memory_mib = 64 }}\n\n\
         [backup]\nsources = [{:?}]\npack_size = \"1MiB\"\n\n[state]\ndir = {:?}\n",
        test_plugin("chaos"),
        env.repo,
        env.repo,
        env.src,
        env.state
    ));
}

fn new_env(faults: &str) -> Env {
    let env = Env::new();
    std::fs::create_dir_all(&env.repo).unwrap();
    chaos_env(&env, faults);
    gen_dataset(&env.src, 21, 80, &[3 << 20, 2 << 20]);
    env
}

/// Objects the journal holds as `damaged`.
fn damaged(env: &Env) -> Vec<String> {
    journal_objects(&env.state).into_iter().filter(|o| o.1 == "damaged").map(|o| o.0).collect()
}

fn verify(env: &Env) -> serde_json::Value {
    let v = env.json(&["verify", "--read-data"]);
    assert_eq!(v["whole"], true, "{v:#}");
    assert_eq!(v["problems"].as_array().unwrap().len(), 0, "{v:#}");
    v
}

fn restore_identical(env: &Env, dir: &str) {
    let target = env.path(dir);
    let r = env.json(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(r["failed"].as_array().unwrap().len(), 0, "{r}");
    let diffs = diff_trees(&env.src, &env.restored_src(&target));
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

#[test]
fn a_plugin_that_traps_or_runs_out_of_memory_every_few_calls_changes_no_result() {
    let env = new_env("read%4:trap,read%7:alloc,stat%3:trap,list%3:alloc,start-upload%5:trap,write%6:alloc");
    env.ok(&["init"]);
    let b = env.json(&["backup"]);
    assert_eq!(b["errors"], 0, "{b}");
    let v = verify(&env);
    assert!(v["packs_read"].as_u64().unwrap() > 3, "{v:#}");
    restore_identical(&env, "restored");
    env.json(&["repair"]);
    assert!(damaged(&env).is_empty(), "{:?}", damaged(&env));
    // The faults really fired: the counters passed several multiples of K.
    let reads: u64 =
        std::fs::read_to_string(env.repo.join(".chaos-count-read")).unwrap().trim().parse().unwrap();
    assert!(reads >= 8, "only {reads} reads");
    // And the results are those of a healthy plugin.
    chaos_env(&env, "");
    verify(&env);
    restore_identical(&env, "restored-healthy");
    assert_repo_matches_journal(&env.repo, &env.state);
}

#[test]
fn a_plugin_that_keeps_failing_makes_verify_fail_and_marks_nothing_damaged() {
    let env = new_env("");
    env.ok(&["init"]);
    env.json(&["backup"]);
    for faults in ["read-data:trap", "read-data:alloc"] {
        chaos_env(&env, faults);
        let (code, err) = env.fails(&["verify", "--read-data"]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("could not check") && err.contains("packs: plugin"), "{err}");
        assert!(err.contains("nothing was marked damaged"), "{err}");
        let cause = if faults == "read-data:trap" { "crashed in `read`" } else { "memory limit" };
        assert!(err.contains(cause), "{err}");
        assert!(damaged(&env).is_empty(), "{:?}", damaged(&env));
    }
    // A healthy plugin verifies whole at once, and restore finds everything.
    chaos_env(&env, "");
    verify(&env);
    restore_identical(&env, "restored");
}

#[test]
fn a_sound_read_clears_a_damaged_mark_in_the_same_run() {
    let env = new_env("");
    env.ok(&["init"]);
    env.json(&["backup"]);
    // A mark left by an older cairn that took a crashing plugin for damage.
    let packs: Vec<String> =
        journal_objects(&env.state).into_iter().map(|o| o.0).filter(|n| n.starts_with("data/")).collect();
    assert!(!packs.is_empty());
    let conn = rusqlite::Connection::open(find_journal(&env.state)).unwrap();
    conn.execute("UPDATE objects SET state = 'damaged', note = 'unreadable' WHERE name = ?1", [&packs[0]])
        .unwrap();
    drop(conn);
    assert_eq!(damaged(&env), vec![packs[0].clone()]);
    verify(&env);
    assert!(damaged(&env).is_empty(), "{:?}", damaged(&env));
}

#[test]
fn restore_still_tries_packs_marked_damaged() {
    let env = new_env("");
    env.ok(&["init"]);
    env.json(&["backup"]);
    // Every pack and every chunk in it marked lost, as an older cairn did after a plugin
    // crashed on each read: the bytes are intact, and authentication says so.
    let conn = rusqlite::Connection::open(find_journal(&env.state)).unwrap();
    conn.execute_batch(
        "UPDATE objects SET state = 'damaged', note = 'unreadable' WHERE name LIKE 'data/%';
         INSERT OR REPLACE INTO damaged_blobs (id, pack, reason)
           SELECT b.id, b.pack, 'its pack cannot be read' FROM blobs b
           JOIN objects o ON o.oid = b.pack WHERE o.name LIKE 'data/%';",
    )
    .unwrap();
    let marked: i64 = conn.query_row("SELECT count(*) FROM damaged_blobs", [], |r| r.get(0)).unwrap();
    assert!(marked > 10, "{marked}");
    drop(conn);
    restore_identical(&env, "restored");
}

#[test]
fn an_instance_that_leaks_is_recycled_before_it_reaches_the_cap() {
    let env = new_env("");
    // Enough 1 MiB packs that their leaks add up to more than the cap.
    gen_dataset(&env.src.join("more"), 22, 0, &[12 << 20, 12 << 20, 12 << 20]);
    env.ok(&["init"]);
    env.json(&["backup"]);
    // 4 MiB kept per pack read, under a 64 MiB cap shared by the instances: without
    // recycling, instances die at the cap every few reads.
    chaos_env(&env, "read-data:leak");
    let out = env.run(&["-v", "verify", "--read-data"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("instances recycled"), "{err}");
    assert!(!err.contains("memory limit"), "{err}");
    // Each read claims a marker file of its own (the highest-number hint file can lag when
    // instances write it in parallel).
    let reads = std::fs::read_dir(&env.repo)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(".chaos-count-read-data."))
        .count();
    assert!(reads >= 20, "only {reads} pack reads: the cap was never in reach");
}

/// `recycle_after_calls`: an instance that has served its calls is retired right after the
/// call, between the calls of one lease too (a pack read in several pieces goes through
/// several instances), but never while it holds an upload. The chaos plugin logs each
/// instance's calls to a file of its own, so the instances are counted from outside.
#[test]
fn recycle_after_calls_retires_instances_between_calls_but_never_inside_an_upload() {
    let env = Env::new();
    std::fs::create_dir_all(&env.repo).unwrap();
    env.write_config(&format!(
        "[repository]\nbackend = {:?}\noptions = {{ path = {:?}, log = \"1\" }}\n\
         password_env = \"CAIRN_TEST_PASSWORD\"\n\
         grants = {{ dirs = [{:?}], recycle_after_calls = 1 }}\n\n\
         [backup]\nsources = [{:?}]\npack_size = \"20MiB\"\n\n[state]\ndir = {:?}\n",
        test_plugin("chaos"),
        env.repo,
        env.repo,
        env.src,
        env.state
    ));
    // Incompressible: a 20 MiB pack takes three reads (8 MiB pieces) in one lease.
    gen_dataset(&env.src, 24, 10, &[30 << 20, 12 << 20]);
    env.ok(&["init"]);
    env.json(&["backup"]);
    let out = env.run(&["-v", "verify", "--read-data"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("instances recycled") && err.contains("or served 1 calls"), "{err}");
    restore_identical(&env, "restored");

    let (mut instances, mut uploads, mut reads, mut later_pieces) = (0, 0, 0, 0);
    for (name, _) in repo_objects(&env.repo) {
        if !name.starts_with(".chaos-log-") {
            continue;
        }
        instances += 1;
        let text = std::fs::read_to_string(env.repo.join(&name)).unwrap();
        let lines: Vec<(&str, &str)> = text.lines().map(|l| l.split_once(' ').unwrap()).collect();
        let started: Vec<&str> = lines.iter().filter(|l| l.0 == "start-upload").map(|l| l.1).collect();
        let finished: Vec<&str> = lines.iter().filter(|l| l.0 == "finish").map(|l| l.1).collect();
        let read: Vec<&str> = lines.iter().filter(|l| l.0 == "read").map(|l| l.1).collect();
        // One call per instance, an upload (start, writes, finish) counting as one.
        assert!(started.len() + read.len() <= 1, "{name}: {text}");
        assert_eq!(started, finished, "an upload was cut by a retirement: {name}: {text}");
        uploads += started.len();
        reads += read.len();
        later_pieces += read.iter().filter(|r| !r.ends_with("@0\"")).count();
    }
    assert!(uploads >= 3, "{uploads} uploads");
    assert!(later_pieces >= 2, "no pack was read in several pieces: {reads} reads");
    assert!(instances >= uploads + reads, "{instances} instances for {uploads} uploads and {reads} reads");
}

/// A plugin that crashes while it opens the repository (at the start of a run, or when a
/// fresh instance is started mid-run) is started again on a fresh instance, under the same
/// bound as every other call.
#[test]
fn a_plugin_that_crashes_when_it_opens_is_started_again() {
    let env = new_env("open#1:trap,open#2:alloc,open%5:trap");
    env.ok(&["init"]);
    let b = env.json(&["backup"]);
    assert_eq!(b["errors"], 0, "{b}");
    let opens: u64 =
        std::fs::read_to_string(env.repo.join(".chaos-count-open")).unwrap().trim().parse().unwrap();
    assert!(opens >= 5, "only {opens} opens: the faults never fired");
    chaos_env(&env, "open#1:trap");
    verify(&env);
    restore_identical(&env, "restored");
    assert!(damaged(&env).is_empty(), "{:?}", damaged(&env));
}
