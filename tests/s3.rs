//! The S3 plugin against real servers on 127.0.0.1: SeaweedFS, and rclone's S3 gateway
//! (whose ranged GET answers 200 with the whole object).

mod common;

use common::remote::{Flavour, cut_uploads, resume_after_kill, round_trip};

#[test]
fn seaweedfs_round_trip() {
    round_trip(Flavour::Seaweed);
}

#[test]
fn rclone_s3_round_trip() {
    round_trip(Flavour::RcloneS3);
}

#[test]
fn seaweedfs_resume_after_kill() {
    resume_after_kill(Flavour::Seaweed);
}

#[test]
fn rclone_s3_resume_after_kill() {
    resume_after_kill(Flavour::RcloneS3);
}

#[test]
fn seaweedfs_uploads_cut_mid_way() {
    cut_uploads(Flavour::Seaweed);
}
