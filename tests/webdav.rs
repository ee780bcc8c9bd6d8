//! The WebDAV plugin against a real server on 127.0.0.1 (rclone serve webdav).

mod common;

use common::remote::{Flavour, cut_uploads, resume_after_kill, round_trip};

#[test]
fn webdav_round_trip() {
    round_trip(Flavour::RcloneDav);
}

#[test]
fn webdav_resume_after_kill() {
    resume_after_kill(Flavour::RcloneDav);
}

#[test]
fn webdav_uploads_cut_mid_way() {
    cut_uploads(Flavour::RcloneDav);
}

#[test]
fn secrets_never_reach_the_journal_or_the_logs() {
    use common::servers;
    use common::*;
    let Some(server) = servers::require(servers::rclone_webdav()) else { return };
    let env = common::remote::remote_env(Flavour::RcloneDav, &server, &server.origin(), "");
    write_file(&env.src.join("a.txt"), b"secret-free content", 0o644, 1_600_000_000);
    env.ok(&["-vv", "init"]);
    let out = env.run(&["-vv", "backup"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let logs = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!logs.contains(servers::DAV_PASS), "the password appears in the output");
    // Nothing in the state folder (journal, lock) holds it.
    for (path, bytes) in snapshot_dir(&env.state) {
        assert!(
            !bytes.windows(servers::DAV_PASS.len()).any(|w| w == servers::DAV_PASS.as_bytes()),
            "the password is stored in {}",
            path.display()
        );
    }
    // A wrong password for the server is reported without echoing it.
    let bad = env.cmd(&["backup"]).env("CAIRN_TEST_DAV_PASS", "wrong-dav-password-xyz").output().unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(!err.contains("wrong-dav-password-xyz"), "{err}");
    assert!(err.contains("permission denied") || err.contains("401"), "{err}");
}
