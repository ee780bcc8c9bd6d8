//! The runner (issue 14): named jobs on one repository, `cairn run` choosing due jobs by an
//! injected clock (`CAIRN_NOW`, never slept), hooks and their deadline, run records,
//! `cairn status --max-age`, the Prometheus textfile, and the systemd units of
//! `cairn schedule install`, checked with `systemd-analyze verify`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use cairn::ids::Id;
use common::forge::Forge;
use common::*;

/// An env whose config has `[repository]`, `[state]` and then `jobs` (TOML), initialised,
/// in UTC (schedules are evaluated in the system time zone).
fn runner_env(jobs: &str) -> Env {
    let mut env = Env::new();
    env.write_config(&format!(
        "[repository]\nbackend = \"fs\"\noptions = {{ path = {:?} }}\npassword_env = \"CAIRN_TEST_PASSWORD\"\n\n\
         [state]\ndir = {:?}\n\n{jobs}\n",
        env.repo, env.state
    ));
    env.extra_env.push(("TZ".into(), "UTC".into()));
    env.ok(&["init"]);
    env
}

/// `cairn run ARGS` at the injected time `now`: (exit code, stdout, stderr).
fn run_at(env: &Env, now: &str, args: &[&str]) -> (i32, String, String) {
    let out = env.cmd(args).env("CAIRN_NOW", now).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The jobs `cairn --json run` ran at `now`, by name.
fn ran_at(env: &Env, now: &str) -> Vec<String> {
    let (code, out, err) = run_at(env, now, &["--json", "run"]);
    assert_eq!(code, 0, "run at {now}: {out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut jobs: Vec<String> =
        v["runs"].as_array().unwrap().iter().map(|r| r["job"].as_str().unwrap().to_string()).collect();
    jobs.sort();
    jobs
}

/// Snapshots by job, oldest first: (id, parent, partial).
fn snapshots_by_job(env: &Env) -> BTreeMap<String, Vec<(String, Option<String>, bool)>> {
    let mut out: BTreeMap<String, Vec<(String, Option<String>, bool)>> = BTreeMap::new();
    let snaps = env.json(&["snapshots"]);
    for s in snaps.as_array().unwrap() {
        out.entry(s["job"].as_str().unwrap().to_string()).or_default().push((
            s["id"].as_str().unwrap().to_string(),
            s["parent"].as_str().map(str::to_string),
            s["partial"].as_bool().unwrap(),
        ));
    }
    out
}

#[test]
fn two_jobs_over_overlapping_sources_keep_separate_parents_and_partials() {
    let env = runner_env("");
    let docs = env.src.join("docs");
    write_file(&docs.join("a.txt"), b"in both jobs", 0o644, 1_600_000_000);
    write_file(&env.src.join("b.txt"), b"only in the whole", 0o644, 1_600_000_000);
    env.write_config(&format!(
        "{}\n[jobs.whole]\nsources = [{:?}]\n\n[jobs.docs]\nsources = [{docs:?}]\n",
        std::fs::read_to_string(&env.config).unwrap(),
        env.src
    ));

    env.ok(&["run", "whole", "docs"]);
    env.ok(&["run", "docs", "whole"]);
    let by_job = snapshots_by_job(&env);
    assert_eq!(by_job.len(), 2, "{by_job:?}");
    for (job, snaps) in &by_job {
        assert_eq!(snaps.len(), 2, "{job}: {snaps:?}");
        assert_eq!(
            snaps[0].1, None,
            "{job}: the first snapshot of a job has no parent, whatever the other job did"
        );
        assert_eq!(
            snaps[1].1.as_deref(),
            Some(snaps[0].0.as_str()),
            "{job}: parent is the job's own last snapshot"
        );
    }

    // A partial snapshot an interrupted run of `whole` left (same host, sources and job).
    let snaps = env.json(&["snapshots"]);
    let whole = snaps.as_array().unwrap().iter().rev().find(|s| s["job"] == "whole").unwrap().clone();
    let mut forge = Forge::unlock(&env.repo, PASSWORD);
    let partial = forge.snapshot_with(Id::from_hex(whole["tree"].as_str().unwrap()).unwrap(), |s| {
        s.hostname = whole["hostname"].as_str().unwrap().to_string();
        s.username = whole["username"].as_str().unwrap().to_string();
        s.sources = vec![serde_bytes::ByteBuf::from(env.src.to_str().unwrap().as_bytes().to_vec())];
        s.job = "whole".into();
        s.partial = true;
        s.time_ns = 1_900_000_000_000_000_000;
    });
    // `docs` completing leaves `whole`'s partial snapshot alone...
    env.ok(&["run", "docs"]);
    let by_job = snapshots_by_job(&env);
    assert!(by_job["whole"].iter().any(|(id, _, p)| *id == partial && *p), "{by_job:?}");
    // ...and the next complete run of `whole` takes it as its parent, then deletes it.
    env.ok(&["run", "whole"]);
    let by_job = snapshots_by_job(&env);
    assert!(!by_job["whole"].iter().any(|(id, _, _)| *id == partial), "superseded: {by_job:?}");
    assert_eq!(by_job["whole"].last().unwrap().1.as_deref(), Some(partial.as_str()), "{by_job:?}");
    assert!(!env.repo.join(format!("snapshots/{partial}")).exists());
    assert_eq!(by_job["docs"].len(), 3, "{by_job:?}");

    // `latest:JOB` is per job: the newest `docs` snapshot restores only docs/.
    let target = env.path("restore");
    env.ok(&["restore", "latest:docs", "--target", target.to_str().unwrap()]);
    let restored = env.restored_src(&target);
    assert_eq!(std::fs::read(restored.join("docs/a.txt")).unwrap(), b"in both jobs");
    assert!(!restored.join("b.txt").exists(), "latest:docs is the docs job's snapshot");
}

#[test]
fn run_with_no_names_runs_only_due_jobs() {
    let env = runner_env("");
    write_file(&env.src.join("f"), b"x", 0o644, 1_600_000_000);
    let src = format!("{:?}", env.src);
    env.write_config(&format!(
        "{}\n[jobs.hourly]\nsources = [{src}]\nschedule = \"hourly\"\n\n\
         [jobs.nightly]\nsources = [{src}]\nschedule = \"daily 02:30\"\n\n\
         [jobs.weekly]\nsources = [{src}]\nschedule = \"weekly sun 04:00\"\n\n\
         [jobs.manual]\nsources = [{src}]\n",
        std::fs::read_to_string(&env.config).unwrap()
    ));
    // 2026-01-01 is a Thursday. Nothing ran yet: every scheduled job is due, `manual` never.
    assert_eq!(ran_at(&env, "2026-01-01T10:00:00Z"), ["hourly", "nightly", "weekly"]);
    // Half an hour later no slot has passed.
    assert_eq!(ran_at(&env, "2026-01-01T10:30:00Z"), Vec::<String>::new());
    let (code, out, _) = run_at(&env, "2026-01-01T10:30:00Z", &["run"]);
    assert_eq!((code, out.trim()), (0, "no job is due (see `cairn schedule show`)"));
    // 11:00 is the hourly job's slot.
    assert_eq!(ran_at(&env, "2026-01-01T11:00:00Z"), ["hourly"]);
    // The machine was off overnight: the missed 02:30 slot runs now, once.
    assert_eq!(ran_at(&env, "2026-01-02T09:15:00Z"), ["hourly", "nightly"]);
    assert_eq!(ran_at(&env, "2026-01-02T09:20:00Z"), Vec::<String>::new());
    // Sunday 04:00 passed.
    assert_eq!(ran_at(&env, "2026-01-04T04:00:00Z"), ["hourly", "nightly", "weekly"]);
    // Named jobs run whatever their schedule says.
    assert_eq!(run_at(&env, "2026-01-04T04:01:00Z", &["run", "manual"]).0, 0);

    let show = run_at(&env, "2026-01-04T04:02:00Z", &["--json", "schedule", "show", "--count", "2"]);
    let show: serde_json::Value = serde_json::from_str(&show.1).unwrap();
    let nightly = show.as_array().unwrap().iter().find(|j| j["job"] == "nightly").unwrap();
    assert_eq!(
        nightly["next"],
        serde_json::json!(["2026-01-05T02:30:00Z", "2026-01-06T02:30:00Z"]),
        "{show}"
    );
    let manual = show.as_array().unwrap().iter().find(|j| j["job"] == "manual").unwrap();
    assert_eq!(manual["schedule"], serde_json::Value::Null);
}

/// A hook script that writes its CAIRN_* variables, sorted, to the file given as its
/// argument.
fn env_dumper(env: &Env) -> String {
    let path = env.path("dump-env.sh");
    std::fs::write(&path, "#!/bin/sh\nenv | grep '^CAIRN_' | grep -v '^CAIRN_TEST\\|^CAIRN_CACHE\\|^CAIRN_RETRY\\|^CAIRN_NOW' | sort > \"$1\"\necho hook output for the log\n").unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_string()
}

fn vars(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

#[test]
fn hooks_see_their_variables_and_a_failing_before_hook_skips_its_job() {
    let env = runner_env("");
    write_file(&env.src.join("f"), b"x", 0o644, 1_600_000_000);
    let dump = env_dumper(&env);
    let out = |n: &str| env.path(n).to_str().unwrap().to_string();
    env.write_config(&format!(
        "{}\n[jobs.good]\nsources = [{:?}]\n\
         hooks.before = [{{ command = [{dump:?}, {:?}] }}, {{ command = [\"printf\", \"%s\", \"$CAIRN_JOB\"] }}]\n\
         hooks.after = [{{ command = [{dump:?}, {:?}] }}]\n\
         hooks.on_failure = [{{ command = [{dump:?}, {:?}] }}]\n\n\
         [jobs.bad]\nsources = [{:?}]\n\
         hooks.before = [{{ command = \"echo about to fail; exit 7\", shell = true }}]\n\
         hooks.after = [{{ command = [{dump:?}, {:?}] }}]\n\
         hooks.on_failure = [{{ command = [{dump:?}, {:?}] }}]\n",
        std::fs::read_to_string(&env.config).unwrap(),
        env.src,
        out("good-before"),
        out("good-after"),
        out("good-failure"),
        env.src,
        out("bad-after"),
        out("bad-failure"),
    ));
    let (code, stdout, stderr) = run_at(&env, "2026-01-01T10:00:00Z", &["run", "good", "bad"]);
    assert_eq!(code, 1, "a job was skipped: exit 1\n{stdout}\n{stderr}");
    assert!(stdout.contains("job bad: skipped: before hook sh -c echo about to fail; exit 7 failed (exit status: 7); the job was skipped"), "{stdout}");
    assert!(stderr.contains("cairn: 1 of 2 job(s) failed or were skipped: bad"), "{stderr}");

    let snaps = snapshots_by_job(&env);
    assert_eq!(snaps.keys().collect::<Vec<_>>(), ["good"], "the skipped job saved nothing: {snaps:?}");
    let good_snapshot = snaps["good"][0].0.clone();

    let before = vars(&env.path("good-before"));
    assert_eq!(before["CAIRN_JOB"], "good");
    assert_eq!(before["CAIRN_STATUS"], "starting");
    assert_eq!(before["CAIRN_SNAPSHOT"], "");
    let after = vars(&env.path("good-after"));
    assert_eq!(after["CAIRN_JOB"], "good");
    assert_eq!(after["CAIRN_STATUS"], "success");
    assert_eq!(after["CAIRN_SNAPSHOT"], good_snapshot);
    assert_eq!(after["CAIRN_ERROR"], "");
    assert!(!env.path("good-failure").exists(), "on_failure runs only on failure");

    assert!(!env.path("bad-after").exists(), "a skipped job runs no after hook");
    let failure = vars(&env.path("bad-failure"));
    assert_eq!(failure["CAIRN_JOB"], "bad");
    assert_eq!(failure["CAIRN_STATUS"], "skipped");
    assert!(failure["CAIRN_ERROR"].contains("failed (exit status: 7); the job was skipped"), "{failure:?}");

    // Hook output is in the run log; no shell ran the printf hook, so `$CAIRN_JOB` is literal.
    let log = std::fs::read_to_string(env.state.join("logs/good.log")).unwrap();
    assert!(log.contains("hook output for the log"), "{log}");
    assert!(log.contains("$CAIRN_JOB"), "{log}");
    let bad_log = std::fs::read_to_string(env.state.join("logs/bad.log")).unwrap();
    assert!(bad_log.contains("about to fail"), "{bad_log}");

    // Both runs are recorded: status shows the failure and its error.
    let status = run_at(&env, "2026-01-01T10:05:00Z", &["--json", "status"]);
    let status: serde_json::Value = serde_json::from_str(&status.1).unwrap();
    let job = |n: &str| status["jobs"].as_array().unwrap().iter().find(|j| j["job"] == n).unwrap().clone();
    assert_eq!(job("good")["last_success"]["snapshot"], good_snapshot.as_str());
    assert_eq!(job("bad")["last_failure"]["outcome"], "skipped");
    assert_eq!(job("bad")["last_success"], serde_json::Value::Null);

    // With -v the run log, hook output included, is on stderr too.
    let (code, _, stderr) = run_at(&env, "2026-01-01T10:06:00Z", &["-v", "run", "good"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("[good] hook output for the log"), "{stderr}");
    // `cairn backup` of a config with only jobs says how to run them.
    let (code, err) = env.fails(&["backup"]);
    assert_eq!(code, 1);
    assert!(err.contains("the jobs of this config run with `cairn run JOB` (jobs: bad, good)"), "{err}");
}

#[test]
fn a_hanging_hook_is_stopped_at_its_timeout() {
    let env = runner_env("");
    write_file(&env.src.join("f"), b"x", 0o644, 1_600_000_000);
    let pidfile = env.path("child.pid");
    env.write_config(&format!(
        "{}\n[jobs.hangs]\nsources = [{:?}]\n\
         hooks.before = [{{ command = \"sleep 300 & echo $! > {}; wait\", shell = true, timeout = \"1s\" }}]\n",
        std::fs::read_to_string(&env.config).unwrap(),
        env.src,
        pidfile.display()
    ));
    let (code, stdout, _) = run_at(&env, "2026-01-01T10:00:00Z", &["run", "hangs"]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("did not finish within its timeout of 1s and was stopped (its process group was killed); the job was skipped"),
        "{stdout}"
    );
    // The hook's child (in its process group) is gone too, not left sleeping.
    let pid: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
    let alive = state.as_deref().is_some_and(|s| {
        let after_name = &s[s.rfind(')').unwrap() + 2..];
        !after_name.starts_with('Z') && !after_name.starts_with('X')
    });
    assert!(!alive, "the hook's child {pid} still runs: {state:?}");
    assert!(snapshots_by_job(&env).is_empty());
}

#[test]
fn status_max_age_exit_codes() {
    let env = runner_env("");
    write_file(&env.src.join("f"), b"x", 0o644, 1_600_000_000);
    env.write_config(&format!(
        "{}\n[jobs.home]\nsources = [{:?}]\nschedule = \"daily 02:30\"\n\n[jobs.never]\nsources = [{:?}]\n",
        std::fs::read_to_string(&env.config).unwrap(),
        env.src,
        env.src
    ));
    assert_eq!(run_at(&env, "2026-01-01T02:30:00Z", &["run", "home"]).0, 0);
    let status = |now: &str, args: &[&str]| run_at(&env, now, &[&["status"], args].concat());

    // Only `home` is checked here... `never` has no success at all: exit 3 naming it.
    let (code, _, err) = status("2026-01-01T03:00:00Z", &["--max-age", "26h"]);
    assert_eq!(code, 3, "{err}");
    assert_eq!(err.trim(), "cairn: no successful backup within 1d 2h for job(s): never");
    // Without the job that never ran: within 26h is fine, 27h later is stale.
    let config = std::fs::read_to_string(&env.config).unwrap();
    env.write_config(&config[..config.find("[jobs.never]").unwrap()]);
    let (code, out, err) = status("2026-01-02T04:00:00Z", &["--max-age", "26h"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("home (daily 02:30)"), "{out}");
    assert!(out.contains("last success: 2026-01-01 02:30:"), "{out}");
    let (code, _, err) = status("2026-01-02T05:31:00Z", &["--max-age", "26h"]);
    assert_eq!((code, err.trim()), (3, "cairn: no successful backup within 1d 2h for job(s): home"));
    // Without --max-age status only reports.
    assert_eq!(status("2026-01-09T00:00:00Z", &[]).0, 0);
    let (code, _, err) = status("2026-01-02T04:00:00Z", &["--max-age", "soon"]);
    assert_eq!(code, 1);
    assert!(err.contains("--max-age"), "{err}");
}

/// `name{labels} value` lines of a Prometheus textfile, after checking each family has its
/// HELP and TYPE lines first.
fn parse_textfile(text: &str) -> BTreeMap<String, f64> {
    let mut typed = Vec::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert_eq!(kind, "gauge", "{line}");
            typed.push(name.to_string());
        } else if line.starts_with("# HELP ") {
        } else {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line:?}"));
            let name = &series[..series.find('{').unwrap()];
            assert!(typed.iter().any(|t| t == name), "{name} has no TYPE line before it");
            samples.insert(series.to_string(), value.parse::<f64>().unwrap_or_else(|_| panic!("{line:?}")));
        }
    }
    samples
}

#[test]
fn the_textfile_is_written_atomically_and_parses_back() {
    let env = runner_env("");
    write_file(&env.src.join("f"), &vec![7u8; 5000], 0o644, 1_600_000_000);
    let metrics_dir = env.path("metrics");
    std::fs::create_dir_all(&metrics_dir).unwrap();
    let textfile = metrics_dir.join("cairn.prom");
    env.write_config(&format!(
        "{}\n[monitoring]\ntextfile = {textfile:?}\n\n[jobs.ok]\nsources = [{:?}]\n\n\
         [jobs.broken]\nsources = [{:?}]\nhooks.before = [{{ command = [\"false\"] }}]\n",
        std::fs::read_to_string(&env.config).unwrap(),
        env.src,
        env.src
    ));
    let (code, _, _) = run_at(&env, "2026-01-01T10:00:00Z", &["run", "ok", "broken"]);
    assert_eq!(code, 1);
    let m = parse_textfile(&std::fs::read_to_string(&textfile).unwrap());
    let start = 1_767_261_600.0; // 2026-01-01T10:00:00Z
    let success = m["cairn_job_last_success_timestamp_seconds{job=\"ok\"}"];
    assert!((start..start + 600.0).contains(&success), "{success}");
    assert_eq!(m["cairn_job_last_run_outcome{job=\"ok\",outcome=\"success\"}"], 1.0);
    assert_eq!(m["cairn_job_last_run_outcome{job=\"ok\",outcome=\"failure\"}"], 0.0);
    assert_eq!(m["cairn_job_last_run_bytes_read{job=\"ok\"}"], 5000.0);
    assert!(m["cairn_job_last_run_bytes_added{job=\"ok\"}"] > 0.0);
    assert!(m["cairn_job_last_run_duration_seconds{job=\"ok\"}"] >= 0.0);
    assert_eq!(m["cairn_job_last_run_outcome{job=\"broken\",outcome=\"skipped\"}"], 1.0);
    assert!(!m.contains_key("cairn_job_last_success_timestamp_seconds{job=\"broken\"}"), "{m:?}");
    // Only the file itself: the temporary file it was written as was renamed over it.
    let names: Vec<_> = std::fs::read_dir(&metrics_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, [std::ffi::OsString::from("cairn.prom")]);

    // A textfile that cannot be written does not undo the jobs' success: exit 3, said.
    let missing = env.path("no-such-folder/cairn.prom");
    env.write_config(
        &std::fs::read_to_string(&env.config)
            .unwrap()
            .replace(&format!("textfile = {textfile:?}"), &format!("textfile = {missing:?}")),
    );
    let (code, stdout, stderr) = run_at(&env, "2026-01-01T11:00:00Z", &["run", "ok"]);
    assert_eq!(code, 3, "{stdout}{stderr}");
    assert!(stdout.contains("job ok: success"), "{stdout}");
    assert!(
        stderr.contains(&format!("cairn: cannot write the monitoring textfile {}", missing.display())),
        "{stderr}"
    );
}

#[test]
fn generated_systemd_units_verify() {
    let analyze = std::process::Command::new("systemd-analyze").arg("--version").output();
    assert!(
        analyze.is_ok_and(|o| o.status.success()),
        "systemd-analyze is needed (Debian package systemd; .ci/run installs it)"
    );
    let env = runner_env("");
    env.write_config(&format!(
        "{}\n[jobs.home]\nsources = [{:?}]\nschedule = \"daily 02:30\"\n\n\
         [jobs.work]\nsources = [{:?}]\nschedule = \"*/15 8-18 * * mon-fri\"\n\n[jobs.manual]\nsources = [{:?}]\n",
        std::fs::read_to_string(&env.config).unwrap(),
        env.src,
        env.src,
        env.src
    ));
    let units = env.path("units");
    env.ok(&["schedule", "install", "--dir", units.to_str().unwrap()]);
    let mut names: Vec<String> = std::fs::read_dir(&units)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["cairn-home.service", "cairn-home.timer", "cairn-work.service", "cairn-work.timer"]);
    let timer = std::fs::read_to_string(units.join("cairn-home.timer")).unwrap();
    assert!(timer.contains("\nOnCalendar=*-*-* 02:30:00\n"), "{timer}");
    assert!(timer.contains("\nPersistent=true\n"), "{timer}");
    let work = std::fs::read_to_string(units.join("cairn-work.timer")).unwrap();
    assert!(work.contains("\nOnCalendar=Mon..Fri *-*-* 08..18:00/15:00\n"), "{work}");
    let service = std::fs::read_to_string(units.join("cairn-home.service")).unwrap();
    assert!(
        service.contains(&format!(
            "\nExecStart={} --config {} run home\n",
            env!("CARGO_BIN_EXE_cairn"),
            env.config.display()
        )),
        "{service}"
    );

    let paths: Vec<_> = names.iter().map(|n| units.join(n)).collect();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Messages about the host's own units (a container has no running systemd) are not ours.
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("cairn-")).collect();
    assert!(out.status.success() && ours.is_empty(), "systemd-analyze verify: {:?}\n{stderr}", out.status);
    for cal in ["*-*-* 02:30:00", "Mon..Fri *-*-* 08..18:00/15:00"] {
        let ok = std::process::Command::new("systemd-analyze").args(["calendar", cal]).output().unwrap();
        assert!(ok.status.success(), "{cal}: {}", String::from_utf8_lossy(&ok.stderr));
    }

    // --print shows the same units, --crontab the cron lines; neither writes anything.
    let printed = env.ok(&["schedule", "install", "--print"]);
    assert!(printed.contains("# cairn-home.timer\n") && printed.contains("Persistent=true"), "{printed}");
    let cron = env.ok(&["schedule", "install", "--crontab"]);
    assert!(
        cron.contains(&format!(
            "30 2 * * * {} --config {} run home\n",
            env!("CARGO_BIN_EXE_cairn"),
            env.config.display()
        )),
        "{cron}"
    );
    assert!(cron.contains("*/15 8-18 * * mon-fri "), "{cron}");
    assert!(!cron.contains("manual"), "{cron}");

    // A unit file cairn did not write is never replaced; remove deletes only cairn's own.
    std::fs::write(units.join("other.timer"), "[Timer]\n").unwrap();
    env.ok(&["schedule", "remove", "--dir", units.to_str().unwrap()]);
    let left: Vec<_> = std::fs::read_dir(&units).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, [std::ffi::OsString::from("other.timer")]);
    std::fs::write(units.join("cairn-home.timer"), "[Timer]\nmine\n").unwrap();
    let (code, err) = env.fails(&["schedule", "install", "--dir", units.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("cairn-home.timer exists and was not written by cairn"), "{err}");
}

