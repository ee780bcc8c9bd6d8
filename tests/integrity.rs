//! Restore authenticates every chunk and never writes bytes that do not verify.

mod common;

use common::*;

#[test]
fn flipped_byte_in_a_pack_fails_naming_the_file_and_writes_no_wrong_bytes() {
    let env = Env::with_backup_toml("pack_size = \"1MiB\"");
    let mut rng = Rng::new(3);
    let victim = rng.bytes(3 << 20);
    write_file(&env.src.join("victim.bin"), &victim, 0o644, 1_600_000_000);
    write_file(&env.src.join("innocent.txt"), b"fine", 0o644, 1_600_000_000);
    env.ok(&["init"]);
    env.ok(&["backup"]);

    // The largest pack holds victim.bin's data (trees and the small file are tiny).
    let mut packs: Vec<_> = snapshot_dir(&env.repo.join("data"));
    packs.sort_by_key(|(_, b)| std::cmp::Reverse(b.len()));
    let (pack, mut bytes) = packs.remove(0);
    assert!(bytes.len() > 1 << 20);
    let at = bytes.len() / 3;
    bytes[at] ^= 0x01;
    std::fs::write(&pack, &bytes).unwrap();

    let target = env.path("restore");
    let (code, err) = env.fails(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("victim.bin"), "the error must name the file: {err}");
    assert!(err.contains("failed authentication"), "{err}");
    let root = env.restored_src(&target);
    // No wrong bytes: the damaged file is not there at all; the rest is restored.
    assert!(!root.join("victim.bin").exists(), "a file with unverified data was left behind");
    assert_eq!(std::fs::read(root.join("innocent.txt")).unwrap(), b"fine");
}
