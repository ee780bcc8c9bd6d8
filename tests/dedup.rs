//! Deduplication: unchanged data is not uploaded again, and a small change uploads about
//! one chunk.

mod common;

use common::*;

#[test]
fn unchanged_backup_uploads_almost_nothing_and_one_byte_uploads_one_chunk() {
    let env = Env::new();
    let mut rng = Rng::new(7);
    for i in 0..200 {
        write_file(&env.src.join(format!("docs/{i}.txt")), &rng.text(3000), 0o644, 1_600_000_000);
    }
    let big = env.src.join("big.bin");
    write_file(&big, &rng.bytes(48 << 20), 0o644, 1_600_000_000);
    env.ok(&["init"]);
    let first = env.json(&["backup"]);
    let first_upload = first["bytes_uploaded"].as_u64().unwrap();
    assert!(first_upload > 48 << 20, "{first}");

    // Nothing changed: no file is read, no data added, only the snapshot object is sent.
    let second = env.json(&["backup"]);
    assert_eq!(second["files_read"], 0, "{second}");
    assert_eq!(second["data_added"], 0, "{second}");
    // At most one small tree pack: the folders above the source (the test's temporary folder,
    // /tmp) are recorded with their times, and other processes change /tmp's between runs.
    assert!(second["packs_uploaded"].as_u64().unwrap() <= 1, "{second}");
    let second_upload = second["bytes_uploaded"].as_u64().unwrap();
    assert!(second_upload < 4096, "no-change backup uploaded {second_upload} bytes");
    assert_eq!(second["parent"], first["snapshot"]);

    // One byte changed in the middle of the 48 MiB file.
    let mut data = std::fs::read(&big).unwrap();
    data[20 << 20] ^= 0x55;
    write_file(&big, &data, 0o644, 1_600_000_100);
    let third = env.json(&["backup"]);
    assert_eq!(third["files_read"], 1, "{third}");
    let added = third["data_added"].as_u64().unwrap();
    let uploaded = third["bytes_uploaded"].as_u64().unwrap();
    println!("1-byte change: {added} bytes of new chunk data, {uploaded} bytes uploaded in total");
    // Chunks average 1 MiB and never exceed 4 MiB; a 1-byte edit touches one chunk (two
    // at most, when it moves a boundary).
    assert!(added > 0 && added <= 2 * (4 << 20), "added {added}");
    assert!(uploaded <= added + (64 << 10), "uploaded {uploaded} for {added} new bytes");

    // And the changed file restores to its new content.
    let target = env.path("restore");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(std::fs::read(env.restored_src(&target).join("big.bin")).unwrap(), data);
}
