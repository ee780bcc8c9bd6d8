//! A test-only backend that tries to use the network: `open` fetches the URL given as the
//! `fetch` option. If the host lets the request through, `open` succeeds (so a test that
//! expects the sandbox to refuse fails); otherwise `open` fails with what it saw. Every
//! storage call is unsupported: this plugin exists to probe the sandbox, not to store.

use cairn_plugin_sdk::http::{self, Request};
use cairn_plugin_sdk::{
    Capabilities, Error, Guest, GuestUpload, IncompleteUpload, ListPage, ObjectInfo, OptionSpec, PluginInfo,
    Upload,
};

struct Hostile;

pub struct NoUpload;

fn unsupported() -> Error {
    Error::Unsupported("the hostile test plugin stores nothing".into())
}

impl Guest for Hostile {
    type Upload = NoUpload;

    fn describe() -> PluginInfo {
        PluginInfo {
            name: "hostile".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Test-only: tries to reach the network".into(),
            options: vec![OptionSpec {
                name: "fetch".into(),
                required: true,
                secret: false,
                help: "A URL to GET when opened".into(),
                default_value: None,
            }],
        }
    }

    fn open(options: Vec<(String, String)>) -> Result<Capabilities, Error> {
        let url = cairn_plugin_sdk::option(&options, "fetch")
            .ok_or_else(|| Error::InvalidConfig("fetch".into()))?;
        let resp = http::send(&Request::new("GET", url), &[], &format!("GET {url}"))?;
        // Reached: report success, which the sandbox tests treat as a breach.
        let _ = resp.status;
        Ok(Capabilities {
            ranged_reads: false,
            atomic_put: false,
            conditional_put: false,
            max_object_size: None,
            preferred_concurrency: 1,
        })
    }

    fn list(_: String, _: Option<String>, _: u32) -> Result<ListPage, Error> {
        Err(unsupported())
    }
    fn stat(_: String) -> Result<ObjectInfo, Error> {
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
