//! `cairn schedule show|install|remove`: the jobs' next runs, and the systemd timers (or
//! crontab lines) that run them.

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::Ctx;
use crate::cli::{ScheduleAction, UnitPlace};
use crate::runner::{self, status::History, units};

pub fn run(ctx: &Ctx, action: ScheduleAction) -> Result<()> {
    let config = ctx.config()?;
    match action {
        ScheduleAction::Show { count } => show(ctx, &config, count),
        ScheduleAction::Install { place, print, crontab } => {
            let cairn = std::env::current_exe().context("cannot find the cairn program's own path")?;
            if crontab {
                print!("{}", units::crontab_lines(&config, &cairn)?);
                return Ok(());
            }
            let list = units::systemd_units(&config, &cairn)?;
            if print {
                for u in &list {
                    println!("# {}\n{}", u.name, u.text);
                }
                return Ok(());
            }
            let (scope, dir) = place_of(&place)?;
            units::write_units(&dir, &list)?;
            for u in &list {
                println!("wrote {}", dir.join(&u.name).display());
            }
            let timers: Vec<&str> =
                list.iter().map(|u| u.name.as_str()).filter(|n| n.ends_with(".timer")).collect();
            if place.dir.is_some() {
                println!(
                    "units written; to start them: {} daemon-reload && {} enable --now {}",
                    scope.systemctl().join(" "),
                    scope.systemctl().join(" "),
                    timers.join(" ")
                );
                return Ok(());
            }
            systemctl(&scope.systemctl(), &["daemon-reload"])?;
            let mut args = vec!["enable", "--now"];
            args.extend(timers.iter().copied());
            systemctl(&scope.systemctl(), &args)?;
            println!(
                "timers enabled; check them with `{} list-timers 'cairn-*'` and `cairn status`",
                scope.systemctl().join(" ")
            );
            Ok(())
        }
        ScheduleAction::Remove { place } => {
            let (scope, dir) = place_of(&place)?;
            let found = units::installed(&dir)?;
            if found.is_empty() {
                println!("no cairn units in {}", dir.display());
                return Ok(());
            }
            let timers: Vec<String> = found
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .filter(|n| n.ends_with(".timer"))
                .collect();
            if place.dir.is_none() && !timers.is_empty() {
                let mut args = vec!["disable", "--now"];
                args.extend(timers.iter().map(String::as_str));
                systemctl(&scope.systemctl(), &args)?;
            }
            for p in &found {
                std::fs::remove_file(p).with_context(|| format!("cannot remove {}", p.display()))?;
                println!("removed {}", p.display());
            }
            if place.dir.is_none() {
                systemctl(&scope.systemctl(), &["daemon-reload"])?;
            }
            Ok(())
        }
    }
}

fn place_of(place: &UnitPlace) -> Result<(units::Scope, std::path::PathBuf)> {
    let scope = if place.system { units::Scope::System } else { units::Scope::User };
    let dir = match &place.dir {
        Some(d) => d.clone(),
        None => scope.unit_dir()?,
    };
    Ok((scope, dir))
}

fn systemctl(base: &[&str], args: &[&str]) -> Result<()> {
    let status = std::process::Command::new(base[0])
        .args(&base[1..])
        .args(args)
        .status()
        .with_context(|| format!("cannot run {}", base.join(" ")))?;
    if !status.success() {
        bail!(
            "`{} {}` failed ({status}); the unit files are written, fix that and run it again",
            base.join(" "),
            args.join(" ")
        );
    }
    Ok(())
}

fn show(ctx: &Ctx, config: &crate::config::Config, count: usize) -> Result<()> {
    let now = runner::now()?;
    let history = History::load(config)?;
    let mut out = Vec::new();
    for name in runner::jobs::names(config) {
        let job = runner::jobs::job(config, &name)?;
        let Some(schedule) = &job.schedule else {
            out.push((name, None, None, Vec::new()));
            continue;
        };
        let due = runner::status::next_due(&job, history.last_run(&name), now);
        let mut next = Vec::new();
        let mut t = now;
        while next.len() < count {
            let Some(n) = schedule.next_after(t) else { break };
            next.push(n);
            t = n;
        }
        out.push((name, Some(schedule.text.clone()), due, next));
    }
    if ctx.json {
        let list: Vec<_> = out
            .iter()
            .map(|(name, schedule, due, next)| {
                json!({
                    "job": name,
                    "schedule": schedule,
                    "due": due.map(|d| d.to_string()),
                    "next": next.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
                })
            })
            .collect();
        ctx.print_json(&json!(list));
        return Ok(());
    }
    let zone = jiff::tz::TimeZone::system();
    let local =
        |t: &jiff::Timestamp| t.to_zoned_datetime(zone.clone()).strftime("%Y-%m-%d %H:%M %Z").to_string();
    for (name, schedule, due, next) in &out {
        match schedule {
            None => println!("{name}: no schedule (runs only when named: cairn run {name})"),
            Some(s) => {
                let due = match due {
                    Some(d) if *d <= now => " (due now)".to_string(),
                    _ => String::new(),
                };
                println!("{name}: {s}{due}");
                for t in next {
                    println!("  {}", local(t));
                }
            }
        }
    }
    Ok(())
}
