//! verify and repair: each scenario starts from a real backup made by the binary, damages
//! the repository or the journal, and checks that `verify` reports exactly the damage (with
//! paths), that `repair` does what it promises (and deletes nothing it may not), and that
//! afterwards `verify` is clean and everything recoverable restores identically.

mod common;

use std::process::Stdio;

use common::*;

/// Two backups: small files first, then a large file (several chunks). The second run's
/// data packs hold only the large file's chunks, so damage to them has a known extent.
fn backed_up() -> Env {
    let env = Env::with_backup_toml("pack_size = \"1MiB\"");
    let mut rng = Rng::new(21);
    for i in 0..40 {
        let path = env.src.join(format!("docs/d{}/f{i}.txt", i % 4));
        write_file(&path, &rng.text(2000), 0o644, 1_600_000_000 + i);
    }
    env.ok(&["init"]);
    env.ok(&["backup"]);
    write_file(&env.src.join("big/large.bin"), &rng.bytes(3 << 20), 0o644, 1_600_000_000);
    env.ok(&["backup"]);
    env
}

fn verify(env: &Env, args: &[&str]) -> (i32, serde_json::Value) {
    let mut a = vec!["--json", "verify"];
    a.extend_from_slice(args);
    let out = env.run(&a);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("verify JSON: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap(), v)
}

fn repair(env: &Env, args: &[&str]) -> (i32, serde_json::Value) {
    let mut a = vec!["--json", "repair"];
    a.extend_from_slice(args);
    let out = env.run(&a);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("repair JSON: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap(), v)
}

fn kinds(v: &serde_json::Value) -> Vec<(String, String)> {
    v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["kind"].as_str().unwrap().into(), p["object"].as_str().unwrap().into()))
        .collect()
}

fn affected_paths(v: &serde_json::Value) -> Vec<String> {
    v["affected"].as_array().unwrap().iter().map(|a| a["path"].as_str().unwrap().to_string()).collect()
}

fn assert_clean(env: &Env) {
    let (code, v) = verify(env, &["--read-data"]);
    assert_eq!(code, 0, "verify is not clean: {v:#}");
    assert_eq!(v["whole"], true);
}

