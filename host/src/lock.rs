//! One cairn process per journal at a time.
//!
//! The lock is an advisory `flock` on `<state>/lock`, which the kernel releases when the
//! process dies however it dies, so a lock left by a killed process is simply free: the
//! next run takes it over without asking. The file also records pid, host and start time,
//! to name the holder when the lock is busy.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::error::{IoAt, Role};

pub struct Lock {
    file: File,
    path: PathBuf,
    /// The previous holder died without releasing the lock (its run was interrupted).
    pub took_over: bool,
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

impl Lock {
    pub fn acquire(path: &Path) -> Result<Lock> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .at(Role::StateFolder, path)?;
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        let mut previous = String::new();
        let _ = file.read_to_string(&mut previous);
        let previous = previous.trim().to_string();
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                bail!(
                    "another cairn process holds the journal lock {} ({}); wait for it to finish",
                    path.display(),
                    if previous.is_empty() { "holder unknown".to_string() } else { previous }
                );
            }
            return Err(err).with_context(|| format!("cannot lock {}", path.display()));
        }
        if !previous.is_empty() {
            tracing::info!("took over the lock left by a process that is gone ({previous})");
        }
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        writeln!(file, "pid {} on {} since {}", std::process::id(), hostname(), jiff::Timestamp::now())?;
        file.flush()?;
        Ok(Lock { file, path: path.to_path_buf(), took_over: !previous.is_empty() })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Leave an empty file: an empty lock file means "released cleanly".
        let _ = self.file.set_len(0);
        let _ = &self.path;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let held = Lock::acquire(&p).unwrap();
        // flock locks belong to the open file description, so a second open conflicts
        // even within one process.
        let err = Lock::acquire(&p).err().unwrap().to_string();
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        drop(held);
        Lock::acquire(&p).unwrap();
    }
}