#[test]
fn bad_job_configs_are_refused_with_the_job_named() {
    let env = runner_env("");
    let base = std::fs::read_to_string(&env.config).unwrap();
    for (jobs, expected) in [
        (
            "[jobs.x]\nsources = [\"/tmp\"]\nschedule = \"daily 25:00\"\n",
            "[jobs.x] schedule: \"daily 25:00\": \"25:00\" is not a time like 02:30",
        ),
        (
            "[jobs.x]\nsources = [\"/tmp\"]\nrepository = \"nas\"\n",
            "[jobs.x] repository \"nas\" is not a [repositories.nas] table",
        ),
        (
            "[jobs.x]\nsources = [\"/tmp\"]\nhooks.before = [{ command = \"pg_dump x\" }]\n",
            "give a list [\"program\", \"arg\", ...], or set shell = true",
        ),
        ("[jobs.\"a b\"]\nsources = [\"/tmp\"]\n", "job name \"a b\" must be 1 to 64 letters"),
        ("[jobs.x]\nsources = []\n", "[jobs.x] has no sources"),
        (
            "[jobs.x]\nsources = [\"/tmp\"]\nverify = { read_data_subset = \"200%\" }\n",
            "[jobs.x] verify.read_data_subset: 200%",
        ),
    ] {
        env.write_config(&format!("{base}\n{jobs}"));
        let (code, err) = env.fails(&["run"]);
        assert_eq!(code, 1, "{jobs}");
        assert!(err.contains(expected), "{jobs}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn the_readme_example_config_loads_and_its_units_print() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section =
        &readme[readme.find("## Jobs, schedules and monitoring").expect("the README's runner section")..];
    let start = section.find("```toml\n").unwrap() + "```toml\n".len();
    let example = &section[start..start + section[start..].find("```").unwrap()];
    let env = Env::new();
    env.write_config(example);
    let mut show = env.cmd(&["--json", "schedule", "show"]);
    show.env("TZ", "UTC").env("CAIRN_NOW", "2026-01-01T00:00:00Z");
    let out = show.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = jobs.as_array().unwrap().iter().map(|j| j["job"].as_str().unwrap()).collect();
    assert_eq!(names, ["home", "photos", "postgres"]);
    assert_eq!(jobs[0]["next"][0], "2026-01-01T02:30:00Z");
    let units = env.ok(&["schedule", "install", "--print"]);
    for unit in ["cairn-home.timer", "cairn-postgres.timer", "cairn-photos.timer"] {
        assert!(units.contains(&format!("# {unit}\n")), "{units}");
    }
    assert!(units.contains("OnCalendar=Sun *-*-* 04:00:00"), "{units}");
}

#[test]
fn retention_is_per_job_and_verify_runs_after_the_backup() {
    let env = runner_env("");
    write_file(&env.src.join("f"), b"x", 0o644, 1_600_000_000);
    env.write_config(&format!(
        "{}\n[jobs.kept]\nsources = [{:?}]\n\n\
         [jobs.trimmed]\nsources = [{:?}]\nretention = {{ keep_last = 1 }}\nverify = {{ read_data = true }}\n",
        std::fs::read_to_string(&env.config).unwrap(),
        env.src,
        env.src
    ));
    for _ in 0..3 {
        env.ok(&["run", "kept", "trimmed"]);
    }
    let by_job = snapshots_by_job(&env);
    assert_eq!(by_job["kept"].len(), 3, "another job's retention never touches this one: {by_job:?}");
    assert_eq!(by_job["trimmed"].len(), 1, "keep_last = 1: {by_job:?}");
    let log = std::fs::read_to_string(env.state.join("logs/trimmed.log")).unwrap();
    assert!(log.contains("forget: removed 1 snapshot(s) of this job"), "{log}");
    assert!(log.contains("verify: whole ("), "{log}");
}

/// `prune_every`: the job prunes when its last prune is that old (or it never pruned), alone
/// on the repository, and frees what its retention forgot; verify then finds it whole.
#[test]
fn prune_every_prunes_when_due() {
    let env = runner_env("");
    env.write_config(&format!(
        "{}\n[jobs.trimmed]\nsources = [{:?}]\nretention = {{ keep_last = 1 }}\nprune_every = \"7d\"\n\
         verify = {{ read_data = true }}\n",
        std::fs::read_to_string(&env.config).unwrap(),
        env.src
    ));
    let data_bytes = || -> u64 {
        let mut total = 0;
        for dir in std::fs::read_dir(env.repo.join("data")).unwrap() {
            for f in std::fs::read_dir(dir.unwrap().path()).unwrap() {
                total += f.unwrap().metadata().unwrap().len();
            }
        }
        total
    };
    // Day 1: never pruned, so due; day 2: pruned a day ago; day 9: a week has passed.
    let mut stored = Vec::new();
    for day in [1u64, 2, 9] {
        write_file(&env.src.join("f"), &Rng::new(day).bytes(3 << 20), 0o644, 1_600_000_000 + day as i64);
        let (code, _, err) = run_at(&env, &format!("2026-01-{day:02}T00:00:00Z"), &["run", "trimmed"]);
        assert_eq!(code, 0, "day {day}: {err}");
        stored.push(data_bytes());
    }
    let log = std::fs::read_to_string(env.state.join("logs/trimmed.log")).unwrap();
    assert_eq!(log.matches("prune: starting").count(), 2, "{log}");
    assert!(log.contains("verify: whole ("), "{log}");
    // Day 2 kept its forgotten snapshot's data (no prune); day 9's prune freed both days'.
    assert!(stored[1] > 6 << 20, "{stored:?}");
    assert!(stored[2] < 4 << 20, "only the kept snapshot's data remains: {stored:?}");
}

#[test]
fn jobs_on_two_repositories_run_in_parallel() {
    let env = runner_env("");
    write_file(&env.src.join("f"), b"x", 0o644, 1_600_000_000);
    let second = env.path("second-repo");
    let base = std::fs::read_to_string(&env.config).unwrap();
    env.write_config(&format!(
        "{base}\n[repositories.second]\nbackend = \"fs\"\noptions = {{ path = {second:?} }}\n\
         password_env = \"CAIRN_TEST_PASSWORD\"\n\n\
         [jobs.one]\nsources = [{:?}]\n\n[jobs.two]\nsources = [{:?}]\nrepository = \"second\"\n",
        env.src, env.src
    ));
    // The second repository is initialised through a config whose [repository] is it.
    let init = env.path("second.toml");
    std::fs::write(
        &init,
        format!(
            "[repository]\nbackend = \"fs\"\noptions = {{ path = {second:?} }}\npassword_env = \"CAIRN_TEST_PASSWORD\"\n\n\
             [state]\ndir = {:?}\n",
            env.state
        ),
    )
    .unwrap();
    let out = env.cmd(&["init"]).arg("--config").arg(&init).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = env.json(&["run", "--parallel", "2", "one", "two"]);
    let outcomes: BTreeMap<&str, &str> = out["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["job"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(outcomes, BTreeMap::from([("one", "success"), ("two", "success")]), "{out}");
    assert_eq!(std::fs::read_dir(env.repo.join("snapshots")).unwrap().count(), 1);
    assert_eq!(std::fs::read_dir(second.join("snapshots")).unwrap().count(), 1);
    // Each repository's journal holds its own job's run; status sees both.
    let status = env.json(&["status"]);
    for job in status["jobs"].as_array().unwrap() {
        assert_eq!(job["last_success"]["outcome"], "success", "{status}");
    }
}

#[test]
fn a_second_run_on_the_same_repository_waits_its_turn() {
    use std::os::fd::AsRawFd;
    let env = runner_env("");
    write_file(&env.src.join("f"), b"x", 0o644, 1_600_000_000);
    env.write_config(&format!(
        "{}\n[jobs.home]\nsources = [{:?}]\n",
        std::fs::read_to_string(&env.config).unwrap(),
        env.src
    ));
    // Another `cairn run` on this repository holds its turn.
    std::fs::create_dir_all(env.state.join("runner")).unwrap();
    let turn = std::fs::File::create(env.state.join("runner/repository.lock")).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(turn.as_raw_fd(), libc::LOCK_EX) }, 0);
    let stderr_path = env.path("run.stderr");
    let mut child = env
        .cmd(&["-v", "run", "home"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    // It says it waits (and has saved nothing yet)...
    let mut waited = 0;
    while !std::fs::read_to_string(&stderr_path)
        .unwrap()
        .contains("waiting for another `cairn run` on the same repository")
    {
        assert!(child.try_wait().unwrap().is_none(), "{}", std::fs::read_to_string(&stderr_path).unwrap());
        assert!(waited < 6000, "no waiting note: {}", std::fs::read_to_string(&stderr_path).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(10));
        waited += 1;
    }
    assert!(
        !env.repo.join("snapshots").exists()
            || std::fs::read_dir(env.repo.join("snapshots")).unwrap().count() == 0
    );
    // ...and runs once the other one is done.
    drop(turn);
    assert!(child.wait().unwrap().success(), "{}", std::fs::read_to_string(&stderr_path).unwrap());
    assert_eq!(snapshots_by_job(&env)["home"].len(), 1);
}

#[test]
fn cairn_backup_is_a_run_of_the_job_default() {
    let env = Env::new();
    write_file(&env.src.join("f"), b"x", 0o644, 1_600_000_000);
    env.ok(&["init"]);
    let mut backup = env.cmd(&["backup"]);
    backup.env("CAIRN_NOW", "2026-01-01T10:00:00Z");
    assert!(backup.output().unwrap().status.success());
    let status = |now: &str| {
        let out = env.cmd(&["status", "--max-age", "1h"]).env("CAIRN_NOW", now).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, out) = status("2026-01-01T10:30:00Z");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("default\n  last success: 2026-01-01 10:00:0"), "{out}");
    assert_eq!(status("2026-01-01T11:30:00Z").0, Some(3));
}
