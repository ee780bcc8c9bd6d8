//! `cairn schedule install`: a systemd service and timer per scheduled job, calling
//! `cairn --config FILE run JOB` (timers are `Persistent=true`: a slot missed while the
//! machine was off runs at boot), or crontab lines for systems without systemd.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::jobs::{self, Job};
use crate::config::Config;

/// The first line of every unit cairn writes: `schedule remove` deletes only files with it.
pub const MARKER: &str = "# Written by `cairn schedule install`; `cairn schedule remove` deletes it.";

/// Where units go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `~/.config/systemd/user`, `systemctl --user`.
    User,
    /// `/etc/systemd/system`, `systemctl`.
    System,
}

impl Scope {
    pub fn unit_dir(self) -> Result<PathBuf> {
        match self {
            Scope::System => Ok(PathBuf::from("/etc/systemd/system")),
            Scope::User => {
                if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
                    return Ok(PathBuf::from(d).join("systemd/user"));
                }
                let home = std::env::var_os("HOME")
                    .filter(|h| !h.is_empty())
                    .context("neither $XDG_CONFIG_HOME nor $HOME is set; give --dir")?;
                Ok(PathBuf::from(home).join(".config/systemd/user"))
            }
        }
    }

    /// `systemctl` with its scope flag.
    pub fn systemctl(self) -> Vec<&'static str> {
        match self {
            Scope::User => vec!["systemctl", "--user"],
            Scope::System => vec!["systemctl"],
        }
    }
}

/// One file to write: its name and content.
pub struct Unit {
    pub name: String,
    pub text: String,
}

/// The scheduled jobs of the config (those without a schedule run only when named).
pub fn scheduled(config: &Config) -> Result<Vec<Job>> {
    let mut out = Vec::new();
    for name in jobs::names(config) {
        let job = jobs::job(config, &name)?;
        if job.schedule.is_some() {
            out.push(job);
        }
    }
    if out.is_empty() {
        bail!(
            "no job in {} has a schedule: add schedule = \"daily 02:30\" to a [jobs.NAME]",
            config.path.display()
        );
    }
    Ok(out)
}

/// The service and timer of every scheduled job.
pub fn systemd_units(config: &Config, cairn: &Path) -> Result<Vec<Unit>> {
    let mut units = Vec::new();
    for job in scheduled(config)? {
        let schedule = job.schedule.as_ref().expect("scheduled jobs have a schedule");
        let calendar = schedule.on_calendar()?;
        let exec = [
            cairn.to_string_lossy().into_owned(),
            "--config".into(),
            config.path.to_string_lossy().into_owned(),
        ]
        .iter()
        .map(|a| systemd_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
        let name = &job.name;
        units.push(Unit {
            name: format!("cairn-{name}.service"),
            text: format!(
                "{MARKER}\n[Unit]\nDescription=cairn backup job {name}\nWants=network-online.target\n\
                 After=network-online.target\n\n[Service]\nType=oneshot\nExecStart={exec} run {name}\n\
                 Nice=10\nIOSchedulingClass=idle\n"
            ),
        });
        units.push(Unit {
            name: format!("cairn-{name}.timer"),
            text: format!(
                "{MARKER}\n[Unit]\nDescription=cairn backup job {name} ({})\n\n[Timer]\nOnCalendar={calendar}\n\
                 Persistent=true\nUnit=cairn-{name}.service\n\n[Install]\nWantedBy=timers.target\n",
                schedule.text.replace('%', "%%")
            ),
        });
    }
    Ok(units)
}

/// Crontab lines, one per scheduled job.
pub fn crontab_lines(config: &Config, cairn: &Path) -> Result<String> {
    let mut out =
        String::from("# cairn backup jobs (install with: crontab -e, or append to `crontab -l` output)\n");
    for job in scheduled(config)? {
        let schedule = job.schedule.as_ref().expect("scheduled jobs have a schedule");
        out.push_str(&format!(
            "{} {} --config {} run {}\n",
            schedule.cron,
            shell_quote(&cairn.to_string_lossy()),
            shell_quote(&config.path.to_string_lossy()),
            job.name
        ));
    }
    Ok(out)
}

/// Writes `units` into `dir`, replacing cairn's own files of those names; a file of that name
/// that cairn did not write is left alone and refused.
pub fn write_units(dir: &Path, units: &[Unit]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for u in units {
        let path = dir.join(&u.name);
        if let Ok(old) = std::fs::read_to_string(&path)
            && !old.starts_with(MARKER)
        {
            bail!("{} exists and was not written by cairn; move it away, then install again", path.display());
        }
        let mut tmp = tempfile::Builder::new().prefix(".cairn-unit").tempfile_in(dir)?;
        std::io::Write::write_all(&mut tmp, u.text.as_bytes())?;
        std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        tmp.persist(&path)
            .map_err(|e| e.error)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// cairn's own unit files in `dir` (`cairn-*.service|timer` starting with [`MARKER`]).
pub fn installed(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    for e in entries {
        let path = e?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let ours = name.starts_with("cairn-") && (name.ends_with(".service") || name.ends_with(".timer"));
        if ours && std::fs::read_to_string(&path).is_ok_and(|t| t.starts_with(MARKER)) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// A word for systemd's command-line parser: quoted when needed, `%` doubled.
fn systemd_quote(word: &str) -> String {
    let word = word.replace('%', "%%");
    if word.chars().any(|c| c.is_whitespace() || c == '"' || c == '\'' || c == '\\' || c == ';' || c == '$') {
        format!("\"{}\"", word.replace('\\', "\\\\").replace('"', "\\\"").replace('$', "$$"))
    } else {
        word
    }
}

/// A word for `sh`: single-quoted when needed. `%` is special to cron: escaped.
fn shell_quote(word: &str) -> String {
    let word = if word.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+=:,".contains(c)) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    };
    word.replace('%', "\\%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(systemd_quote("/usr/bin/cairn"), "/usr/bin/cairn");
        assert_eq!(systemd_quote("/home/me/my cfg.toml"), "\"/home/me/my cfg.toml\"");
        assert_eq!(systemd_quote("/a%b"), "/a%%b");
        assert_eq!(shell_quote("/home/me/it's here"), "'/home/me/it'\\''s here'");
        assert_eq!(shell_quote("/x/50%.toml"), "'/x/50\\%.toml'");
    }
}
