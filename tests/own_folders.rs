//! cairn's own folders (state, cache of compiled plugins, installed plugins) and its config
//! file are out of every plugin's reach: a grant that overlaps them is refused before
//! anything runs, and a compiled plugin in the cache that is not what cairn compiled is
//! recompiled, never loaded.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;

/// An env whose own folders each sit alone in a parent folder of their own (`s/state`,
/// `c/cache`, `p/plugins`, `conf/cairn.toml`), so a grant can contain exactly one of them.
fn own_env() -> Env {
    let mut env = Env::new();
    std::fs::create_dir_all(env.path("conf")).unwrap();
    env.config = env.path("conf/cairn.toml");
    env.state = env.path("s/state");
    for d in ["s/state", "c/cache", "p/plugins", "repo"] {
        std::fs::create_dir_all(env.path(d)).unwrap();
    }
    env
}

/// Writes a config for the chaos plugin (the fs backend as a loadable plugin) granted its
/// repository folder and `extra_grant`.
fn config_with_grant(env: &Env, extra_grant: &Path) {
    env.write_config(&format!(
        "[repository]\nbackend = {:?}\noptions = {{ path = {:?} }}\npassword_env = \"CAIRN_TEST_PASSWORD\"\n\
         grants = {{ dirs = [{:?}, {:?}] }}\n\n[backup]\nsources = [{:?}]\n\n\
         [state]\ndir = {:?}\ncache_dir = {:?}\n\n[plugins]\ndir = {:?}\n",
        test_plugin("chaos"),
        env.repo,
        env.repo,
        extra_grant,
        env.src,
        env.state,
        env.path("c/cache"),
        env.path("p/plugins"),
    ));
}

/// Every path below `root` with its size and modification time.
fn tree(root: &Path) -> BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            }
            out.insert(e.path(), (meta.len(), meta.modified().unwrap()));
        }
    }
    out
}

/// `cairn snapshots` with this grant fails with exit 1, naming the grant, how it overlaps
/// and the folder it overlaps, and writes nothing anywhere in the env.
fn assert_refused(env: &Env, grant: &Path, relation: &str, own: &str, own_path: &Path) -> String {
    config_with_grant(env, grant);
    let before = tree(env.dir.path());
    let (code, err) = env.fails(&["snapshots"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    let named = format!("repository.grants.dirs entry {} ", grant.display());
    assert!(err.contains(&named), "expected {named:?} in: {err}");
    let expected = format!(" {relation} cairn's {own} {}", own_path.display());
    assert!(err.contains(&expected), "expected {expected:?} in: {err}");
    assert_eq!(tree(env.dir.path()), before, "nothing may be written");
    err
}

#[test]
fn grants_overlapping_the_state_folder_are_refused() {
    let env = own_env();
    let state = env.path("s/state");
    let own = "state folder (journal, lock)";
    assert_refused(&env, &state, "is", own, &state);
    assert_refused(&env, &state.join("some/sub"), "is inside", own, &state);
    assert_refused(&env, &env.path("s"), "contains", own, &state);
    assert_refused(&env, Path::new("/"), "contains", own, &state);
}

#[test]
fn grants_overlapping_the_cache_folder_are_refused() {
    let env = own_env();
    let cache = env.path("c/cache");
    let own = "cache folder (compiled plugins)";
    assert_refused(&env, &cache, "is", own, &cache);
    assert_refused(&env, &cache.join("components"), "is inside", own, &cache);
    assert_refused(&env, &env.path("c"), "contains", own, &cache);
}

#[test]
fn grants_overlapping_the_plugins_folder_are_refused() {
    let env = own_env();
    let plugins = env.path("p/plugins");
    let own = "plugins folder";
    assert_refused(&env, &plugins, "is", own, &plugins);
    assert_refused(&env, &plugins.join("chaos"), "is inside", own, &plugins);
    assert_refused(&env, &env.path("p"), "contains", own, &plugins);
}

#[test]
fn a_grant_containing_the_config_file_is_refused() {
    let env = own_env();
    assert_refused(&env, &env.path("conf"), "contains", "config file", &env.config);
}

#[test]
fn a_grant_disguised_by_a_symlink_or_dotdot_is_refused() {
    let env = own_env();
    let cache = env.path("c/cache");
    let link = env.path("innocent");
    std::os::unix::fs::symlink(&cache, &link).unwrap();
    let err = assert_refused(&env, &link, "is", "cache folder (compiled plugins)", &cache);
    let resolved =
        format!("{} (which resolves to {}) is", link.display(), cache.canonicalize().unwrap().display());
    assert!(err.contains(&resolved), "{err}");
    // A link to a parent, with a path below it that does not exist yet.
    let parent_link = env.path("elsewhere");
    std::os::unix::fs::symlink(env.path("c"), &parent_link).unwrap();
    assert_refused(
        &env,
        &parent_link.join("cache/new"),
        "is inside",
        "cache folder (compiled plugins)",
        &cache,
    );
    // `..` through a folder that does not exist.
    let dotdot = env.path("nothing/../s/state");
    assert_refused(&env, &dotdot, "is", "state folder (journal, lock)", &env.path("s/state"));
}

#[test]
fn a_grant_holding_a_symlink_to_an_own_place_is_refused() {
    // The state folder and the config file are reached through symlinks kept in `links/`:
    // a plugin granted `links/` could point them elsewhere.
    let mut env = own_env();
    let links = env.path("links");
    std::fs::create_dir_all(&links).unwrap();
    std::os::unix::fs::symlink(env.path("s/state"), links.join("state")).unwrap();
    env.state = links.join("state");
    let err = assert_refused(&env, &links, "contains", "state folder (journal, lock)", &env.state);
    assert!(err.contains(&format!("(through the symlink {})", links.join("state").display())), "{err}");

    let mut env = own_env();
    let links = env.path("links");
    std::fs::create_dir_all(&links).unwrap();
    std::os::unix::fs::symlink(&env.config, links.join("cairn.toml")).unwrap();
    env.config = links.join("cairn.toml");
    assert_refused(&env, &links, "contains", "config file", &env.config);
}

#[test]
fn a_grant_beside_cairns_folders_is_accepted() {
    // A sibling whose name merely starts like an own folder's is not inside it.
    let env = own_env();
    let beside = env.path("s/state-archive");
    std::fs::create_dir_all(&beside).unwrap();
    config_with_grant(&env, &beside);
    write_file(&env.src.join("a.txt"), b"granted next to, not into", 0o644, 1_600_000_000);
    env.ok(&["init"]);
    env.ok(&["backup"]);
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 1);
}

#[test]
fn the_fs_backend_folder_is_checked_like_a_grant() {
    let env = own_env();
    let cache = env.path("c/cache");
    let fs_config = |path_option: &str| {
        env.write_config(&format!(
            "[repository]\nbackend = \"fs\"\noptions = {{ path = {path_option} }}\n\
             password_env = \"CAIRN_TEST_PASSWORD\"\n\n[state]\ndir = {:?}\ncache_dir = {cache:?}\n",
            env.state
        ))
    };
    // Given literally: refused when the config is loaded.
    fs_config(&format!("{cache:?}"));
    let before = tree(env.dir.path());
    let (code, err) = env.fails(&["init"]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("options.path {} is cairn's cache folder", cache.display())), "{err}");
    assert_eq!(tree(env.dir.path()), before);
    // Fetched at run time: refused when the backend starts, before it runs.
    fs_config("{ env = \"CAIRN_TEST_REPO_PATH\" }");
    let inside = cache.join("repo");
    let out = env.cmd(&["init"]).env("CAIRN_TEST_REPO_PATH", &inside).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("options.path {} is inside cairn's cache folder", inside.display())),
        "{err}"
    );
    assert!(!inside.exists());
    assert!(!env.path("c/cache/components").exists(), "nothing compiled into the cache");
}

