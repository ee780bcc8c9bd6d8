//! Scenarios run against real servers on 127.0.0.1 through the S3 and WebDAV plugins: full
//! backup, verify --read-data, restore; resume after kill -9; and uploads cut mid-way by a
//! fault proxy, which must never leave a visible partial object.

use std::process::Stdio;
use std::time::{Duration, Instant};

use super::proxy::{Fault, Proxy};
use super::servers::{self, Server};
use super::*;

#[derive(Clone, Copy, Debug)]
pub enum Flavour {
    Seaweed,
    RcloneS3,
    RcloneDav,
}

impl Flavour {
    fn start(self) -> Option<Server> {
        servers::require(match self {
            Flavour::Seaweed => servers::seaweedfs_s3(),
            Flavour::RcloneS3 => servers::rclone_s3(),
            Flavour::RcloneDav => servers::rclone_webdav(),
        })
    }

    fn plugin(self) -> &'static str {
        match self {
            Flavour::Seaweed | Flavour::RcloneS3 => "s3",
            Flavour::RcloneDav => "webdav",
        }
    }
}

/// An env whose repository lives on `server`, reached through `origin` (the server itself or
/// a proxy in front of it), with the plugin installed under its own name.
pub fn remote_env(flavour: Flavour, server: &Server, origin: &str, extra_backup: &str) -> Env {
    remote_env_with(flavour, server, origin, extra_backup, "")
}

/// `remote_env` with more plugin options (`extra_options`: `, key = value` pairs).
pub fn remote_env_with(
    flavour: Flavour,
    server: &Server,
    origin: &str,
    extra_backup: &str,
    extra_options: &str,
) -> Env {
    let mut env = Env::with_backup_toml(extra_backup);
    env.extra_env.push(("CAIRN_PLUGINS_DIR".into(), env.path("plugins").display().to_string()));
    let wasm = test_plugin(flavour.plugin());
    // The file takes the place of the bundled backend of the same name: --force.
    env.ok(&["plugin", "install", wasm.to_str().unwrap(), "--force"]);
    let prefix = repo_folder(server);
    let options = match flavour {
        Flavour::Seaweed | Flavour::RcloneS3 => format!(
            "endpoint = {origin:?}, bucket = {:?}, region = \"us-east-1\", access_key_id = {:?}, \
             secret_access_key = {{ env = \"CAIRN_TEST_S3_SECRET\" }}, prefix = {prefix:?}, path_style = true",
            servers::BUCKET,
            servers::ACCESS_KEY
        ),
        Flavour::RcloneDav => format!(
            "url = \"{origin}/{prefix}\", username = {:?}, password = {{ env = \"CAIRN_TEST_DAV_PASS\" }}",
            servers::DAV_USER
        ),
    };
    env.extra_env.push(("CAIRN_TEST_S3_SECRET".into(), servers::SECRET_KEY.into()));
    env.extra_env.push(("CAIRN_TEST_DAV_PASS".into(), servers::DAV_PASS.into()));
    let text = std::fs::read_to_string(&env.config).unwrap();
    let (_, rest) = text.split_once("\n\n").unwrap();
    env.write_config(&format!(
        "[repository]\nbackend = {:?}\noptions = {{ {options}{extra_options} }}\npassword_env = \"CAIRN_TEST_PASSWORD\"\n\
         grants = {{ hosts = [{origin:?}], call_timeout_secs = 10 }}\n\n{rest}",
        flavour.plugin()
    ));
    env
}

