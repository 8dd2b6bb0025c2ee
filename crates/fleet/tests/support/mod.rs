//! The local AWS API server of the workspace's AWS tests (moto, one per
//! test on a free port; `SELFHEAL_MOTO_SERVER` names the executable, else
//! the workspace's `.venv/bin/moto_server` that `tests/run.sh` installs),
//! and SDK clients pointed at it.
#![allow(dead_code)]

#[path = "../../../../tests/aws_support/moto.rs"]
pub mod moto;

use selfheal_fleet::{aws_sdk_dynamodb as ddb, aws_sdk_s3 as s3};
use std::path::Path;
use std::sync::Once;

pub mod serial;

pub use moto::Moto;

/// moto, and the serialising proxy in front of it that the clients use.
pub struct Aws {
    /// The server (killed on drop).
    pub moto: Moto,
    /// Where the clients connect: the proxy.
    pub url: String,
}

/// Start moto, logging to `dir/moto.log`, behind a [`serial::Serial`] proxy.
pub fn start(dir: &Path) -> Aws {
    // The shared helper's default is `.venv` beside *this* crate's manifest;
    // the workspace keeps it at the root. Set once, before any test reads it.
    static DEFAULT: Once = Once::new();
    DEFAULT.call_once(|| {
        if std::env::var_os("SELFHEAL_MOTO_SERVER").is_none() {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/moto_server");
            std::env::set_var("SELFHEAL_MOTO_SERVER", root);
        }
    });
    let moto = Moto::start(&dir.join("moto.log"));
    let url = serial::Serial::start(&moto.addr).url;
    Aws { moto, url }
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
        // Plain Content-Length bodies (no aws-chunked trailers) for the proxy.
        .request_checksum_calculation(s3::config::RequestChecksumCalculation::WhenRequired)
        .build();
    s3::Client::from_conf(conf)
}
