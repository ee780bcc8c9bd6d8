//! Names from a plugin are data, not commands; append-only means append-only.
//!
//! The chaos plugin's `badnames` fault adds names cairn never writes (`../../x`,
//! `/etc/passwd`, names holding an escape sequence or a newline) to every listing and to
//! the unfinished uploads. cairn must report them escaped and never pass them back to the
//! plugin (its `log` option records every upload and delete the host asks for). With
//! `grants.delete = false` nothing stored is ever replaced.

mod common;

use std::path::Path;
use std::process::Output;

use cairn::repo::format::ObjectName;
use common::*;

/// A chaos-backed env: the fs backend plus `faults`, logging uploads and deletes.
struct Chaos {
    env: Env,
    grants: &'static str,
}

impl Chaos {
    fn new(grants: &'static str) -> Chaos {
        let env = Env::new();
        std::fs::create_dir_all(&env.repo).unwrap();
        let c = Chaos { env, grants };
        c.set_faults("");
        c
    }

    /// Rewrites the config with these faults, and resets the call counters and the log.
    fn set_faults(&self, faults: &str) {
        let env = &self.env;
        for (name, _) in repo_objects(&env.repo) {
            if name.starts_with(".chaos-") {
                std::fs::remove_file(env.repo.join(name)).unwrap();
            }
        }
        env.write_config(&format!(
            "[repository]\nbackend = {:?}\noptions = {{ path = {:?}, faults = {faults:?}, log = \"1\" }}\n\
             password_env = \"CAIRN_TEST_PASSWORD\"\ngrants = {{ dirs = [{:?}]{} }}\n\n\
             [backup]\nsources = [{:?}]\npack_size = \"1MiB\"\n\n[state]\ndir = {:?}\n",
            test_plugin("chaos"),
            env.repo,
            env.repo,
            self.grants,
            env.src,
            env.state
        ));
    }

    /// The log since the last `set_faults`: (call, name) for every start-upload, finish,
    /// delete and abort-incomplete, and (call, name@offset) for reads of packs (one file per
    /// plugin instance).
    fn log(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (name, _) in repo_objects(&self.env.repo) {
            if !name.starts_with(".chaos-log-") {
                continue;
            }
            let text = std::fs::read_to_string(self.env.repo.join(&name)).unwrap();
            for line in text.lines() {
                let (call, quoted) = line.split_once(' ').unwrap_or_else(|| panic!("bad log line {line:?}"));
                out.push((call.to_string(), unquote(quoted)));
            }
        }
        out
    }
}

/// Undoes Rust's `{:?}` of a string, for the escapes the bad names use.
fn unquote(quoted: &str) -> String {
    let inner = &quoted[1..quoted.len() - 1];
    inner
        .replace("\\n", "\n")
        .replace("\\u{1b}", "\x1b")
        .replace("\\u{202e}", "\u{202e}")
        .replace("\\\"", "\"")
}

/// What the `badnames` fault adds, as cairn must show them (escaped).
const SHOWN_ESCAPED: &[&str] = &["keys/\\u{1b}[31mred", "index/\\nfake line", "snapshots/\\u{202e}gpj.exe"];

/// No byte below 0x20 but `\n`, no DEL, no raw right-to-left override.
fn assert_no_control(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let bad: Vec<(usize, u8)> =
        bytes.iter().copied().enumerate().filter(|&(_, b)| (b < 0x20 && b != b'\n') || b == 0x7f).collect();
    assert!(bad.is_empty(), "{what}: raw control bytes {bad:?} in:\n{text}");
    assert!(!text.contains('\u{202e}'), "{what}: a raw bidi override in:\n{text}");
}

