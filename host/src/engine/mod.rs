//! The work: backing up (walk, chunk, deduplicate, pack, upload) and restoring.

pub mod backup;
pub mod chunker;
pub mod forget;
pub mod mark;
pub mod packer;
pub mod prune;
pub mod repair;
pub mod restore;
pub mod retention;
pub mod snapshots;
pub mod stats;
pub mod tree;
pub mod upload;
pub mod verify;
pub mod walk;
