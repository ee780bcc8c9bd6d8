//! Progress on a terminal: files, bytes, rate and ETA. Silent when stderr is not a terminal
//! or with `--json`.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Default)]
pub struct Counters {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    /// Totals, once a scan has found them (0 while unknown).
    pub total_files: AtomicU64,
    pub total_bytes: AtomicU64,
}

pub struct Progress {
    pub counters: Arc<Counters>,
    bar: Option<ProgressBar>,
    done: Arc<AtomicBool>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    /// A progress display for `verb` ("backing up", "restoring"), shown only when `wanted`
    /// and stderr is a terminal.
    pub fn new(verb: &str, wanted: bool) -> Progress {
        let counters = Arc::new(Counters::default());
        let done = Arc::new(AtomicBool::new(false));
        if !(wanted && std::io::stderr().is_terminal()) {
            return Progress { counters, bar: None, done, ticker: None };
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(5));
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {prefix} {msg} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .expect("valid template"),
        );
        bar.set_prefix(verb.to_string());
        let (c, d, b) = (counters.clone(), done.clone(), bar.clone());
        let ticker = std::thread::spawn(move || {
            while !d.load(Ordering::Relaxed) {
                let total = c.total_bytes.load(Ordering::Relaxed);
                let bytes = c.bytes.load(Ordering::Relaxed);
                b.set_length(total.max(bytes));
                b.set_position(bytes);
                let tf = c.total_files.load(Ordering::Relaxed);
                let f = c.files.load(Ordering::Relaxed);
                b.set_message(if tf > 0 { format!("{f}/{tf} files") } else { format!("{f} files") });
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Progress { counters, bar: Some(bar), done, ticker: Some(ticker) }
    }

    pub fn enabled(&self) -> bool {
        self.bar.is_some()
    }

    pub fn finish(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
