//! Hooks: the commands a job runs before and after its backup, and on failure. No shell is
//! involved unless the hook asks for one (`shell = true`); each runs in its own process group
//! with a deadline, and the whole group is stopped when it passes (a hung `pg_dump` and the
//! children it started). Output goes to the job's run log.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::jobs::Hook;

/// How long a hook stopped at its deadline gets to end after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

/// The run log of a job: `<state>/logs/<job>.log`, appended to by every run, with the
/// hooks' output in it. With `-v` what is written is echoed to stderr.
pub struct RunLog {
    pub path: PathBuf,
    file: Mutex<std::fs::File>,
    echo: bool,
    job: String,
}

impl RunLog {
    pub fn open(state_dir: &Path, job: &str, echo: bool) -> anyhow::Result<RunLog> {
        use anyhow::Context;
        let dir = state_dir.join("logs");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the run log folder {}", dir.display()))?;
        let path = dir.join(format!("{job}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open the run log {}", path.display()))?;
        Ok(RunLog { path, file: Mutex::new(file), echo, job: job.to_string() })
    }

    /// One line, stamped with the time.
    pub fn line(&self, text: &str) {
        let stamped = format!("{} {text}\n", jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ"));
        // A log that cannot be written must not fail the backup it describes.
        let _ = self.file.lock().unwrap().write_all(stamped.as_bytes());
        if self.echo {
            eprint!("[{}] {stamped}", self.job);
        }
    }

    /// Runs one hook with `env` added to its environment; its output goes to the log. The
    /// error says which hook, and how it failed.
    pub fn run_hook(&self, what: &str, hook: &Hook, env: &[(&str, String)]) -> Result<(), String> {
        let name = format!("{what} hook {}", crate::untrusted::escape(&hook.argv.join(" ")));
        self.line(&format!("{name}: starting"));
        let (out, err, start) = {
            let file = self.file.lock().unwrap();
            let start = (&*file).seek(SeekFrom::End(0)).unwrap_or(0);
            let out = file.try_clone().map_err(|e| format!("{name}: cannot pass it the run log: {e}"))?;
            let err = file.try_clone().map_err(|e| format!("{name}: cannot pass it the run log: {e}"))?;
            (out, err, start)
        };
        let mut cmd = Command::new(&hook.argv[0]);
        cmd.args(&hook.argv[1..]).stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let result = match cmd.spawn() {
            Err(e) => Err(format!("{name} cannot start: {e}")),
            Ok(child) => wait_with_deadline(child, hook.timeout).map_err(|e| format!("{name} {e}")),
        };
        if self.echo {
            self.echo_since(start);
        }
        match &result {
            Ok(()) => self.line(&format!("{name}: done")),
            Err(e) => self.line(e),
        }
        result
    }

    /// Echoes to stderr what the log gained since `start` (a hook's output).
    fn echo_since(&self, start: u64) {
        let Ok(mut f) = std::fs::File::open(&self.path) else { return };
        if f.seek(SeekFrom::Start(start)).is_err() {
            return;
        }
        let mut text = Vec::new();
        let _ = f.read_to_end(&mut text);
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            eprintln!("[{}] {}", self.job, crate::untrusted::escape_bytes(line));
        }
    }
}

/// Waits for `child` until `timeout`; past it the child's process group gets SIGTERM, then
/// after [`GRACE`] SIGKILL. Polls: a hook is rare and short-lived, and std has no timed wait.
fn wait_with_deadline(mut child: std::process::Child, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("failed ({status})")),
            Ok(None) if Instant::now() >= deadline => break,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("cannot be waited for: {e}")),
        }
    }
    let group = child.id() as libc::pid_t;
    // SAFETY: kill has no memory effects; a negative pid names the hook's own process group
    // (it was started with process_group(0), so its group id is its pid).
    unsafe { libc::kill(-group, libc::SIGTERM) };
    let grace_end = Instant::now() + GRACE;
    while Instant::now() < grace_end {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Whatever of the group is left (the hook, or children that ignored SIGTERM).
    // SAFETY: as above.
    unsafe { libc::kill(-group, libc::SIGKILL) };
    let _ = child.wait();
    Err(format!(
        "did not finish within its timeout of {}s and was stopped (its process group was killed)",
        timeout.as_secs_f64()
    ))
}
