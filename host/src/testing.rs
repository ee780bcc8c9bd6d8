//! Test seams. Crash tests must be able to kill the real process at an exact point (inside
//! a journal transaction, while holding the lock); these hooks make that possible and do
//! nothing unless `$CAIRN_TEST_PAUSE` names the point.

use std::time::Duration;

/// When `$CAIRN_TEST_PAUSE` equals `name`, prints `cairn-test-pause: NAME` on stderr and
/// sleeps (for an hour), so a test can `kill -9` the process right here.
pub fn pause_point(name: &str) {
    if std::env::var_os("CAIRN_TEST_PAUSE").is_some_and(|v| v == name) {
        eprintln!("cairn-test-pause: {name}");
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// When `$CAIRN_TEST_HOLD` equals `name`, prints `cairn-test-hold: NAME` on stderr and waits
/// until the file `$CAIRN_TEST_HOLD_RELEASE` exists, then goes on: a test can change the
/// world (remove a lock) at this exact point and watch what the command does next.
pub fn hold_point(name: &str) {
    if std::env::var_os("CAIRN_TEST_HOLD").is_none_or(|v| v != name) {
        return;
    }
    let Some(release) = std::env::var_os("CAIRN_TEST_HOLD_RELEASE") else { return };
    eprintln!("cairn-test-hold: {name}");
    while !std::path::Path::new(&release).exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
}
