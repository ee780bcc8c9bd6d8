//! `[jobs.NAME]`: what `cairn run` backs up, where, when, and with what before and after.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use serde::Deserialize;

use super::schedule::Schedule;
use crate::config::{Config, RetentionConfig};
use crate::engine::verify::Subset;
use crate::repo::format::DEFAULT_JOB;

/// A hook's default deadline: a pre-dump that takes longer is taken as hung.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(10 * 60);

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// Files and folders to back up (absolute, or relative to the config file).
    #[serde(default)]
    pub sources: Vec<PathBuf>,
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// A name from `[repositories.NAME]`; default the `[repository]`.
    pub repository: Option<String>,
    /// What `forget` keeps after each backup of this job (default `[retention]`; none set:
    /// nothing is forgotten).
    pub retention: Option<RetentionConfig>,
    /// `"hourly"`, `"daily 02:30"`, `"weekly sun 04:00"`, or a cron expression.
    pub schedule: Option<String>,
    /// Prune the repository after a run when the last prune of this job is this old ("7d").
    pub prune_every: Option<String>,
    #[serde(default)]
    pub hooks: HooksConfig,
    /// Verify the repository after each backup of this job.
    pub verify: Option<VerifyConfig>,
}

/// Commands run around a job, in order, each with its own timeout.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksConfig {
    /// Before the backup; one failing skips the job.
    #[serde(default)]
    pub before: Vec<HookConfig>,
    /// After a run that saved its snapshot.
    #[serde(default)]
    pub after: Vec<HookConfig>,
    /// After a run that failed (a step, or a `before` hook).
    #[serde(default)]
    pub on_failure: Vec<HookConfig>,
}

/// One hook: `{ command = ["prog", "arg"] }`, or `{ command = "a | b", shell = true }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    pub command: HookCommand,
    /// Run `command` (a string) with `sh -c`. Without it no shell is involved.
    #[serde(default)]
    pub shell: bool,
    /// A span like "30s", "10m" (default 10 minutes); the hook's process group is then killed.
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum HookCommand {
    Argv(Vec<String>),
    Line(String),
}

/// `verify = { read_data_subset = "5%" }`, `{ read_data = true }` or `{}` (structure only).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    #[serde(default)]
    pub read_data: bool,
    pub read_data_subset: Option<String>,
}

impl VerifyConfig {
    pub fn subset(&self) -> Result<Option<Subset>> {
        match (&self.read_data_subset, self.read_data) {
            (Some(_), true) => bail!("verify: give read_data or read_data_subset, not both"),
            (Some(s), false) => {
                Ok(Some(s.parse::<Subset>().map_err(|e| anyhow!("verify.read_data_subset: {e}"))?))
            }
            (None, true) => Ok(Some(Subset::All)),
            (None, false) => Ok(None),
        }
    }
}

/// A hook ready to run: program and arguments, deadline.
#[derive(Debug, Clone, PartialEq)]
pub struct Hook {
    pub argv: Vec<String>,
    pub timeout: Duration,
}

impl HookConfig {
    pub fn hook(&self) -> Result<Hook> {
        let argv = match (&self.command, self.shell) {
            (HookCommand::Line(line), true) => vec!["sh".to_string(), "-c".to_string(), line.clone()],
            (HookCommand::Line(line), false) => bail!(
                "hook command {line:?} is a string: give a list [\"program\", \"arg\", ...], or set shell = true \
                 to run it with sh -c"
            ),
            (HookCommand::Argv(_), true) => {
                bail!("a hook with shell = true takes its command as one string")
            }
            (HookCommand::Argv(argv), false) if argv.is_empty() || argv[0].is_empty() => {
                bail!("a hook command is empty")
            }
            (HookCommand::Argv(argv), false) => argv.clone(),
        };
        let timeout = match &self.timeout {
            None => DEFAULT_HOOK_TIMEOUT,
            Some(t) => parse_duration(t).map_err(|e| anyhow!("hook timeout: {e}"))?,
        };
        Ok(Hook { argv, timeout })
    }
}

