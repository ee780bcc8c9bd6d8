//! Every answer is bounded before it costs host memory: hostile answers from a plugin (the
//! chaos plugin's `cycle`, `endless`, `flood`, `huge` faults) and hostile objects in a
//! repository (huge or forged key files, a huge index object) end with one clear line
//! naming the plugin and what it did wrong, or are skipped with a warning. The peak RSS of
//! the cairn process, read by this parent with `wait4`, stays below 150 MiB plus the
//! plugin memory cap (default 256 MiB), with the default thread count.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

/// The default `repository.grants.memory_mib`.
const PLUGIN_MEMORY_MIB: u64 = 256;
/// What the host itself may use on top of the plugin's memory.
const HOST_BUDGET_MIB: u64 = 150;
/// How the chaos plugin is named in messages: the file stem of its `.wasm`.
const CHAOS: &str = "cairn_plugin_chaos";

struct Measured {
    code: i32,
    stdout: String,
    stderr: String,
    peak_mib: u64,
}

impl Measured {
    /// The one `cairn: ...` error line.
    fn error_line(&self) -> &str {
        let lines: Vec<&str> = self.stderr.lines().filter(|l| l.starts_with("cairn: ")).collect();
        assert_eq!(lines.len(), 1, "expected one error line:\n{}", self.stderr);
        lines[0]
    }

    fn assert_within_budget(&self, what: &str) {
        println!("peak RSS under {what}: {} MiB", self.peak_mib);
        assert!(
            self.peak_mib < HOST_BUDGET_MIB + PLUGIN_MEMORY_MIB,
            "{what}: cairn peaked at {} MiB, more than {HOST_BUDGET_MIB} + {PLUGIN_MEMORY_MIB} MiB\n{}",
            self.peak_mib,
            self.stderr
        );
    }
}

/// Runs a command to its end and reads its peak resident memory as the kernel recorded it.
// The child is reaped by `wait4` (which also gives its resource usage), not `Child::wait`.
#[allow(clippy::zombie_processes)]
fn run_measured(mut cmd: Command) -> Measured {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start cairn");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).unwrap();
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).unwrap();
        s
    });
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4 failed: {}", std::io::Error::last_os_error());
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
    Measured {
        code,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
        // Linux reports ru_maxrss in KiB.
        peak_mib: usage.ru_maxrss as u64 / 1024,
    }
}

/// An fs repository with one backup, used through the chaos plugin (default grants).
fn chaos_repo() -> Env {
    let env = Env::new();
    std::fs::create_dir_all(&env.repo).unwrap();
    set_faults(&env, "");
    gen_dataset(&env.src, 7, 40, &[24 << 20]);
    env.ok(&["init"]);
    env.ok(&["backup"]);
    env
}

fn set_faults(env: &Env, faults: &str) {
    for (name, _) in repo_objects(&env.repo) {
        if name.starts_with(".chaos-count-") {
            std::fs::remove_file(env.repo.join(name)).unwrap();
        }
    }
    env.write_config(&format!(
        "[repository]\nbackend = {:?}\noptions = {{ path = {:?}, faults = {faults:?} }}\n\
         password_env = \"CAIRN_TEST_PASSWORD\"\ngrants = {{ dirs = [{:?}] }}\n\n\
         [backup]\nsources = [{:?}]\npack_size = \"4MiB\"\n\n[state]\ndir = {:?}\n",
        test_plugin("chaos"),
        env.repo,
        env.repo,
        env.src,
        env.state
    ));
}

/// `cairn snapshots` under `faults`: it must fail with one line holding every fragment.
fn snapshots_fail_with(faults: &str, fragments: &[&str]) -> Measured {
    let env = chaos_repo();
    set_faults(&env, faults);
    let m = run_measured(env.cmd(&["snapshots"]));
    assert_ne!(m.code, 0, "snapshots should fail under {faults}\n{}", m.stdout);
    let line = m.error_line();
    for f in fragments {
        assert!(line.contains(f), "{faults}: {f:?} missing from {line:?}");
    }
    m.assert_within_budget(faults);
    m
}

/// A file of `size` bytes that uses no disk: the fs plugin's `stat` reports the size.
fn sparse(path: &Path, size: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
}

#[test]
fn a_listing_whose_cursors_cycle_stops() {
    snapshots_fail_with(
        "list:cycle",
        &[
            &format!("plugin {CHAOS} broke the storage contract in `list` keys/"),
            "on page 3 it returned a cursor it had already returned: its listing loops",
        ],
    );
}

#[test]
fn a_listing_that_never_ends_stops() {
    snapshots_fail_with(
        "list:endless",
        &[
            &format!("plugin {CHAOS} broke the storage contract in `list` keys/"),
            "its listing did not end after",
            "far more than a cairn repository holds (at most 10000 pages, 1000000 objects, 80 MiB of names)",
        ],
    );
}

#[test]
fn a_list_page_larger_than_asked_is_refused() {
    snapshots_fail_with(
        "list:flood",
        &[
            &format!("plugin {CHAOS} broke the storage contract in `list` keys/"),
            "it returned a page of 10000 objects when asked for at most 1000",
        ],
    );
}

#[test]
fn a_stat_claiming_gigabytes_downloads_nothing() {
    let m = snapshots_fail_with(
        "stat:huge",
        &["no key file in the repository could be used", "restore keys/ from a copy, nothing was changed"],
    );
    let warning = m.stderr.lines().find(|l| l.contains("skipping key file keys/")).unwrap_or_else(|| {
        panic!("no warning about the key file:\n{}", m.stderr);
    });
    assert!(
        warning.contains(&format!("plugin {CHAOS} says keys/"))
            && warning.contains(
                "is 4294967296 bytes, more than a key file may be (64 KiB); nothing was downloaded"
            ),
        "{warning}"
    );
}

