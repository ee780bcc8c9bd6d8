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
    use std::cell::RefCell;

    use cairn_plugin_sdk::{
        Capabilities, Error, Guest, GuestUpload, IncompleteUpload, ListPage, ObjectInfo, OptionSpec,
        PluginInfo, Upload,
    };

    use crate::store::{Config, S3Upload, Store};

    thread_local! {
        static STORE: RefCell<Option<Store>> = const { RefCell::new(None) };
    }

    fn with_store<T>(f: impl FnOnce(&Store) -> Result<T, Error>) -> Result<T, Error> {
        // Cloned out, so no borrow of the slot is held while requests run.
        let store = STORE.with(|s| s.borrow().clone());
        match store {
            Some(store) => f(&store),
            None => Err(Error::Other("open was not called".into())),
        }
    }

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

    struct S3;

    impl Guest for S3 {
        type Upload = S3Upload;

        fn describe() -> PluginInfo {
            info()
        }

        fn open(options: Vec<(String, String)>) -> Result<Capabilities, Error> {
            let (store, caps) = Config::open(&options)?;
            STORE.with(|s| *s.borrow_mut() = Some(store));
            Ok(caps)
        }

        fn list(prefix: String, cursor: Option<String>, max: u32) -> Result<ListPage, Error> {
            with_store(|s| s.list(&prefix, cursor.as_deref(), max))
        }

        fn stat(name: String) -> Result<ObjectInfo, Error> {
            with_store(|s| s.stat(&name))
        }

        fn read(name: String, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
            with_store(|s| s.read(&name, offset, len))
        }

        fn start_upload(name: String, size: u64, if_absent: bool) -> Result<Upload, Error> {
            with_store(|s| s.start_upload(&name, size, if_absent)).map(Upload::new)
        }

        fn list_incomplete(prefix: String) -> Result<Vec<IncompleteUpload>, Error> {
            with_store(|s| s.list_incomplete(&prefix))
        }

        fn abort_incomplete(id: String) -> Result<(), Error> {
            with_store(|s| s.abort_incomplete(&id))
        }

        fn delete(names: Vec<String>) -> Result<(), Error> {
            with_store(|s| s.delete(&names))
        }
    }

    impl GuestUpload for S3Upload {
        fn write(&self, data: Vec<u8>) -> Result<(), Error> {
            S3Upload::write(self, &data)
        }
        fn finish(&self) -> Result<(), Error> {
            S3Upload::finish(self)
        }
        fn abort(&self) {
            S3Upload::abort(self)
        }
    }

    cairn_plugin_sdk::export!(S3);
}
