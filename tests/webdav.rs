//! The WebDAV plugin against a real server on 127.0.0.1 (rclone serve webdav).

mod common;

use common::remote::{Flavour, cut_uploads, resume_after_kill, round_trip};

#[test]
fn webdav_round_trip() {
    round_trip(Flavour::RcloneDav);
}

#[test]
fn webdav_resume_after_kill() {
    resume_after_kill(Flavour::RcloneDav);
}

#[test]
fn webdav_uploads_cut_mid_way() {
    cut_uploads(Flavour::RcloneDav);
}