/// The compiled artifacts in a cache folder.
fn compiled(cache: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(cache.join("components")) else { return Vec::new() };
    let mut v: Vec<PathBuf> =
        entries.map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "cwasm")).collect();
    v.sort();
    v
}

#[test]
fn a_tampered_compiled_plugin_is_recompiled_not_loaded() {
    let env = own_env();
    let cache = env.path("c/cache");
    // The built-in fs backend, compiled into this cache.
    let fs_repo = env.path("fsrepo");
    env.write_config(&format!(
        "[repository]\nbackend = \"fs\"\noptions = {{ path = {fs_repo:?} }}\npassword_env = \"CAIRN_TEST_PASSWORD\"\n\n\
         [state]\ndir = {:?}\ncache_dir = {cache:?}\n",
        env.state
    ));
    env.ok(&["init"]);
    let fs_compiled = compiled(&cache);
    assert_eq!(fs_compiled.len(), 1);
    let fs_code = std::fs::read(&fs_compiled[0]).unwrap();

    // The chaos plugin, with an option only it knows (a fault that never fires): the fs
    // backend's code would refuse the option.
    env.write_config(&format!(
        "[repository]\nbackend = {:?}\noptions = {{ path = {:?}, faults = \"stat#1000000:permanent\" }}\n\
         password_env = \"CAIRN_TEST_PASSWORD\"\ngrants = {{ dirs = [{:?}] }}\n\n[backup]\nsources = [{:?}]\n\n\
         [state]\ndir = {:?}\ncache_dir = {cache:?}\n",
        test_plugin("chaos"),
        env.repo,
        env.repo,
        env.src,
        env.state
    ));
    env.ok(&["init"]);
    let chaos_compiled: Vec<PathBuf> =
        compiled(&cache).into_iter().filter(|p| !fs_compiled.contains(p)).collect();
    assert_eq!(chaos_compiled.len(), 1);
    let chaos_file = &chaos_compiled[0];
    let chaos_code = std::fs::read(chaos_file).unwrap();

    // Another plugin's compiled code in its place: it is not loaded.
    std::fs::remove_file(env.repo.join(".chaos-count-stat")).unwrap();
    std::fs::write(chaos_file, &fs_code).unwrap();
    write_file(&env.src.join("a.txt"), b"backed up by the real chaos plugin", 0o644, 1_600_000_000);
    let out = env.run(&["backup"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("is not what cairn compiled") && err.contains("recompiling"), "{err}");
    let now = std::fs::read(chaos_file).unwrap();
    assert_ne!(now, fs_code, "the tampered artifact was replaced");
    assert_eq!(now, chaos_code, "by the chaos plugin compiled again");
    // The chaos plugin ran: it counts the calls its faults name in the repository folder.
    assert!(env.repo.join(".chaos-count-stat").exists());
    let target = env.path("restore");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(diff_trees(&env.src, &env.restored_src(&target)).is_empty());

    // Bytes that are no compiled code at all, and a deleted hash: recompiled the same way.
    std::fs::write(chaos_file, b"not compiled code").unwrap();
    env.ok(&["snapshots"]);
    assert_eq!(std::fs::read(chaos_file).unwrap(), chaos_code);
    std::fs::remove_file(chaos_file.with_extension("cwasm.blake3")).unwrap();
    env.ok(&["snapshots"]);
    assert!(chaos_file.with_extension("cwasm.blake3").exists());
    // Untouched, it is loaded without complaint.
    let out = env.run(&["snapshots"]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("recompiling"));
}