#[test]
fn a_read_flood_is_stopped_at_the_copy() {
    let env = chaos_repo();
    set_faults(&env, "read:flood");
    let target = env.path("restored");
    let m = run_measured(env.cmd(&["restore", "latest", "--target", target.to_str().unwrap()]));
    assert_ne!(m.code, 0, "restore should fail\n{}", m.stdout);
    // Data reads run in parallel (several packs of 4 MiB): several instances flood at once.
    // Each is stopped at the copy, or by the memory cap all instances share.
    let copy_refused = format!("plugin {CHAOS} broke the storage contract in `read` data/");
    let line = m.error_line();
    assert!(line.contains("file(s) could not be restored"), "{line}");
    assert!(
        (line.contains(&copy_refused)
            && line.contains("it tried to pass more than 9 MiB to cairn in one call"))
            || line.contains(&format!("plugin {CHAOS} was stopped: `read` data/")),
        "{line}"
    );
    assert!(
        m.stderr.lines().any(|l| l.starts_with("not restored: ")
            && l.contains(&copy_refused)
            && l.contains("it tried to pass more than 9 MiB to cairn in one call")),
        "{}",
        m.stderr
    );
    m.assert_within_budget("read:flood");
    // Nothing unverified was written: no restored file holds a run of the flood's bytes.
    for (path, bytes) in snapshot_dir(&target) {
        assert!(
            !bytes.windows(256).any(|w| w.iter().all(|&b| b == 0xA5)),
            "{} holds flood bytes",
            path.display()
        );
    }
}

#[test]
fn a_huge_index_object_is_skipped_before_download() {
    let env = Env::new();
    gen_dataset(&env.src, 8, 20, &[]);
    env.ok(&["init"]);
    env.ok(&["backup"]);
    let name = format!("index/{}", "ab".repeat(32));
    sparse(&env.repo.join(&name), 3 << 30);
    let m = run_measured(env.cmd(&["snapshots"]));
    assert_eq!(m.code, 0, "snapshots should succeed:\n{}", m.stderr);
    assert!(
        m.stderr.contains(&format!(
            "skipping {name}: plugin fs says {name} is 3221225472 bytes, more than an index object may be \
             (32768 KiB); nothing was downloaded"
        )),
        "{}",
        m.stderr
    );
    m.assert_within_budget("a 3 GiB index object");
}

#[test]
fn hostile_key_files_are_skipped_and_the_good_one_unlocks() {
    let env = Env::new();
    gen_dataset(&env.src, 9, 20, &[]);
    env.ok(&["init"]);
    env.ok(&["backup"]);
    let keys = env.repo.join("keys");
    let good: serde_json::Value = {
        let entry = std::fs::read_dir(&keys).unwrap().next().unwrap().unwrap();
        serde_json::from_slice(&std::fs::read(entry.path()).unwrap()).unwrap()
    };
    // Names that list before the good key's (a hash starting with 16 zeros).
    let garbage = format!("{}01", "0".repeat(62));
    let costly = format!("{}02", "0".repeat(62));
    let huge = format!("{}03", "0".repeat(62));
    std::fs::write(keys.join(&garbage), b"{ this is not JSON \x1b[31m").unwrap();
    let mut forged = good.clone();
    forged["memory_kib"] = serde_json::json!(64u64 << 20); // 64 GiB
    std::fs::write(keys.join(&costly), serde_json::to_vec(&forged).unwrap()).unwrap();
    sparse(&keys.join(&huge), 2 << 30);

    let m = run_measured(env.cmd(&["snapshots"]));
    assert_eq!(m.code, 0, "snapshots should succeed:\n{}", m.stderr);
    assert!(m.stdout.lines().count() >= 1, "{}", m.stdout);
    let warned = |name: &str, why: &str| {
        assert!(
            m.stderr
                .lines()
                .any(|l| l.contains(&format!("skipping key file keys/{name}: ")) && l.contains(why)),
            "no warning for {name} ({why}):\n{}",
            m.stderr
        )
    };
    warned(&garbage, "it is not a key file");
    warned(&costly, "it asks argon2id for 67108864 KiB, 2 passes, 1 lanes; cairn allows at most 262144 KiB");
    warned(&huge, "is 2147483648 bytes, more than a key file may be (64 KiB); nothing was downloaded");
    assert!(
        !m.stderr.contains("\x1b[31m"),
        "the forged file's control characters reached the terminal:\n{}",
        m.stderr
    );
    m.assert_within_budget("hostile key files");
}

#[test]
fn quarantining_a_large_unknown_object_streams_it() {
    let env = Env::new();
    gen_dataset(&env.src, 10, 20, &[]);
    env.ok(&["init"]);
    env.ok(&["backup"]);
    let name = format!("index/{}", "cd".repeat(32));
    let size = 400u64 << 20;
    sparse(&env.repo.join(&name), size);
    let m = run_measured(env.cmd(&["repair", "--quarantine"]));
    assert_eq!(m.code, 0, "repair should succeed:\n{}", m.stderr);
    assert!(!env.repo.join(&name).exists(), "{name} was not moved");
    let moved = env.repo.join("quarantine").join(&name);
    assert_eq!(std::fs::metadata(&moved).unwrap().len(), size, "{}", moved.display());
    m.assert_within_budget("repair --quarantine of a 400 MiB object");
}