fn assert_restores(env: &Env) {
    let target = env.path(&format!("restore-{}", Rng::new(std::process::id() as u64).next() % 100000));
    let _ = std::fs::remove_dir_all(&target);
    let r = env.json(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(r["failed"].as_array().unwrap().len(), 0, "{r}");
    let diffs = diff_trees(&env.src, &env.restored_src(&target));
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

/// The largest pack: it holds big/large.bin's chunks.
fn largest_pack(env: &Env) -> std::path::PathBuf {
    let mut packs = snapshot_dir(&env.repo.join("data"));
    packs.sort_by_key(|(_, b)| std::cmp::Reverse(b.len()));
    packs.remove(0).0
}

fn rel(env: &Env, p: &std::path::Path) -> String {
    p.strip_prefix(&env.repo).unwrap().to_string_lossy().into_owned()
}

#[test]
fn a_clean_repository_verifies_with_exit_code_zero() {
    let env = backed_up();
    let (code, v) = verify(&env, &[]);
    assert_eq!(code, 0, "{v}");
    assert!(v["trees_checked"].as_u64().unwrap() >= 4);
    let (code, v) = verify(&env, &["--read-data"]);
    assert_eq!(code, 0, "{v}");
    assert!(v["packs_read"].as_u64().unwrap() >= 2);
    assert!(v["blobs_checked"].as_u64().unwrap() >= 40);
    // Subsets cover everything over repeated runs, least recently verified first.
    let total = v["packs_read"].as_u64().unwrap();
    let env2 = backed_up();
    let (_, a) = verify(&env2, &["--read-data-subset", "50%"]);
    let (_, b) = verify(&env2, &["--read-data-subset", "50%"]);
    let (_, c) = verify(&env2, &["--read-data-subset", "1/2"]);
    assert!(a["packs_read"].as_u64().unwrap() + b["packs_read"].as_u64().unwrap() >= total);
    assert!(c["packs_read"].as_u64().unwrap() >= 1);
    // An operational error is not "damage": exit code 1.
    let out = env.cmd(&["verify"]).env("CAIRN_TEST_PASSWORD", "wrong").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_deleted_pack_is_reported_by_path_and_recovered_from_the_sources() {
    let env = backed_up();
    let pack = largest_pack(&env);
    let name = rel(&env, &pack);
    std::fs::remove_file(&pack).unwrap();

    let (code, v) = verify(&env, &[]);
    assert_eq!(code, 3);
    assert_eq!(kinds(&v), vec![("missing".to_string(), name.clone())], "{v:#}");
    let paths = affected_paths(&v);
    assert!(paths.iter().all(|p| p.ends_with("/big/large.bin")) && !paths.is_empty(), "{paths:?}");

    // A dry run plans and changes nothing.
    let before = repo_objects(&env.repo);
    let (_, plan) = repair(&env, &["--dry-run"]);
    assert_eq!(plan["dry_run"], true);
    assert!(plan["actions"].to_string().contains("would store again"), "{plan:#}");
    assert_eq!(repo_objects(&env.repo), before, "a dry run changed the repository");

    let (code, r) = repair(&env, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert!(r["recovered_chunks"].as_u64().unwrap() >= 1, "{r:#}");
    assert_clean(&env);
    assert_restores(&env);
}

#[test]
fn a_flipped_byte_is_found_by_read_data_and_repaired() {
    let env = backed_up();
    let pack = largest_pack(&env);
    let name = rel(&env, &pack);
    let mut bytes = std::fs::read(&pack).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x10;
    std::fs::write(&pack, &bytes).unwrap();

    // A listing cannot see it; reading the data does, and names the file.
    assert_eq!(verify(&env, &[]).0, 0);
    let (code, v) = verify(&env, &["--read-data"]);
    assert_eq!(code, 3);
    assert_eq!(kinds(&v), vec![("damaged".to_string(), name.clone())], "{v:#}");
    assert!(v["problems"][0]["detail"].as_str().unwrap().contains("1 of its"), "{v:#}");
    assert_eq!(affected_paths(&v).len(), 1);
    assert!(affected_paths(&v)[0].ends_with("/big/large.bin"));

    let (code, r) = repair(&env, &[]);
    assert_eq!(code, 0, "{r:#}");
    // The chunk that fails is read again from the source; the pack's other chunks (if
    // any) are copied out of it.
    assert_eq!(r["recovered_chunks"], 1, "{r:#}");
    // The damaged pack is not deleted: it is kept (retired) unless quarantined.
    assert!(pack.exists());
    assert_clean(&env);
    assert_restores(&env);
    let (_, q) = repair(&env, &["--quarantine"]);
    assert!(q["actions"].to_string().contains("quarantine/"), "{q:#}");
    assert!(!pack.exists() && env.repo.join("quarantine").join(&name).exists());
    assert_clean(&env);
}

#[test]
fn a_truncated_index_is_written_again() {
    let env = backed_up();
    let indexes = snapshot_dir(&env.repo.join("index")).len();
    let index = snapshot_dir(&env.repo.join("index")).remove(0).0;
    let name = rel(&env, &index);
    let bytes = std::fs::read(&index).unwrap();
    std::fs::write(&index, &bytes[..bytes.len() / 2]).unwrap();

    let (code, v) = verify(&env, &[]);
    assert_eq!(code, 3);
    assert_eq!(kinds(&v), vec![("size-mismatch".to_string(), name.clone())], "{v:#}");
    assert!(affected_paths(&v).is_empty(), "an index is not data: {v:#}");

    let (code, r) = repair(&env, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert!(r["actions"].to_string().contains("indexed again"), "{r:#}");
    assert_eq!(
        snapshot_dir(&env.repo.join("index")).len(),
        indexes + 1,
        "a new index beside the kept damaged one"
    );
    assert_clean(&env);
    // A rebuilt journal needs nothing but what is in the repository now. It does not
    // know the damaged index any more: a foreign object now, set aside on request.
    std::fs::remove_dir_all(&env.state).unwrap();
    let out = env.ok(&["--json", "repair", "--rebuild-journal"]);
    assert!(out.contains(&name), "the damaged index is named as invalid: {out}");
    let (code, v) = verify(&env, &[]);
    assert_eq!((code, kinds(&v)), (3, vec![("unknown".to_string(), name.clone())]), "{v:#}");
    env.ok(&["repair", "--quarantine"]);
    assert_clean(&env);
    assert_restores(&env);
}

#[test]
fn a_deleted_journal_is_rebuilt_from_the_repository() {
    let env = backed_up();
    // Packs no index lists yet: the last packs of a run whose index is gone.
    write_file(&env.src.join("later/new.bin"), &Rng::new(5).bytes(2 << 20), 0o644, 1_600_000_100);
    env.ok(&["backup"]);
    let first_index = snapshot_dir(&env.repo.join("index")).remove(0).0;
    std::fs::remove_file(&first_index).unwrap();
    std::fs::remove_dir_all(&env.state).unwrap();

    // (Any other first command would build the journal by itself too: tests/join.rs.)
    let repo_before = repo_objects(&env.repo);
    let out = env.ok(&["--json", "repair", "--rebuild-journal"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["rebuilt"]["packs_from_headers"].as_u64().unwrap() >= 1, "{v:#}");
    // Headers and index objects only: never whole packs.
    let downloaded = v["rebuilt"]["bytes_downloaded"].as_u64().unwrap();
    assert!(downloaded * 10 < pack_bytes(&env.repo), "downloaded {downloaded} bytes to rebuild");
    assert_eq!(
        repo_objects(&env.repo).len(),
        repo_before.len() + 1,
        "only a new index object is added: {out}"
    );
    assert_clean(&env);
    assert_restores(&env);
    let snaps = env.json(&["snapshots"]);
    assert_eq!(snaps.as_array().unwrap().len(), 3);
    // The next backup reads the files again (no file cache) but uploads no data.
    let b = env.json(&["backup"]);
    assert_eq!(b["data_added"], 0, "{b}");
}

#[test]
fn a_garbage_journal_is_explained_and_replaced_without_loss() {
    let env = backed_up();
    let journal = find_journal(&env.state);
    let _ = std::fs::remove_file(journal.with_extension("sqlite-wal"));
    let _ = std::fs::remove_file(journal.with_extension("sqlite-shm"));
    std::fs::write(&journal, b"this is not a database, it is garbage ".repeat(300)).unwrap();
    let (code, err) = env.fails(&["backup"]);
    assert_eq!(code, 1);
    assert!(err.contains("unreadable or corrupt") && err.contains("--rebuild-journal"), "{err}");
    env.ok(&["repair", "--rebuild-journal"]);
    // The garbage is kept aside, never deleted.
    let aside: Vec<_> = std::fs::read_dir(journal.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("journal.sqlite.replaced-"))
        .collect();
    assert!(!aside.is_empty());
    assert_clean(&env);
    assert_restores(&env);
}

#[test]
fn an_interrupted_rebuild_continues() {
    let env = backed_up();
    std::fs::remove_dir_all(&env.state).unwrap();
    let mut child = env
        .cmd(&["repair", "--rebuild-journal"])
        .env("CAIRN_TEST_PAUSE", "rebuild-after-index")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    for l in lines {
        if l.unwrap().contains("cairn-test-pause: rebuild-after-index") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let out = env.ok(&["--json", "repair", "--rebuild-journal"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["rebuilt"]["old_journal"],
        serde_json::Value::Null,
        "the partial journal was continued: {v:#}"
    );
    assert_eq!(v["rebuilt"]["index_objects"], 0, "indexes read before the kill are not read again: {v:#}");
    assert_clean(&env);
    assert_restores(&env);
}

#[test]
fn foreign_files_and_partial_uploads_are_left_alone_unless_asked() {
    let env = backed_up();
    let pack = largest_pack(&env);
    // Foreign files, inside and outside cairn's folders.
    std::fs::write(env.repo.join("README.txt"), b"someone else's file").unwrap();
    std::fs::write(env.repo.join("data/notes.md"), b"not a pack").unwrap();
    std::fs::create_dir_all(env.repo.join("data/ff")).unwrap();
    let fake_name = format!("data/ff/{}", "ff".repeat(32));
    // A truncated copy of a real pack under a name nobody knows: not provably cairn's.
    let bytes = std::fs::read(&pack).unwrap();
    std::fs::write(env.repo.join(&fake_name), &bytes[..bytes.len() / 2]).unwrap();
    // An unfinished upload of a pack cairn knows: provably cairn's own partial upload.
    let real = rel(&env, &pack);
    let (dir, file) = real.rsplit_once('/').unwrap();
    let partial = env.repo.join(dir).join(format!(".{file}.cairn-upload-0123456789abcdef"));
    std::fs::write(&partial, &bytes[..1000]).unwrap();

    let (code, v) = verify(&env, &[]);
    assert_eq!(code, 3);
    let k = kinds(&v);
    for expected in ["README.txt", "data/notes.md", fake_name.as_str()] {
        assert!(k.contains(&("unknown".to_string(), expected.to_string())), "{expected} not reported: {k:?}");
    }
    assert!(k.contains(&("unfinished-upload".to_string(), real.clone())), "{k:?}");
    assert!(affected_paths(&v).is_empty(), "no snapshot is affected: {v:#}");

    // Without options: listed, nothing deleted or moved.
    let before = repo_objects(&env.repo);
    let (code, r) = repair(&env, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert!(r["left_alone"].to_string().contains("README.txt"), "{r:#}");
    assert_eq!(repo_objects(&env.repo), before, "repair without options changed the repository");
    // Deleting: only the provably own partial upload goes.
    let (_, r) = repair(&env, &["--delete-unrecoverable"]);
    assert!(!partial.exists(), "{r:#}");
    assert!(env.repo.join("README.txt").exists() && env.repo.join(&fake_name).exists());
    // Quarantine: what carries a name cairn writes is moved, byte for byte; names cairn never
    // writes are foreign and only listed (never passed back to the backend as targets).
    let (_, r) = repair(&env, &["--quarantine"]);
    assert!(!env.repo.join(&fake_name).exists(), "{r:#}");
    assert_eq!(
        std::fs::read(env.repo.join("quarantine").join(&fake_name)).unwrap(),
        &bytes[..bytes.len() / 2]
    );
    for name in ["README.txt", "data/notes.md"] {
        assert!(env.repo.join(name).exists(), "{name} was moved: {r:#}");
        assert!(!env.repo.join("quarantine").join(name).exists(), "{name} was copied: {r:#}");
        assert!(r["left_alone"].to_string().contains(&format!("{name}: a foreign name")), "{r:#}");
    }
    // They stay the owner's business.
    std::fs::remove_file(env.repo.join("README.txt")).unwrap();
    std::fs::remove_file(env.repo.join("data/notes.md")).unwrap();
    assert_clean(&env);
    assert_restores(&env);
}

#[test]
fn unrecoverable_files_are_listed_and_purged_only_on_request() {
    let env = backed_up();
    let pack = largest_pack(&env);
    std::fs::remove_file(&pack).unwrap();
    // The source changed: the lost chunks cannot be read again.
    write_file(&env.src.join("big/large.bin"), b"new content", 0o644, 1_700_000_000);
    let (code, r) = repair(&env, &[]);
    assert_eq!(code, 3, "{r:#}");
    let lost: Vec<String> = r["unrecoverable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(lost.len(), 1);
    assert!(lost[0].ends_with("/big/large.bin"));
    let snaps_before = env.json(&["snapshots"]);

    let (code, r) = repair(&env, &["--purge-broken"]);
    assert_eq!(code, 0, "{r:#}");
    let purged: Vec<String> =
        r["purged"].as_array().unwrap().iter().map(|u| u["path"].as_str().unwrap().to_string()).collect();
    assert_eq!(purged, lost, "every removed path is named");
    let snaps = env.json(&["snapshots"]);
    assert_eq!(snaps.as_array().unwrap().len(), 2);
    assert_eq!(snaps[0]["id"], snaps_before[0]["id"], "the snapshot without the file is untouched");
    assert_ne!(snaps[1]["id"], snaps_before[1]["id"], "the snapshot with the file was rewritten");
    assert!(snaps[1]["tags"].to_string().contains("repaired"));
    assert_clean(&env);
    // The rewritten snapshot restores everything but the purged file.
    let target = env.path("purged-restore");
    let out = env.json(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(out["failed"].as_array().unwrap().len(), 0);
    let root = env.restored_src(&target);
    assert!(!root.join("big/large.bin").exists());
    assert!(root.join("docs/d0/f0.txt").exists());
}

#[test]
fn two_machines_share_a_repository_and_a_stale_journal_refuses_destructive_repairs() {
    let a = backed_up();
    // Machine B: its own sources and state folder, the same repository.
    let b = Env::new();
    write_file(&b.src.join("b-only.txt"), b"from machine b", 0o644, 1_600_000_000);
    let text = std::fs::read_to_string(&a.config)
        .unwrap()
        .replace(&format!("{:?}", a.src), &format!("{:?}", b.src))
        .replace(&format!("{:?}", a.state), &format!("{:?}", b.state));
    b.write_config(&text);
    b.ok(&["repair", "--rebuild-journal"]);
    b.ok(&["backup"]);
    // Each machine sees the other's work as known, and the repository as whole.
    assert_clean(&b);
    // A has not seen B's snapshot yet: destructive repairs are refused, and say why.
    let (code, err) = a.fails(&["repair", "--delete-unrecoverable"]);
    assert_eq!(code, 1);
    assert!(err.contains("refusing") && err.contains("did not know"), "{err}");
    // A plain repair learns B's snapshot and index; then A is whole too, and may.
    a.ok(&["repair"]);
    a.ok(&["repair", "--delete-unrecoverable"]);
    assert_clean(&a);
    assert_eq!(a.json(&["snapshots"]).as_array().unwrap().len(), 3);
    assert_restores(&a);
    assert_restores(&b);
}

#[test]
fn an_old_journal_adopts_what_it_missed_by_reading_headers() {
    let env = backed_up();
    // Keep a copy of the journal as it is now, then back up more.
    let journal_dir = find_journal(&env.state).parent().unwrap().to_path_buf();
    let copy_root = env.path("journal-copy");
    let copy = copy_root.join(journal_dir.file_name().unwrap());
    std::fs::create_dir_all(&copy).unwrap();
    for e in std::fs::read_dir(&journal_dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
        }
    }
    write_file(&env.src.join("newer/n.bin"), &Rng::new(77).bytes(2 << 20), 0o644, 1_650_000_000);
    env.ok(&["backup"]);
    // The run's index object is lost too: its packs can only be learned from their headers.
    let known_index: std::collections::HashSet<String> = journal_objects(&copy_root)
        .iter()
        .map(|(n, ..)| n.clone())
        .filter(|n| n.starts_with("index/"))
        .collect();
    for (name, _) in repo_objects(&env.repo) {
        if name.starts_with("index/") && !known_index.contains(&name) {
            std::fs::remove_file(env.repo.join(&name)).unwrap();
        }
    }
    // The old journal comes back (restored from a backup of the laptop, say).
    std::fs::remove_dir_all(&journal_dir).unwrap();
    std::fs::create_dir_all(&journal_dir).unwrap();
    for e in std::fs::read_dir(&copy).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), journal_dir.join(e.file_name())).unwrap();
    }
    // It does not know the newer snapshot: destructive repairs are refused.
    let (_, err) = env.fails(&["repair", "--purge-broken"]);
    assert!(err.contains("refusing"), "{err}");
    let (code, v) = verify(&env, &[]);
    assert_eq!(code, 3);
    assert!(kinds(&v).iter().any(|(k, n)| k == "unknown" && n.starts_with("data/")), "{v:#}");
    let (code, r) = repair(&env, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert!(r["actions"].to_string().contains("from its header"), "packs adopted from their headers: {r:#}");
    assert_clean(&env);
    assert_restores(&env);
}
