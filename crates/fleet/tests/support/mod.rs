//! The local AWS API server of the workspace's AWS tests (moto, one per
//! test on a free port; `SELFHEAL_MOTO_SERVER` names the executable), and
//! SDK clients pointed at it.
#![allow(dead_code)]

#[path = "../../../../tests/aws_support/moto.rs"]
pub mod moto;

use selfheal_fleet::{aws_sdk_dynamodb as ddb, aws_sdk_s3 as s3};
use std::path::Path;

pub use moto::Moto;

/// Start moto, logging to `dir/moto.log`.
pub fn start(dir: &Path) -> Moto {
    Moto::start(&dir.join("moto.log"))
}

/// A DynamoDB client against `url`.
pub fn dynamodb(url: &str) -> ddb::Client {
    use ddb::config::{BehaviorVersion, Credentials, Region};
    let conf = ddb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .endpoint_url(url)
        .build();
    ddb::Client::from_conf(conf)
}

/// An S3 client against `url` (path-style addressing, as moto serves it).
pub fn s3(url: &str) -> s3::Client {
    use s3::config::{BehaviorVersion, Credentials, Region};
    let conf = s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .endpoint_url(url)
        .force_path_style(true)
        .build();
    s3::Client::from_conf(conf)
}
