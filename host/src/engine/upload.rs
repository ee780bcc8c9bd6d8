//! The uploader: takes finished packs from the packers and uploads them, several at once.
//!
//! For each pack: record it as `uploading` in the journal, upload from the temporary file,
//! check with `stat` that the backend holds
//! the full size (a plugin that claims success for a truncated object is caught here), then
//! commit `uploaded` in the journal, and only then delete the temporary file.

use std::sync::Arc;

use anyhow::{Result, anyhow, bail};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::backend::Backend;
use crate::engine::packer::{Dedup, FinishedPack};
use crate::journal::{Journal, ObjectKind};

/// Finished packs waiting for an upload slot (the channel the packers send to).
pub const QUEUE: usize = 2;

/// Temporary packs a backup can hold in the state folder at once, at most: one being
/// filled by each packer (data and trees), [`QUEUE`] waiting, and one per upload running.
pub fn packs_in_flight(concurrency: usize) -> u64 {
    (concurrency + QUEUE + 2) as u64
}

/// What the uploader is asked to do.
pub enum Job {
    Pack(FinishedPack),
    /// Reply once every pack sent before this is uploaded (used by checkpoints).
    Barrier(tokio::sync::oneshot::Sender<()>),
}

#[derive(Default, Debug, Clone, Copy)]
pub struct UploadStats {
    pub packs: u64,
    pub bytes: u64,
}

/// Starts the uploader on `rt`. Returns the channel the packers send to; the task ends when
/// every sender is dropped, or at the first upload that fails for good (which closes the
/// channel, so producers stop too).
pub fn spawn(
    rt: &tokio::runtime::Handle,
    backend: Arc<Backend>,
    journal: Arc<Journal>,
    dedup: Arc<Dedup>,
    queue: usize,
) -> (mpsc::Sender<Job>, tokio::task::JoinHandle<Result<UploadStats>>) {
    let (tx, mut rx) = mpsc::channel::<Job>(queue.max(1));
    let concurrency = backend.concurrency();
    let handle = rt.spawn(async move {
        let mut stats = UploadStats::default();
        let mut running: JoinSet<Result<(u64, u64)>> = JoinSet::new();
        let collect =
            |r: Result<Result<(u64, u64)>, tokio::task::JoinError>, stats: &mut UploadStats| -> Result<()> {
                let (n, bytes) = r.map_err(|e| anyhow!("upload task failed: {e}"))??;
                stats.packs += n;
                stats.bytes += bytes;
                Ok(())
            };
        loop {
            while running.len() >= concurrency {
                let r = running.join_next().await.expect("set is not empty");
                if let Err(e) = collect(r, &mut stats) {
                    rx.close();
                    return Err(e);
                }
            }
            tokio::select! {
                job = rx.recv() => match job {
                    Some(Job::Pack(pack)) => {
                        let backend = backend.clone();
                        let journal = journal.clone();
                        let dedup = dedup.clone();
                        running.spawn(async move {
                            upload_one(&backend, &journal, &dedup, pack).await.map(|b| (1, b))
                        });
                    }
                    Some(Job::Barrier(done)) => {
                        while let Some(r) = running.join_next().await {
                            if let Err(e) = collect(r, &mut stats) {
                                rx.close();
                                return Err(e);
                            }
                        }
                        let _ = done.send(());
                    }
                    None => break,
                },
                Some(r) = running.join_next(), if !running.is_empty() => {
                    if let Err(e) = collect(r, &mut stats) {
                        rx.close();
                        return Err(e);
                    }
                }
            }
        }
        while let Some(r) = running.join_next().await {
            collect(r, &mut stats)?;
        }
        Ok(stats)
    });
    (tx, handle)
}

/// Attempts when the backend reports success but holds a different size.
const SHORT_WRITE_ATTEMPTS: u32 = 3;

async fn upload_one(backend: &Backend, journal: &Journal, dedup: &Dedup, pack: FinishedPack) -> Result<u64> {
    // Recorded, with its size, hash and blobs, before the first byte is sent.
    journal.begin_upload(&pack.name, ObjectKind::Pack, pack.size, &pack.id, &pack.entries)?;
    dedup.release(pack.entries.iter().map(|e| e.id));
    let mut attempt = 1;
    loop {
        backend.upload_file(&pack.name, &pack.path, pack.size, false).await?;
        match backend.stat(&pack.name).await? {
            Some(info) if info.size == pack.size => break,
            found => {
                let stored = found.map(|i| i.size.to_string()).unwrap_or_else(|| "nothing".into());
                // Ours and wrong: remove it, through the journal's deleting state.
                journal.begin_discard(&pack.name)?;
                backend.delete(std::slice::from_ref(&pack.name)).await?;
                journal.upload_again(&pack.name)?;
                if attempt >= SHORT_WRITE_ATTEMPTS {
                    bail!(
                        "backend {} reported {} as stored, but holds {stored} of its {} bytes",
                        backend.name(),
                        pack.name,
                        pack.size
                    );
                }
                tracing::warn!(
                    "backend {} stored {stored} of {} bytes of {}; uploading again",
                    backend.name(),
                    pack.size,
                    pack.name
                );
                attempt += 1;
            }
        }
    }
    journal.confirm_upload(&pack.name)?;
    let _ = std::fs::remove_file(&pack.path);
    Ok(pack.size)
}