/// A span of fixed length: "90s", "10m", "26h", "7d", "1h30m".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let span: jiff::Span = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like \"30s\", \"10m\", \"26h\" or \"7d\""))?;
    let secs = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|_| format!("{text:?}: use seconds, minutes, hours, days or weeks (not months or years)"))?
        .as_secs_f64();
    if secs <= 0.0 {
        return Err(format!("{text:?} must be longer than zero"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Every job of the config, by name: `[jobs.*]`, and `default` for `[backup]` when it has
/// sources.
pub fn names(config: &Config) -> Vec<String> {
    let mut names: Vec<String> = config.jobs.keys().cloned().collect();
    if !config.backup.sources.is_empty() && !config.jobs.contains_key(DEFAULT_JOB) {
        names.insert(0, DEFAULT_JOB.to_string());
    }
    names
}

/// A job, checked and resolved.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub schedule: Option<Schedule>,
    pub prune_every: Option<Duration>,
    /// `None`: no verify; `Some(None)`: structure only; `Some(Some(subset))`: also read
    /// that part of the packs.
    pub verify: Option<Option<Subset>>,
    pub before: Vec<Hook>,
    pub after: Vec<Hook>,
    pub on_failure: Vec<Hook>,
    /// Which repository (`[repository]` is `None`): jobs on different ones may run in parallel.
    pub repository: Option<String>,
}

/// The job `name` of the config, resolved.
pub fn job(config: &Config, name: &str) -> Result<Job> {
    let ctx = |e: anyhow::Error| anyhow!("[jobs.{name}] {e:#}");
    let Some(c) = config.jobs.get(name) else {
        // `[backup]`: no schedule, hooks or verify of its own.
        config.job_view(name)?;
        return Ok(Job {
            name: name.to_string(),
            schedule: None,
            prune_every: None,
            verify: None,
            before: Vec::new(),
            after: Vec::new(),
            on_failure: Vec::new(),
            repository: None,
        });
    };
    let hooks =
        |list: &[HookConfig]| list.iter().map(HookConfig::hook).collect::<Result<Vec<_>>>().map_err(ctx);
    Ok(Job {
        name: name.to_string(),
        schedule: c
            .schedule
            .as_deref()
            .map(Schedule::parse)
            .transpose()
            .map_err(|e| ctx(anyhow!("schedule: {e}")))?,
        prune_every: c
            .prune_every
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(|e| ctx(anyhow!("prune_every: {e}")))?,
        verify: c.verify.as_ref().map(VerifyConfig::subset).transpose().map_err(ctx)?,
        before: hooks(&c.hooks.before)?,
        after: hooks(&c.hooks.after)?,
        on_failure: hooks(&c.hooks.on_failure)?,
        repository: c.repository.clone(),
    })
}

/// Checks every job when the config is loaded: names usable in unit files and metric labels,
/// sources given, repositories that exist, schedules, hooks and retention that parse, and
/// each job's view of the config (its repository's grants) valid like `[repository]`'s.
pub fn validate(config: &Config) -> Result<()> {
    if config.jobs.contains_key(DEFAULT_JOB) && !config.backup.sources.is_empty() {
        bail!("[backup] is the job `default`: rename [jobs.default] or move [backup] sources into it");
    }
    for (name, c) in &config.jobs {
        if name.is_empty()
            || name.len() > 64
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            bail!("job name {name:?} must be 1 to 64 letters, digits, '-' or '_'");
        }
        if c.sources.is_empty() {
            bail!("[jobs.{name}] has no sources");
        }
        job(config, name)?;
        let view = config.job_view(name)?;
        view.retention.policy().map_err(|e| anyhow!("[jobs.{name}] {e:#}"))?;
        view.validate().map_err(|e| anyhow!("[jobs.{name}] {e:#}"))?;
    }
    Ok(())
}
