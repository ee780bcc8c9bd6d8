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
