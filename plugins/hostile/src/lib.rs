//! A test-only backend that probes what cairn lets a plugin do and say. It stores nothing:
//! every storage call is unsupported unless an option makes it fail otherwise.
//!
//! - `fetch`: a URL `open` fetches. If the host lets the request through, `open` succeeds
//!   (so a test that expects the sandbox to refuse fails); otherwise `open` fails with what
//!   it saw.
//! - `fail = "CALL"` (`open`, `list` or `stat`): that call fails with a temporary error
//!   whose message quotes the values of the options named in `leak` (comma-separated);
//!   `fail = "CALL:panic"` panics with that message instead. This is how a plugin would leak
//!   a credential into cairn's output.
//! - `token` (declared secret) and `note` (not declared secret): values to leak.
//! - Its description holds control characters, which must never reach a terminal as such.

use std::cell::RefCell;

use cairn_plugin_sdk::http::{self, Request};
use cairn_plugin_sdk::{
    Capabilities, Error, Guest, GuestUpload, IncompleteUpload, ListPage, ObjectInfo, OptionSpec, PluginInfo,
    Upload,
};

struct Hostile;

pub struct NoUpload;

thread_local! {
    /// The options given to `open`, for the calls that come after it.
    static OPTIONS: RefCell<Vec<(String, String)>> = const { RefCell::new(Vec::new()) };
}

fn unsupported() -> Error {
    Error::Unsupported("the hostile test plugin stores nothing".into())
}

fn spec(name: &str, secret: bool, help: &str) -> OptionSpec {
    OptionSpec { name: name.into(), required: false, secret, help: help.into(), default_value: None }
}

/// Fails `call` as the `fail` option asks, quoting the options named in `leak`.
fn maybe_fail(call: &str) -> Result<(), Error> {
    OPTIONS.with(|o| {
        let options = o.borrow();
        let opt = |name: &str| cairn_plugin_sdk::option(&options, name);
        let Some(fail) = opt("fail") else { return Ok(()) };
        let (target, how) = fail.split_once(':').unwrap_or((fail, "error"));
        if target != call {
            return Ok(());
        }
        let quoted: Vec<String> = opt("leak")
            .unwrap_or("")
            .split(',')
            .filter(|n| !n.is_empty())
            .map(|n| format!("{n}={}", opt(n).unwrap_or("(unset)")))
            .collect();
        let message = format!("hostile: {call} rejected with {}", quoted.join(" "));
        if how == "panic" {
            panic!("{message}");
        }
        Err(Error::Transient(message))
    })
}

impl Guest for Hostile {
    type Upload = NoUpload;

    fn describe() -> PluginInfo {
        PluginInfo {
            name: "hostile".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Test-only: probes the sandbox\x1b[2J\ncairn: a forged line\u{202e}".into(),
            options: vec![
                spec("fetch", false, "A URL to GET when opened"),
                spec("fail", false, "CALL or CALL:panic: make that call fail, quoting the `leak` options"),
                spec("leak", false, "Comma-separated option names whose values the failure quotes"),
                spec("token", true, "A credential (declared secret)"),
                spec("note", false, "A value not declared secret"),
            ],
        }
    }

    fn open(options: Vec<(String, String)>) -> Result<Capabilities, Error> {
        OPTIONS.with(|o| *o.borrow_mut() = options.clone());
        if let Some(url) = cairn_plugin_sdk::option(&options, "fetch") {
            let resp = http::send(&Request::new("GET", url), &[], &format!("GET {url}"))?;
            // Reached: report success, which the sandbox tests treat as a breach.
            let _ = resp.status;
        }
        maybe_fail("open")?;
        Ok(Capabilities {
            ranged_reads: false,
            atomic_put: false,
            conditional_put: false,
            max_object_size: None,
            preferred_concurrency: 1,
        })
    }

    fn list(_: String, _: Option<String>, _: u32) -> Result<ListPage, Error> {
        maybe_fail("list")?;
        Err(unsupported())
    }
    fn stat(_: String) -> Result<ObjectInfo, Error> {
        maybe_fail("stat")?;
        Err(unsupported())
    }
    fn read(_: String, _: u64, _: u64) -> Result<Vec<u8>, Error> {
        Err(unsupported())
    }
    fn start_upload(_: String, _: u64, _: bool) -> Result<Upload, Error> {
        Err(unsupported())
    }
    fn list_incomplete(_: String) -> Result<Vec<IncompleteUpload>, Error> {
        Err(unsupported())
    }
    fn abort_incomplete(_: String) -> Result<(), Error> {
        Err(unsupported())
    }
    fn delete(_: Vec<String>) -> Result<(), Error> {
        Err(unsupported())
    }
}

impl GuestUpload for NoUpload {
    fn write(&self, _: Vec<u8>) -> Result<(), Error> {
        Err(unsupported())
    }
    fn finish(&self) -> Result<(), Error> {
        Err(unsupported())
    }
    fn abort(&self) {}
}

cairn_plugin_sdk::export!(Hostile);
