//! The local-folder storage backend, embedded in the cairn binary as its default.
//!
//! The host grants this component exactly one folder (the `path` option), preopened at the
//! same path, so the plugin addresses it with the path the user wrote in the config.

// The chaos test plugin reuses this module with `#[path]`, so it stays free of exports.
mod store;

mod component {
    use std::cell::RefCell;

    use cairn_plugin_sdk::{
        Capabilities, Error, Guest, GuestUpload, IncompleteUpload, ListPage, ObjectInfo, OptionSpec,
        PluginInfo, Upload,
    };

    use crate::store::{FsStore, FsUpload};

    thread_local! {
        static STORE: RefCell<Option<FsStore>> = const { RefCell::new(None) };
    }

    fn with_store<T>(f: impl FnOnce(&FsStore) -> Result<T, Error>) -> Result<T, Error> {
        STORE.with(|s| match s.borrow().as_ref() {
            Some(store) => f(store),
            None => Err(Error::Other("open was not called".into())),
        })
    }

    fn info() -> PluginInfo {
        PluginInfo {
            name: "fs".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "A folder on a local or mounted filesystem".into(),
            options: vec![
                OptionSpec {
                    name: "path".into(),
                    required: true,
                    secret: false,
                    help: "Absolute path of the repository folder".into(),
                    default_value: None,
                },
                OptionSpec {
                    name: "fsync".into(),
                    required: false,
                    secret: false,
                    help: "Sync every object to disk before it becomes visible (true/false)".into(),
                    default_value: Some("true".into()),
                },
            ],
        }
    }

    struct Fs;

    impl Guest for Fs {
        type Upload = FsUpload;

        fn describe() -> PluginInfo {
            info()
        }

        fn open(options: Vec<(String, String)>) -> Result<Capabilities, Error> {
            let (store, caps) = FsStore::open(&options)?;
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

    impl GuestUpload for FsUpload {
        fn write(&self, data: Vec<u8>) -> Result<(), Error> {
            FsUpload::write(self, &data)
        }
        fn finish(&self) -> Result<(), Error> {
            FsUpload::finish(self)
        }
        fn abort(&self) {
            FsUpload::abort(self)
        }
    }

    cairn_plugin_sdk::export!(Fs);
}
