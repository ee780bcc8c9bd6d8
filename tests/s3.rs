//! The S3 plugin against real servers on 127.0.0.1: SeaweedFS, and rclone's S3 gateway
//! (whose ranged GET answers 200 with the whole object).

mod common;

use common::remote::{
    Flavour, cut_uploads, multipart_after_kill, remote_env_with, repo_folder, resume_after_kill, round_trip,
    slow_down_is_waited_for,
};

#[test]
fn seaweedfs_round_trip() {
    round_trip(Flavour::Seaweed);
}

#[test]
fn rclone_s3_round_trip() {
    round_trip(Flavour::RcloneS3);
}

#[test]
fn seaweedfs_resume_after_kill() {
    resume_after_kill(Flavour::Seaweed);
}

#[test]
fn rclone_s3_resume_after_kill() {
    resume_after_kill(Flavour::RcloneS3);
}

#[test]
fn seaweedfs_uploads_cut_mid_way() {
    cut_uploads(Flavour::Seaweed);
}

#[test]
fn seaweedfs_multipart_upload_killed_mid_way() {
    multipart_after_kill(Flavour::Seaweed);
}

#[test]
fn rclone_s3_multipart_upload_killed_mid_way() {
    multipart_after_kill(Flavour::RcloneS3);
}

#[test]
fn seaweedfs_slow_down_is_retried_after_the_servers_delay() {
    slow_down_is_waited_for(Flavour::Seaweed);
}

#[test]
fn rclone_s3_uploads_cut_mid_way() {
    cut_uploads(Flavour::RcloneS3);
}