pub fn round_trip(flavour: Flavour) {
    let Some(server) = flavour.start() else { return };
    let env = remote_env(flavour, &server, &server.origin(), "pack_size = \"2MiB\"");
    gen_dataset(&env.src, 31, 300, &[5 << 20, 3 << 20]);
    env.ok(&["init"]);
    let b = env.json(&["backup"]);
    assert_eq!(b["errors"], 0, "{b}");
    let again = env.json(&["backup"]);
    assert_eq!(again["files_read"], 0, "{again}");
    // Listings in pages of 2: the plugin's paging (continuation tokens, PROPFIND pages)
    // must hand over every object, or verify finds them missing.
    let mut env = env;
    env.extra_env.push(("CAIRN_LIST_PAGE".into(), "2".into()));
    let out = env.run(&["--json", "verify", "--read-data"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let packs = report["packs_read"].as_u64().unwrap_or(0);
    assert!(packs > 2, "{flavour:?}: too few packs to page through: {report}");
    let show = |o: &std::process::Output| {
        format!("{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    };
    assert!(out.status.success(), "{flavour:?} verify: {}", show(&out));
    let target = env.path("restore");
    let r = env.json(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(r["failed"].as_array().unwrap().len(), 0, "{r}");
    let diffs = diff_trees(&env.src, &env.restored_src(&target));
    assert!(diffs.is_empty(), "{flavour:?}: {}", diffs.join("\n"));
}

pub fn resume_after_kill(flavour: Flavour) {
    let Some(server) = flavour.start() else { return };
    let env = remote_env(
        flavour,
        &server,
        &server.origin(),
        "pack_size = \"1MiB\"\n\n[checkpoint]\ninterval_bytes = \"4MiB\"",
    );
    gen_dataset(&env.src, 32, 400, &[6 << 20, 6 << 20, 4 << 20]);
    env.ok(&["init"]);
    let mut rng = Rng::new(flavour as u64 + 100);
    for _ in 0..4 {
        let mut child = env.cmd(&["backup"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let start = Instant::now();
        let wait = Duration::from_millis(300 + rng.below(1500));
        while start.elapsed() < wait && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let b = env.json(&["backup"]);
    assert_eq!(b["errors"], 0, "{b}");
    let out = env.run(&["verify", "--read-data"]);
    assert!(out.status.success(), "{flavour:?} verify after kills: {}", String::from_utf8_lossy(&out.stdout));
    let target = env.path("restore");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let diffs = diff_trees(&env.src, &env.restored_src(&target));
    assert!(diffs.is_empty(), "{flavour:?}: {}", diffs.join("\n"));
}

pub fn cut_uploads(flavour: Flavour) {
    let Some(server) = flavour.start() else { return };
    let proxy = Proxy::start(server.port);
    let env = remote_env(flavour, &server, &proxy.origin(), "pack_size = \"2MiB\"");
    gen_dataset(&env.src, 33, 100, &[4 << 20, 3 << 20]);
    env.ok(&["init"]);
    // Every connection dies 300 KiB into its request for a while: big uploads are cut
    // mid-way, again and again.
    proxy.set(Fault::CutAfter(300 << 10), 40);
    let first = env.run(&["backup"]);
    assert!(proxy.faults_fired.load(std::sync::atomic::Ordering::Relaxed) > 0, "the proxy cut nothing");
    ends_cleanly(&first);
    assert_no_partial_objects(flavour, &server, "after uploads cut at 300 KiB");
    // A connection that stalls past the call deadline, and resets.
    write_file(&env.src.join("more/late.bin"), &Rng::new(34).bytes(2 << 20), 0o644, 1_600_000_000);
    proxy.set(Fault::StallAfter(100 << 10), 1);
    ends_cleanly(&env.run(&["backup"]));
    assert_no_partial_objects(flavour, &server, "after a stalled upload");
    proxy.set(Fault::Reset, 3);
    ends_cleanly(&env.run(&["backup"]));
    assert_no_partial_objects(flavour, &server, "after reset connections");
    // Healthy again: the next run completes and nothing partial is visible.
    proxy.set(Fault::Pass, 0);
    let b = env.json(&["backup"]);
    assert_eq!(b["errors"], 0, "{b}");
    let out = env.run(&["--json", "verify", "--read-data"]);
    assert!(
        out.status.success(),
        "{flavour:?}: partial objects or damage after cut uploads: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let target = env.path("restore");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(diff_trees(&env.src, &env.restored_src(&target)).is_empty());
}

/// A run under network faults may fail, but only with its one-line error as the last line (exit
/// code 1, or 3 with warnings), never a panic (requests still in flight when a command gives up must not
/// bring the process down noisily).
fn ends_cleanly(out: &std::process::Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(matches!(out.status.code(), Some(0 | 1 | 3)), "{:?}: {err}", out.status);
    if out.status.code() == Some(1) {
        assert!(err.lines().last().unwrap_or("").starts_with("cairn: "), "{err}");
    }
}

/// The folder (WebDAV) or key prefix (S3) on `server` that `remote_env` puts repositories in.
/// The key prefix (folder) of this test process's repository on `server`.
pub fn repo_folder(server: &Server) -> String {
    format!("run{}", Rng::new(std::process::id() as u64 ^ server.port as u64).next() % 1_000_000)
}

/// Every object the server shows under the repository's prefix, with its bytes. Hidden
/// names (a segment starting with '.', the WebDAV plugin's temporary files) are left out.
pub fn visible_objects(flavour: Flavour, server: &Server) -> Vec<(String, Vec<u8>)> {
    let prefix = format!("{}/", repo_folder(server));
    let mut out = Vec::new();
    match flavour {
        Flavour::Seaweed | Flavour::RcloneS3 => {
            let url = servers::presigned_list(server.port, &prefix);
            let (status, listing) = servers::http_get(server.port, &url).unwrap();
            assert_eq!(status, 200, "{listing}");
            assert!(!listing.contains("<IsTruncated>true"), "listing needs paging");
            for part in listing.split("<Key>").skip(1) {
                let key = part.split_once("</Key>").unwrap().0;
                let (status, bytes) =
                    servers::http_get_bytes(server.port, &servers::presigned_get(server.port, key)).unwrap();
                assert_eq!(status, 200, "GET {key}");
                out.push((key.strip_prefix(&prefix).unwrap().to_string(), bytes));
            }
        }
        Flavour::RcloneDav => {
            let root = server.served_dir().join(&prefix);
            let mut stack = vec![root.clone()];
            while let Some(dir) = stack.pop() {
                for e in std::fs::read_dir(&dir).unwrap() {
                    let path = e.unwrap().path();
                    if path.is_dir() {
                        stack.push(path);
                    } else {
                        let name = path.strip_prefix(&root).unwrap().to_str().unwrap().to_string();
                        out.push((name, std::fs::read(&path).unwrap()));
                    }
                }
            }
        }
    }
    out.retain(|(name, _)| !name.split('/').any(|seg| seg.starts_with('.')));
    out
}

/// No partial object is visible: every content-addressed object's bytes hash to its name.
fn assert_no_partial_objects(flavour: Flavour, server: &Server, when: &str) {
    let objects = visible_objects(flavour, server);
    assert!(objects.iter().any(|(n, _)| n == "config"), "{flavour:?} {when}: no repository at all");
    for (name, bytes) in &objects {
        if name == "config" || name.starts_with("keys/") {
            continue;
        }
        let hash = blake3::hash(bytes).to_hex();
        assert!(
            name.ends_with(hash.as_str()),
            "{flavour:?} {when}: {name} is a partial or wrong object ({} bytes)",
            bytes.len()
        );
    }
}

/// Packs sent as multipart uploads (several parts each). A backup killed with an upload's
/// parts half sent leaves an unfinished multipart upload on the server; the next run aborts
/// it (the journal proves it is ours), completes, and restores identically.
pub fn multipart_after_kill(flavour: Flavour) {
    let Some(server) = flavour.start() else { return };
    let proxy = Proxy::start(server.port);
    let env = remote_env_with(
        flavour,
        &server,
        &proxy.origin(),
        "pack_size = \"12MiB\"",
        ", multipart_threshold = \"6MiB\", part_size = \"5MiB\"",
    );
    let prefix = format!("{}/", repo_folder(&server));
    gen_dataset(&env.src, 35, 40, &[20 << 20, 14 << 20]);
    env.ok(&["init"]);
    // Parts stall 1 MiB in, so the upload is surely unfinished when the process is killed.
    proxy.set(Fault::StallAfter(1 << 20), 1000);
    let mut child = env.cmd(&["backup"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    let mut seen = Vec::new();
    while seen.is_empty() && start.elapsed() < Duration::from_secs(60) && child.try_wait().unwrap().is_none()
    {
        std::thread::sleep(Duration::from_millis(50));
        seen = servers::unfinished_multipart_uploads(server.port, &prefix);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(!seen.is_empty(), "{flavour:?}: no multipart upload was ever in progress");
    assert!(seen.iter().all(|k| k.starts_with(&format!("{prefix}data/"))), "{seen:?}");

    proxy.set(Fault::Pass, 0);
    let b = env.json(&["backup"]);
    assert_eq!(b["errors"], 0, "{b}");
    let left = servers::unfinished_multipart_uploads(server.port, &prefix);
    assert!(left.is_empty(), "{flavour:?}: unfinished uploads left behind: {left:?}");
    // The packs really went as multipart uploads: at least one is over the threshold.
    let (status, listing) =
        servers::http_get(server.port, &servers::presigned_list(server.port, &prefix)).unwrap();
    assert_eq!(status, 200, "{listing}");
    let big = listing
        .split("<Size>")
        .skip(1)
        .filter_map(|s| s.split_once('<')?.0.parse::<u64>().ok())
        .filter(|&n| n > 6 << 20)
        .count();
    assert!(big > 0, "{flavour:?}: no object over the multipart threshold: {listing}");
    let out = env.run(&["verify", "--read-data"]);
    assert!(out.status.success(), "{flavour:?} verify: {}", String::from_utf8_lossy(&out.stdout));
    let target = env.path("restore");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let diffs = diff_trees(&env.src, &env.restored_src(&target));
    assert!(diffs.is_empty(), "{flavour:?}: {}", diffs.join("\n"));
}

/// An overloaded server (503 SlowDown, Retry-After: 1) when a run starts is waited for, as
/// long as it asks, and the backup completes.
pub fn slow_down_is_waited_for(flavour: Flavour) {
    let Some(server) = flavour.start() else { return };
    let proxy = Proxy::start(server.port);
    let mut env = remote_env(flavour, &server, &proxy.origin(), "");
    gen_dataset(&env.src, 37, 30, &[1 << 20]);
    env.ok(&["init"]);
    // With a 1 ms backoff base, only the server's Retry-After makes a retry wait long.
    env.extra_env.push(("CAIRN_RETRY_BASE_MS".into(), "1".into()));
    proxy.set(Fault::SlowDown, 3);
    let out = env.run(&["--json", "backup"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{flavour:?}: {stderr}");
    let b: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(b["errors"], 0, "{b}");
    assert!(stderr.contains("SlowDown"), "the server's code is not named: {stderr}");
    let waits: Vec<f64> = stderr
        .split("retrying in ")
        .skip(1)
        .filter_map(|rest| rest.split_once('s')?.0.parse().ok())
        .collect();
    assert!(waits.len() >= 3 && waits.iter().all(|&w| w >= 0.5), "Retry-After not honoured: {stderr}");
    let target = env.path("restore");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(diff_trees(&env.src, &env.restored_src(&target)).is_empty());
}