fn assert_clean_output(what: &str, out: &Output) {
    assert_no_control(&format!("{what} stdout"), &out.stdout);
    assert_no_control(&format!("{what} stderr"), &out.stderr);
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Every name the host passed to the plugin as an upload or delete target is one of
/// cairn's own.
fn assert_only_own_names_sent(c: &Chaos) {
    for (call, name) in c.log() {
        if call == "abort-incomplete" {
            assert!(!name.starts_with("chaos-bad-"), "aborted a foreign unfinished upload {name:?}");
            continue;
        }
        // Reads are logged as `name@offset`.
        let name = if call == "read" { name.rsplit_once('@').unwrap().0 } else { &name };
        assert!(ObjectName::parse(name).is_some(), "{call} of the foreign name {name:?}");
    }
}

/// Nothing escaped the repository folder, and nothing was written under a bad name.
fn assert_nothing_outside(c: &Chaos) {
    let outside = c.env.repo.join("../../x");
    assert!(!outside.exists(), "{} was written", outside.display());
    for (name, _) in repo_objects(&c.env.repo) {
        if name.starts_with(".chaos-") || name.contains(".cairn-upload-") {
            continue;
        }
        let q = name.strip_prefix("quarantine/").unwrap_or(&name);
        assert!(ObjectName::parse(q).is_some(), "the repository holds {name:?}");
    }
}

/// A repository with one backup; the log starts empty after it.
fn backed_up(c: &Chaos) {
    gen_dataset(&c.env.src, 51, 30, &[2 << 20]);
    c.env.ok(&["init"]);
    c.env.ok(&["backup"]);
    c.set_faults("");
}

#[test]
fn foreign_names_from_a_listing_are_reported_escaped_and_never_sent_back() {
    let c = Chaos::new("");
    backed_up(&c);
    c.set_faults("list:badnames,list-incomplete:badnames");
    let before = snapshot_dir(&c.env.repo);

    // verify: reported (exit 3), escaped.
    let out = c.env.run(&["verify"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_clean_output("verify", &out);
    let shown = text(&out);
    for name in SHOWN_ESCAPED.iter().chain(&["../../x", "/etc/passwd", "data/../../y"]) {
        assert!(shown.contains(name), "verify does not show {name}:\n{shown}");
    }
    assert!(shown.contains("a foreign file: not a name cairn writes"), "{shown}");

    // repair, plain and with every destructive option: listed, nothing touched.
    for args in [&["repair"][..], &["repair", "--quarantine", "--delete-unrecoverable"]] {
        let out = c.env.run(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        assert_clean_output(&format!("{args:?}"), &out);
        let shown = text(&out);
        for name in SHOWN_ESCAPED {
            assert!(shown.contains(&format!("left alone: {name}: a foreign name")), "{args:?}:\n{shown}");
        }
        assert!(shown.contains("left alone: unfinished upload of ../../x: a foreign name"), "{shown}");
        assert!(!shown.lines().any(|l| l.starts_with("moved ")), "{args:?} moved something:\n{shown}");
    }
    assert_only_own_names_sent(&c);
    assert_nothing_outside(&c);
    let after = snapshot_dir(&c.env.repo);
    let visible = |v: Vec<(std::path::PathBuf, Vec<u8>)>| -> Vec<_> {
        v.into_iter()
            .filter(|(p, _)| !p.file_name().unwrap().to_string_lossy().starts_with(".chaos-"))
            .collect()
    };
    assert_eq!(visible(before), visible(after), "repair changed the repository");

    // The repository still works with the bad names around.
    let b = c.env.json(&["backup"]);
    assert_eq!(b["errors"], 0, "{b}");
    let target = c.env.path("restore");
    c.env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(diff_trees(&c.env.src, &c.env.restored_src(&target)).is_empty());
    assert_only_own_names_sent(&c);
}

#[test]
fn a_backup_after_an_interruption_reports_foreign_names_escaped() {
    let c = Chaos::new("");
    backed_up(&c);
    gen_dataset(&c.env.src.join("more"), 52, 10, &[3 << 20]);
    // Interrupted: the second pack upload fails for good, leaving the run half done.
    c.set_faults("finish#2:permanent");
    let out = c.env.run(&["backup"]);
    assert!(!out.status.success(), "{}", text(&out));
    c.set_faults("list:badnames,list-incomplete:badnames");
    let out = c.env.run(&["backup"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_clean_output("backup after an interruption", &out);
    let shown = text(&out);
    assert!(shown.contains("are not cairn's (foreign files)"), "{shown}");
    assert_only_own_names_sent(&c);
    assert_nothing_outside(&c);
    c.set_faults("");
    let out = c.env.run(&["verify", "--read-data"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// A foreign object under a name cairn writes (so `--quarantine` may move it), and an
/// earlier quarantined copy of that name holding other bytes.
fn plant_quarantine_collision(repo: &Path) -> (String, Vec<u8>, Vec<u8>) {
    let name = format!("data/ee/{}", "ee".repeat(32));
    let foreign = b"not a pack, under a pack's name".to_vec();
    let earlier = b"an earlier quarantined object: must never be replaced".to_vec();
    write_file(&repo.join(&name), &foreign, 0o644, 1_600_000_000);
    write_file(&repo.join("quarantine").join(&name), &earlier, 0o644, 1_600_000_000);
    (name, foreign, earlier)
}

#[test]
fn append_only_repair_quarantine_says_so_and_replaces_nothing() {
    let c = Chaos::new(", delete = false");
    backed_up(&c);
    let (name, foreign, earlier) = plant_quarantine_collision(&c.env.repo);
    let before = snapshot_dir(&c.env.repo);
    let (code, err) = c.env.fails(&["repair", "--quarantine"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("append-only") && err.contains("repository.grants.delete"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(std::fs::read(c.env.repo.join("quarantine").join(&name)).unwrap(), earlier);
    assert_eq!(std::fs::read(c.env.repo.join(&name)).unwrap(), foreign);
    assert_eq!(snapshot_dir(&c.env.repo), before, "the refused repair changed the repository");
    assert!(c.log().is_empty(), "the refused repair sent {:?}", c.log());
    // Without it, the object is listed and left alone.
    let out = c.env.ok(&["repair"]);
    assert!(out.contains(&format!("left alone: {name}: not a valid cairn object")), "{out}");
    assert_eq!(std::fs::read(c.env.repo.join("quarantine").join(&name)).unwrap(), earlier);
}

#[test]
fn quarantine_never_replaces_an_earlier_quarantined_object() {
    let c = Chaos::new("");
    backed_up(&c);
    let (name, foreign, earlier) = plant_quarantine_collision(&c.env.repo);
    let out = c.env.ok(&["repair", "--quarantine"]);
    assert!(out.contains(&format!("moved {name} to quarantine/{name}.1")), "{out}");
    assert_eq!(std::fs::read(c.env.repo.join("quarantine").join(&name)).unwrap(), earlier);
    assert_eq!(std::fs::read(c.env.repo.join(format!("quarantine/{name}.1"))).unwrap(), foreign);
    assert!(!c.env.repo.join(&name).exists());
    let out = c.env.run(&["verify", "--read-data"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn append_only_upload_of_a_pack_already_stored_succeeds_without_replacing_it() {
    let c = Chaos::new(", delete = false");
    backed_up(&c);
    gen_dataset(&c.env.src.join("more"), 53, 10, &[3 << 20]);
    // The first pack is stored, but the answer is lost: the retry finds it present. (Upload
    // 1 is the backup's lock object.)
    c.set_faults("finish#2:lose-reply");
    let b = c.env.json(&["backup"]);
    assert_eq!(b["errors"], 0, "{b}");
    assert!(b["retries"].as_u64().unwrap() >= 1, "{b}");
    // (The log files are per plugin instance, so lines are not in time order across them.)
    let log = c.log();
    let count = |call: &str, name: &str| log.iter().filter(|(c, n)| c == call && n == name).count();
    let retried: Vec<&String> = log.iter().map(|(_, n)| n).filter(|n| count("start-upload", n) > 1).collect();
    let first = retried.first().unwrap_or_else(|| panic!("no upload was retried: {log:?}")).to_string();
    assert!(first.starts_with("data/"), "{log:?}");
    assert!(retried.iter().all(|n| **n == first), "{log:?}");
    assert_eq!(count("start-upload", &first), 2, "{log:?}");
    assert_eq!(count("finish", &first), 1, "the stored pack was written again: {log:?}");
    assert!(!log.iter().any(|(call, _)| call == "delete"), "{log:?}");
    c.set_faults("");
    let out = c.env.run(&["verify", "--read-data"]);
    assert!(out.status.success(), "{}", text(&out));
    let target = c.env.path("restore");
    c.env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(diff_trees(&c.env.src, &c.env.restored_src(&target)).is_empty());
}

#[test]
fn append_only_upload_over_other_bytes_fails_clearly_and_keeps_them() {
    let c = Chaos::new(", delete = false");
    backed_up(&c);
    gen_dataset(&c.env.src.join("more"), 54, 10, &[3 << 20]);
    // The first pack is stored garbled and the answer lost: the name now holds other bytes.
    c.set_faults("finish#1:lose-reply-garbled");
    let (code, err) = c.env.fails(&["backup"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("another object is stored under this content address"), "{err}");
    assert!(err.contains("it was not replaced"), "{err}");
    let log = c.log();
    let count = |call: &str, name: &str| log.iter().filter(|(c, n)| c == call && n == name).count();
    let retried: Vec<&String> = log.iter().map(|(_, n)| n).filter(|n| count("start-upload", n) > 1).collect();
    let first = retried.first().unwrap_or_else(|| panic!("no upload was retried: {log:?}")).to_string();
    assert_eq!(count("finish", &first), 1, "the garbled object was replaced: {log:?}");
    assert!(c.env.repo.join(&first).exists());
    // The next run stores the data again under other names, and loses nothing.
    c.set_faults("");
    let b = c.env.json(&["backup"]);
    assert_eq!(b["errors"], 0, "{b}");
    let target = c.env.path("restore");
    c.env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(diff_trees(&c.env.src, &c.env.restored_src(&target)).is_empty());
}

/// The backend layer itself (what every command goes through): foreign targets are refused
/// before the plugin sees them, and in an append-only repository an upload never replaces
/// what is stored, whoever calls it and whatever it asks.
#[test]
fn the_backend_refuses_foreign_targets_and_replaces_nothing_when_append_only() {
    use std::os::unix::fs::MetadataExt;

    use cairn::ids::Id;
    use cairn::plugin::ErrorKind;

    let c = Chaos::new(", delete = false");
    let text = std::fs::read_to_string(&c.env.config).unwrap();
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cairn-cache");
    c.env.write_config(&text.replace("[state]\n", &format!("[state]\ncache_dir = {cache:?}\n")));
    let config = cairn::config::Config::load(&c.env.config).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let backend = rt.block_on(cairn::repo::open_backend(&config, false)).unwrap();

    for bad in ["../../x", "/etc/passwd", "data/../../y", "keys/\x1b[31mred", "README.txt"] {
        let e = rt.block_on(backend.upload_bytes(bad, b"x", false)).unwrap_err();
        assert!(matches!(e.kind, ErrorKind::InvalidName(_)), "{e}");
        assert!(e.to_string().contains("not a name cairn writes"), "{e}");
        assert_no_control("the error", e.to_string().as_bytes());
        let e = rt
            .block_on(backend.delete(&[format!("index/{}", Id::of_bytes(b"y").hex()), bad.to_string()]))
            .unwrap_err();
        assert!(matches!(e.kind, ErrorKind::InvalidName(_)), "{e}");
    }
    assert!(c.log().is_empty(), "the plugin was asked: {:?}", c.log());

    let stored = |name: &str| {
        let p = c.env.repo.join(name);
        (std::fs::read(&p).unwrap(), std::fs::metadata(&p).unwrap().ino())
    };
    // Already stored with exactly its bytes: accepted, not written again.
    let bytes = b"an object stored before".to_vec();
    let same = format!("index/{}", Id::of_bytes(&bytes).hex());
    write_file(&c.env.repo.join(&same), &bytes, 0o644, 1_600_000_000);
    let before = stored(&same);
    rt.block_on(backend.upload_bytes(&same, &bytes, false)).unwrap();
    assert_eq!(stored(&same), before);
    // Other bytes under a content address: an error, and they stay.
    let other = format!("index/{}", Id::of_bytes(b"what the upload holds").hex());
    write_file(&c.env.repo.join(&other), b"something else", 0o644, 1_600_000_000);
    let before = stored(&other);
    let e = rt.block_on(backend.upload_bytes(&other, b"what the upload holds", false)).unwrap_err();
    assert!(e.to_string().contains("another object is stored under this content address"), "{e}");
    assert_eq!(stored(&other), before);
    // A name that is not content-addressed: already exists, kept.
    let quarantined = format!("quarantine/{same}");
    write_file(&c.env.repo.join(&quarantined), b"earlier", 0o644, 1_600_000_000);
    let before = stored(&quarantined);
    let e = rt.block_on(backend.upload_bytes(&quarantined, b"later", false)).unwrap_err();
    assert!(matches!(e.kind, ErrorKind::AlreadyExists(_)), "{e}");
    assert_eq!(stored(&quarantined), before);
    assert!(!c.log().iter().any(|(call, _)| call == "finish"), "{:?}", c.log());
}
