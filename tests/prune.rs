//! `cairn prune`, `forget --prune` and `stats` (issue 13): what prune deletes and repacks is
//! exactly what its plan names, every remaining snapshot restores byte for byte afterwards,
//! `verify --read-data` is clean, and a prune killed at any point is finished by the next run.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;

/// Small packs, so a few hundred KiB of data make several of them.
fn env() -> Env {
    Env::with_backup_toml("pack_size = \"1MiB\"")
}

/// Random (incompressible) content for file `name`, the same every time.
fn content(name: &str, len: usize) -> Vec<u8> {
    let seed = name.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    Rng::new(seed).bytes(len)
}

fn objects(env: &Env) -> BTreeMap<String, u64> {
    repo_objects(&env.repo)
        .into_iter()
        .filter(|(n, _)| !n.rsplit('/').next().unwrap().starts_with('.'))
        .collect()
}

fn names(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect()
}

/// Backs up the files (name, length) as they are listed, replacing whatever `src/` held.
/// Returns the snapshot id.
fn backup_of(env: &Env, files: &[(&str, usize)]) -> String {
    for e in std::fs::read_dir(&env.src).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    for (name, len) in files {
        write_file(&env.src.join(name), &content(name, *len), 0o644, 1_600_000_000);
    }
    let b = env.json(&["backup"]);
    assert_eq!(b["errors"], 0, "{b}");
    b["snapshot"].as_str().unwrap().to_string()
}

/// Restores snapshot `id` and checks it holds exactly these files with their content.
fn assert_restores(env: &Env, id: &str, files: &[(&str, usize)]) {
    let target = env.path(&format!("restored-{id}"));
    env.ok(&["restore", id, "--target", target.to_str().unwrap()]);
    let root = env.restored_src(&target);
    let mut found: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let mut want: Vec<String> = files.iter().map(|(n, _)| n.to_string()).collect();
    want.sort();
    assert_eq!(found, want, "snapshot {id}");
    for (name, len) in files {
        assert!(std::fs::read(root.join(name)).unwrap() == content(name, *len), "{id}: {name} differs");
    }
    std::fs::remove_dir_all(&target).unwrap();
}

fn assert_whole(env: &Env) {
    let v = env.json(&["verify", "--read-data"]);
    assert_eq!(v["whole"], true, "{v:#}");
    assert_repo_matches_journal(&env.repo, &env.state);
}

/// Deleted and added object names between two listings.
fn changes(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let gone = before.keys().filter(|n| !after.contains_key(*n)).cloned().collect();
    let new = after.keys().filter(|n| !before.contains_key(*n)).cloned().collect();
    (gone, new)
}

fn sum(objects: &BTreeMap<String, u64>, names: &BTreeSet<String>) -> u64 {
    names.iter().map(|n| objects[n]).sum()
}

#[test]
fn prune_deletes_exactly_the_packs_no_snapshot_needs() {
    let env = env();
    env.ok(&["init"]);
    // Each round's data is its own: once a round's snapshot is forgotten, nothing needs it.
    let rounds: Vec<Vec<(String, usize)>> =
        (0..4).map(|r| vec![(format!("r{r}.bin"), 600_000), (format!("s{r}.bin"), 300_000)]).collect();
    let ids: Vec<String> = rounds.iter().map(|f| backup_of(&env, &as_ref(f))).collect();
    env.ok(&["forget", "--keep-last", "2"]);

    let before = objects(&env);
    let plan = env.json(&["prune", "--dry-run"]);
    assert_eq!(objects(&env), before, "a dry run changed the repository");
    assert_eq!(plan["dry_run"], true, "{plan:#}");
    let doomed = names(&plan["plan"]["delete"]);
    assert!(plan["plan"]["repack"].as_array().unwrap().is_empty(), "{plan:#}");
    // Rounds 0 and 1: their data packs (900 KB each) and their tree packs.
    assert!(doomed.len() >= 4, "{plan:#}");
    let human = env.ok(&["prune", "--dry-run"]);
    assert!(human.contains("dry run: nothing was changed") && human.contains("  delete data/"), "{human}");

    let done = env.json(&["prune"]);
    let after = objects(&env);
    let (gone, new) = changes(&before, &after);
    let gone_packs: BTreeSet<String> = gone.iter().filter(|n| n.starts_with("data/")).cloned().collect();
    assert_eq!(gone_packs, doomed, "deleted packs differ from the plan");
    assert!(gone.iter().all(|n| n.starts_with("data/") || n.starts_with("index/")), "{gone:?}");
    assert!(new.iter().all(|n| n.starts_with("index/")), "prune wrote packs without repacking: {new:?}");
    let rewritten = names_of(&plan["plan"]["rewrite_indexes"]);
    let gone_indexes: BTreeSet<String> = gone.iter().filter(|n| n.starts_with("index/")).cloned().collect();
    assert_eq!(gone_indexes, rewritten, "{plan:#}");
    // The space freed is the plan's figure, to the byte.
    let freed = sum(&before, &gone_packs);
    assert_eq!(freed, plan["freed_bytes"].as_u64().unwrap(), "{plan:#}");
    assert_eq!(freed, done["done"]["pack_bytes_deleted"].as_u64().unwrap(), "{done:#}");
    assert_eq!(pack_bytes(&env.repo), plan["plan"]["pack_bytes"].as_u64().unwrap() - freed);

    assert_restores(&env, &ids[2], &as_ref(&rounds[2]));
    assert_restores(&env, &ids[3], &as_ref(&rounds[3]));
    assert_whole(&env);
    // Nothing left to do.
    let again = env.json(&["prune"]);
    assert!(
        names(&again["plan"]["delete"]).is_empty() && names(&again["plan"]["repack"]).is_empty(),
        "{again:#}"
    );
    assert_eq!(objects(&env), after);
}

fn as_ref(files: &[(String, usize)]) -> Vec<(&str, usize)> {
    files.iter().map(|(n, l)| (n.as_str(), *l)).collect()
}

fn names_of(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()).collect()
}
