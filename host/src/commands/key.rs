//! `cairn key list | add | remove ID | passwd`: the passwords that open a repository.

use std::io::{BufRead, Write};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;

use super::Ctx;
use crate::cli::NewPassword;
use crate::repo::keys::{self, KeyInfo};
use crate::repo::{Access, Repository};
use crate::untrusted::escape;

pub fn list(ctx: &Ctx) -> Result<()> {
    let config = ctx.config()?;
    let repo = ctx.rt.block_on(Repository::open(&config, Access::Read))?;
    let keys = ctx.rt.block_on(repo.list_keys())?;
    if ctx.json {
        let rows: Vec<_> = keys
            .iter()
            .map(|k| {
                let current = k.name == repo.key_name;
                match &k.file {
                    Ok(f) => json!({
                        "id": k.id.hex(), "host": f.hostname, "user": f.username,
                        "created": f.created, "current": current,
                    }),
                    Err(why) => json!({ "id": k.id.hex(), "current": current, "unreadable": why }),
                }
            })
            .collect();
        ctx.print_json(&json!(rows));
        return Ok(());
    }
    println!("  {:<10} {:<20} {:<12} CREATED", "ID", "HOST", "USER");
    for k in &keys {
        let mark = if k.name == repo.key_name { "*" } else { " " };
        match &k.file {
            Ok(f) => println!(
                "{mark} {:<10} {:<20} {:<12} {}",
                k.id.short(),
                escape(&f.hostname),
                escape(&f.username),
                escape(&f.created)
            ),
            Err(why) => println!("{mark} {:<10} (unreadable: {})", k.id.short(), escape(why)),
        }
    }
    println!("* the key in use (the configured password opened it)");
    Ok(())
}

pub fn add(ctx: &Ctx, source: &NewPassword) -> Result<()> {
    let config = ctx.config()?;
    let password = new_password(source)?;
    let repo = ctx.rt.block_on(Repository::open(&config, Access::Write))?;
    let name = ctx.rt.block_on(repo.add_key(&password));
    let name = ctx.released(&repo, name)?;
    report(ctx, &json!({ "added": id_of(&name) }), &format!("added key {}", short_of(&name)));
    Ok(())
}

pub fn remove(ctx: &Ctx, id: &str) -> Result<()> {
    let config = ctx.config()?;
    let repo = ctx.rt.block_on(Repository::open(&config, Access::Write))?;
    let removed = (|| -> Result<crate::ids::Id> {
        let keys = ctx.rt.block_on(repo.list_keys())?;
        let key: &KeyInfo = keys::find(&keys, id)?;
        ctx.rt.block_on(repo.remove_key(key))?;
        Ok(key.id)
    })();
    let removed = ctx.released(&repo, removed)?;
    report(ctx, &json!({ "removed": removed.hex() }), &format!("removed key {}", removed.short()));
    Ok(())
}

/// A new key for the new password, then the old key removed: the new key file is written
/// and read back before the old one is touched, so an interruption leaves two working keys.
pub fn passwd(ctx: &Ctx, source: &NewPassword) -> Result<()> {
    let config = ctx.config()?;
    let password = new_password(source)?;
    if password == config.password()? {
        bail!("the new password is the current one; nothing was changed");
    }
    let repo = ctx.rt.block_on(Repository::open(&config, Access::Write))?;
    let replaced = (|| -> Result<(String, String)> {
        if !repo.backend.can_delete() {
            return Err(keys::RemoveRefused::AppendOnly.into());
        }
        let added = ctx.rt.block_on(repo.add_key(&password))?;
        let old = repo.key_name.clone();
        ctx.rt.block_on(repo.delete_objects(&[(old.clone(), crate::journal::ObjectKind::Key)]))?;
        Ok((added, old))
    })();
    let (added, old) = ctx.released(&repo, replaced)?;
    report(
        ctx,
        &json!({ "added": id_of(&added), "removed": id_of(&old) }),
        &format!(
            "added key {} for the new password and removed key {}; update the password source in {}",
            short_of(&added),
            short_of(&old),
            config.path.display()
        ),
    );
    Ok(())
}

fn report(ctx: &Ctx, value: &serde_json::Value, human: &str) {
    if ctx.json {
        ctx.print_json(value);
    } else {
        println!("{human}");
    }
}

fn id_of(name: &str) -> &str {
    name.strip_prefix("keys/").unwrap_or(name)
}

fn short_of(name: &str) -> &str {
    let id = id_of(name);
    &id[..id.len().min(8)]
}

/// The new password: from the source given on the command line, else asked for twice on
/// the terminal without echo.
fn new_password(source: &NewPassword) -> Result<String> {
    let pw = if let Some(var) = &source.new_password_env {
        std::env::var(var).map_err(|_| anyhow!("the new password variable ${var} is not set"))?
    } else if let Some(cmd) = &source.new_password_command {
        crate::config::run_secret_command(cmd).context("--new-password-command")?
    } else if let Some(file) = &source.new_password_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the new password file {}", file.display()))?;
        text.lines().next().unwrap_or("").to_string()
    } else {
        prompt_twice()?
    };
    if pw.is_empty() {
        bail!("the new password is empty; nothing was changed");
    }
    Ok(pw)
}

fn prompt_twice() -> Result<String> {
    let tty = std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty").map_err(|_| {
        anyhow!(
            "no terminal to ask for the new password on; give it with --new-password-env, \
             --new-password-command or --new-password-file"
        )
    })?;
    let first = prompt(&tty, "New password: ")?;
    let second = prompt(&tty, "Repeat the new password: ")?;
    if first != second {
        bail!("the two passwords differ; nothing was changed");
    }
    Ok(first)
}

/// Reads one line from the terminal with echo turned off (and back on afterwards).
fn prompt(tty: &std::fs::File, text: &str) -> Result<String> {
    use std::os::fd::AsRawFd;
    let fd = tty.as_raw_fd();
    let mut writer = tty;
    writer.write_all(text.as_bytes())?;
    writer.flush()?;
    // SAFETY: termios is plain data; tcgetattr fills it for a valid descriptor.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is an open terminal for the duration of these calls.
    let have_termios = unsafe { libc::tcgetattr(fd, &mut saved) } == 0;
    if have_termios {
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        quiet.c_lflag |= libc::ECHONL;
        // SAFETY: as above.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    }
    let mut line = String::new();
    let read = std::io::BufReader::new(tty).read_line(&mut line);
    if have_termios {
        // SAFETY: as above; restores what tcgetattr saved.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    }
    read.context("cannot read the new password from the terminal")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}
