//! The S3 storage backend: objects in a bucket of any S3-compatible server (AWS S3,
//! SeaweedFS, MinIO, rclone serve s3, ...), reached over wasi:http.
//!
//! Requests are signed with AWS Signature Version 4 (rusty-s3). Uploads up to 64 MiB (option
//! `multipart_threshold`) are one streamed PUT; larger ones a multipart upload whose parts
//! are streamed as the host writes, so an object never has to fit in the plugin's memory.

mod net;
mod store;
mod xml;

mod component {
    use cairn_plugin_sdk::{OptionSpec, PluginInfo};

    use crate::store::{Config, S3Upload, Store};

    fn opt(name: &str, required: bool, secret: bool, help: &str, default: Option<&str>) -> OptionSpec {
        OptionSpec {
            name: name.into(),
            required,
            secret,
            help: help.into(),
            default_value: default.map(Into::into),
        }
    }

    fn info() -> PluginInfo {
        PluginInfo {
            name: "s3".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "A bucket on an S3-compatible object store (AWS S3, SeaweedFS, MinIO, ...)".into(),
            options: vec![
                opt(
                    "endpoint",
                    true,
                    false,
                    "URL of the S3 server, e.g. https://s3.eu-west-1.amazonaws.com or \
                     http://127.0.0.1:8333 (grant its origin in repository.grants.hosts)",
                    None,
                ),
                opt("bucket", true, false, "Name of the bucket (it must exist)", None),
                opt("region", false, false, "Region the requests are signed for", Some("us-east-1")),
                opt("access_key_id", true, false, "Access key ID", None),
                opt("secret_access_key", true, true, "Secret access key", None),
                opt(
                    "prefix",
                    false,
                    false,
                    "Key prefix under which the repository lives, e.g. backups/laptop \
                     (a '/' is added at its end)",
                    Some(""),
                ),
                opt(
                    "path_style",
                    false,
                    false,
                    "true: path-style URLs (ENDPOINT/BUCKET/KEY), needed for IP addresses and most \
                     self-hosted servers; false: virtual-host URLs (BUCKET.HOST/KEY)",
                    Some("true"),
                ),
                opt(
                    "multipart_threshold",
                    false,
                    false,
                    "Objects larger than this are sent as a multipart upload, smaller ones with one PUT",
                    Some("64MiB"),
                ),
                opt(
                    "part_size",
                    false,
                    false,
                    "Size of each part of a multipart upload (at least 5MiB)",
                    Some("16MiB"),
                ),
                opt(
                    "conditional_put",
                    false,
                    false,
                    "true if the server honours If-None-Match: * on PUT (AWS S3, MinIO, SeaweedFS), \
                     making create-if-absent atomic; false checks with HEAD first",
                    Some("false"),
                ),
            ],
        }
    }

    cairn_plugin_sdk::export_store!(describe: info, open: Config::open, store: Store, upload: S3Upload);
}
