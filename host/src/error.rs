//! Errors that end a command, and the exit codes they map to.
//!
//! Every failure reaches the user as one line on stderr: `cairn: <what happened>`, with
//! what to do about it where there is something to do.

use std::fmt;

/// Exit code: the command did what was asked.
pub const EXIT_OK: u8 = 0;
/// Exit code: the command failed; nothing was lost, the repository is consistent.
pub const EXIT_ERROR: u8 = 1;
/// Exit code: bad command-line usage (clap uses it too).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the command ran to the end but found damage or could not handle some items
/// (files that could not be restored, objects that failed verification).
pub const EXIT_PROBLEMS: u8 = 3;

/// An error that carries its own exit code. Anything else exits with [`EXIT_ERROR`].
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl Exit {
    pub fn problems(message: impl Into<String>) -> Self {
        Exit { code: EXIT_PROBLEMS, message: message.into() }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// Renders an error chain on one line: `outer: inner: root cause`.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string().replace('\n', " ");
        let text = text.trim().to_string();
        // anyhow contexts often repeat the inner message; skip exact repeats.
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// The exit code for an error: the code of an [`Exit`] anywhere in the chain, else 1.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    err.chain().find_map(|c| c.downcast_ref::<Exit>()).map(|e| e.code).unwrap_or(EXIT_ERROR)
}

/// Which of the places cairn reads or writes on this machine a path is. Every local I/O
/// error names it with the path, so the user knows what the folder is for and where to make
/// room or fix permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `[state] dir`: journal, lock and temporary packs, one folder per repository.
    StateFolder,
    /// The packs being written before upload, in the state folder's `tmp/`.
    TemporaryPacks,
    /// The SQLite journal in the state folder.
    Journal,
    /// The compiled-plugin cache.
    Cache,
    /// `[plugins] dir`: installed plugins.
    PluginsFolder,
    /// A file or folder being backed up.
    Source,
    /// Where `restore` writes.
    RestoreTarget,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::StateFolder => "state folder",
            Role::TemporaryPacks => "temporary packs",
            Role::Journal => "journal",
            Role::Cache => "compiled-plugin cache",
            Role::PluginsFolder => "plugins folder",
            Role::Source => "source",
            Role::RestoreTarget => "restore target",
        }
    }

    /// Where else the data can go, when this place cannot take it.
    fn elsewhere(self) -> Option<&'static str> {
        match self {
            Role::StateFolder | Role::TemporaryPacks | Role::Journal => {
                Some("move `[state] dir` to another disk")
            }
            Role::Cache => Some("set `[state] cache_dir` to another disk"),
            Role::PluginsFolder => Some("set `[plugins] dir` to another folder"),
            Role::Source => None,
            Role::RestoreTarget => Some("restore to another --target"),
        }
    }
}

/// What a local I/O error means, in words (no bare error numbers).
pub fn describe_io(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::StorageFull => "no space left on device".into(),
        K::QuotaExceeded => "disk quota exceeded".into(),
        K::ReadOnlyFilesystem => "read-only file system".into(),
        K::PermissionDenied => "permission denied".into(),
        K::NotFound => "no such file or folder".into(),
        K::InvalidFilename => "name too long for this file system".into(),
        K::NotADirectory => "a part of the path is a file, not a folder".into(),
        K::FileTooLarge => "file too large for this file system".into(),
        _ => e.to_string(),
    }
}

/// A local I/O error with the path it happened on and that path's role.
#[derive(Debug)]
pub struct LocalIo {
    pub role: Role,
    pub path: std::path::PathBuf,
    pub source: std::io::Error,
}

impl LocalIo {
    /// The disk or the user's quota is full.
    pub fn is_out_of_space(&self) -> bool {
        matches!(self.source.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
    }

    /// Space, a read-only file system, or permissions: nothing a retry fixes, the user must act.
    pub fn is_permanent_condition(&self) -> bool {
        self.is_out_of_space()
            || matches!(
                self.source.kind(),
                std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied
            )
    }
}

impl LocalIo {
    /// What the user can do about a permanent condition, fitted to its cause and the role.
    fn advice(&self) -> Option<String> {
        use std::io::ErrorKind as K;
        let fix = match self.source.kind() {
            _ if self.is_out_of_space() => "free space there",
            K::ReadOnlyFilesystem => "remount it read-write",
            K::PermissionDenied if self.role == Role::Source => "let the user running cairn read it",
            K::PermissionDenied => "give the user running cairn write access",
            _ => return None,
        };
        Some(match self.role.elsewhere() {
            Some(other) => format!("{fix}, or {other}"),
            None => fix.to_string(),
        })
    }
}

impl fmt::Display for LocalIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.role.name(), self.path.display(), describe_io(&self.source))?;
        if let Some(advice) = self.advice() {
            write!(f, "; {advice}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LocalIo {}

/// Attaches a path and its role to an I/O result: `std::fs::write(&p, b).at(Role::Journal, &p)?`.
pub trait IoAt<T> {
    fn at(self, role: Role, path: &std::path::Path) -> Result<T, LocalIo>;
}

impl<T> IoAt<T> for std::io::Result<T> {
    fn at(self, role: Role, path: &std::path::Path) -> Result<T, LocalIo> {
        self.map_err(|source| LocalIo { role, path: path.to_path_buf(), source })
    }
}

/// The first [`LocalIo`] in an error chain.
pub fn local_io(err: &anyhow::Error) -> Option<&LocalIo> {
    err.chain().find_map(|c| c.downcast_ref::<LocalIo>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_named_with_its_role_path_and_advice() {
        let e = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let r: std::io::Result<()> = Err(e);
        let err =
            anyhow::Error::from(r.at(Role::TemporaryPacks, std::path::Path::new("/s/tmp/p")).unwrap_err());
        let text = one_line(&err);
        assert_eq!(
            text,
            "temporary packs /s/tmp/p: no space left on device; free space there, or move `[state] dir` to another disk"
        );
        assert!(local_io(&err).unwrap().is_out_of_space());
        let ro = std::io::Error::from_raw_os_error(libc::EROFS);
        let e = LocalIo { role: Role::RestoreTarget, path: "/t".into(), source: ro };
        assert_eq!(
            e.to_string(),
            "restore target /t: read-only file system; remount it read-write, or restore to another --target"
        );
        let denied = std::io::Error::from_raw_os_error(libc::EACCES);
        let e = LocalIo { role: Role::Source, path: "/src".into(), source: denied };
        assert_eq!(e.to_string(), "source /src: permission denied; let the user running cairn read it");
    }
}