/// With `conditional_put = true`, creating the repository's config and key are conditional
/// PUTs (If-None-Match: *), which SeaweedFS honours: a second `init` of the same place (from
/// another machine, with its own state) is refused and the first repository stays whole.
#[test]
fn seaweedfs_conditional_put_guards_init() {
    let Some(server) = common::servers::require(common::servers::seaweedfs_s3()) else { return };
    let opts = ", conditional_put = true";
    let first = remote_env_with(Flavour::Seaweed, &server, &server.origin(), "", opts);
    common::gen_dataset(&first.src, 36, 20, &[]);
    first.ok(&["init"]);
    let b = first.json(&["backup"]);
    assert_eq!(b["errors"], 0, "{b}");
    let second = remote_env_with(Flavour::Seaweed, &server, &server.origin(), "", opts);
    let out = second.run(&["init"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second init over an existing repository succeeded");
    assert!(err.contains("already"), "{err}");
    let out = first.run(&["verify", "--read-data"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

/// Wrong credentials and a missing bucket are named, without echoing the secret, and
/// nothing is created.
#[test]
fn wrong_credentials_and_a_missing_bucket_are_named() {
    let Some(server) = common::servers::require(common::servers::seaweedfs_s3()) else { return };
    let env = remote_env_with(Flavour::Seaweed, &server, &server.origin(), "", "");
    common::gen_dataset(&env.src, 38, 5, &[]);
    let out = env.cmd(&["init"]).env("CAIRN_TEST_S3_SECRET", "not-the-secret-42").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!err.contains("not-the-secret-42"), "the secret is echoed: {err}");
    assert!(err.contains("permission denied") && err.contains("SignatureDoesNotMatch"), "{err}");
    assert!(err.contains("check options `access_key_id` and `secret_access_key`"), "{err}");
    assert!(!env.state.exists() || common::snapshot_dir(&env.state).is_empty(), "state written: {err}");

    let text = std::fs::read_to_string(&env.config).unwrap();
    env.write_config(&text.replace("bucket = \"cairn\"", "bucket = \"no-such-bucket\""));
    let (_, err) = env.fails(&["init"]);
    assert!(err.contains("bucket \"no-such-bucket\" not found"), "{err}");
    assert!(err.contains("option `bucket`"), "{err}");
}

/// Append-only on S3 (no conditional put: the host looks before every upload): backups
/// work, and `repair --quarantine` is refused before anything is uploaded, so an earlier
/// `quarantine/NAME` keeps its bytes. With deletes granted, quarantine still never replaces
/// it: the copy takes `quarantine/NAME.1`.
#[test]
fn seaweedfs_quarantine_never_replaces_an_object() {
    let Some(server) = common::servers::require(common::servers::seaweedfs_s3()) else { return };
    let env = remote_env_with(Flavour::Seaweed, &server, &server.origin(), "", "");
    let granted = std::fs::read_to_string(&env.config).unwrap();
    assert!(granted.contains("call_timeout_secs = 10 }"), "{granted}");
    env.write_config(
        &granted.replace("call_timeout_secs = 10 }", "call_timeout_secs = 10, delete = false }"),
    );
    common::gen_dataset(&env.src, 39, 20, &[1 << 20]);
    env.ok(&["init"]);
    let b = env.json(&["backup"]);
    assert_eq!(b["errors"], 0, "{b}");

    let port = server.port;
    let key = |name: &str| format!("{}/{name}", repo_folder(&server));
    let get = |name: &str| {
        let (status, bytes) =
            common::servers::http_get_bytes(port, &common::servers::presigned_get(port, &key(name))).unwrap();
        assert_eq!(status, 200, "GET {name}");
        bytes
    };
    let put = |name: &str, body: &[u8]| {
        let status = common::servers::http_put(port, &common::servers::presigned_put(port, &key(name)), body);
        assert_eq!(status, Some(200), "PUT {name}");
    };
    let name = format!("data/ee/{}", "ee".repeat(32));
    let quarantined = format!("quarantine/{name}");
    let foreign = b"not a pack, under a pack's name".to_vec();
    let earlier = b"an earlier quarantined object: must never be replaced".to_vec();
    put(&name, &foreign);
    put(&quarantined, &earlier);

    let (code, err) = env.fails(&["repair", "--quarantine"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("append-only") && err.contains("nothing was changed"), "{err}");
    assert_eq!(get(&quarantined), earlier);
    assert_eq!(get(&name), foreign);

    env.write_config(&granted);
    let out = env.ok(&["repair", "--quarantine"]);
    assert!(out.contains(&format!("moved {name} to {quarantined}.1")), "{out}");
    assert_eq!(get(&quarantined), earlier);
    assert_eq!(get(&format!("{quarantined}.1")), foreign);
    let out = env.run(&["verify", "--read-data"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

/// The append-only upload rule on a backend without conditional put (the host looks
/// first): an object already stored with exactly its bytes is accepted without being sent
/// again; other bytes under a content address, or an existing name that is not
/// content-addressed, are an error and stay as they are.
#[test]
fn seaweedfs_append_only_uploads_replace_nothing() {
    use cairn::ids::Id;
    use cairn::plugin::ErrorKind;

    let Some(server) = common::servers::require(common::servers::seaweedfs_s3()) else { return };
    let env = remote_env_with(Flavour::Seaweed, &server, &server.origin(), "", "");
    let text = std::fs::read_to_string(&env.config).unwrap();
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cairn-cache");
    let text = text
        .replace("call_timeout_secs = 10 }", "call_timeout_secs = 10, delete = false }")
        .replace("{ env = \"CAIRN_TEST_S3_SECRET\" }", &format!("{:?}", common::servers::SECRET_KEY))
        .replace("[state]\n", &format!("[state]\ncache_dir = {cache:?}\n"))
        + &format!("\n[plugins]\ndir = {:?}\n", env.path("plugins"));
    assert!(text.contains("delete = false") && text.contains("cache_dir"), "{text}");
    env.write_config(&text);
    let config = cairn::config::Config::load(&env.config).unwrap();
    assert!(!config.repository.grants.delete);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let backend = rt.block_on(cairn::repo::open_backend(&config, false)).unwrap();
    assert!(!backend.caps().conditional_put);

    let port = server.port;
    let key = |name: &str| format!("{}/{name}", repo_folder(&server));
    let get = |name: &str| {
        let (status, bytes) =
            common::servers::http_get_bytes(port, &common::servers::presigned_get(port, &key(name))).unwrap();
        assert_eq!(status, 200, "GET {name}");
        bytes
    };
    let put = |name: &str, body: &[u8]| {
        let status = common::servers::http_put(port, &common::servers::presigned_put(port, &key(name)), body);
        assert_eq!(status, Some(200), "PUT {name}");
    };

    let bytes = b"an object stored before".to_vec();
    let same = format!("index/{}", Id::of_bytes(&bytes).hex());
    put(&same, &bytes);
    rt.block_on(backend.upload_bytes(&same, &bytes, false)).unwrap();
    assert_eq!(get(&same), bytes);
    assert_eq!(backend.traffic.uploaded.load(std::sync::atomic::Ordering::Relaxed), 0, "bytes were sent");

    let other = format!("index/{}", Id::of_bytes(b"what the upload holds").hex());
    put(&other, b"something else");
    let e = rt.block_on(backend.upload_bytes(&other, b"what the upload holds", false)).unwrap_err();
    assert!(e.to_string().contains("another object is stored under this content address"), "{e}");
    assert_eq!(get(&other), b"something else");

    let quarantined = format!("quarantine/{same}");
    put(&quarantined, b"earlier");
    let e = rt.block_on(backend.upload_bytes(&quarantined, b"later", false)).unwrap_err();
    assert!(matches!(e.kind, ErrorKind::AlreadyExists(_)), "{e}");
    assert_eq!(get(&quarantined), b"earlier");

    // Where nothing is stored, the upload goes through.
    let fresh = b"a new object".to_vec();
    let new = format!("index/{}", Id::of_bytes(&fresh).hex());
    rt.block_on(backend.upload_bytes(&new, &fresh, false)).unwrap();
    assert_eq!(get(&new), fresh);
}
