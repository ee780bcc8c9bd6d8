//! Free space and writability of the folders cairn writes to, from `statvfs`: cheap (no
//! I/O on the data), so it runs before a backup starts and whenever a write fails without
//! saying why.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What the filesystem holding a folder can take.
#[derive(Debug, Clone, Copy)]
pub struct Space {
    /// Bytes an unprivileged writer can still use.
    pub free: u64,
    /// Mounted read-only.
    pub read_only: bool,
}

/// The space of the filesystem holding `path`, or of its nearest existing ancestor (a state
/// folder that does not exist yet will be created there).
pub fn of(path: &Path) -> io::Result<Space> {
    let mut at = path;
    loop {
        match statvfs(at) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                at = at.parent().ok_or(e)?;
            }
            other => return other,
        }
    }
}

fn statvfs(path: &Path) -> io::Result<Space> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs record.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Space {
        free: (st.f_bavail as u64).saturating_mul(st.f_frsize as u64),
        read_only: st.f_flag & libc::ST_RDONLY != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_folder_is_measured_at_its_nearest_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        let here = of(dir.path()).unwrap();
        let below = of(&dir.path().join("not/yet/there")).unwrap();
        assert!(!here.read_only && !below.read_only);
        assert!(here.free > 0 && below.free > 0);
    }
}
