//! What `tests/aws_support/moto.rs` of the workspace needs from its
//! `crate::common`: the workspace's own std-only helpers (a free port and a
//! one-shot HTTP/1.1 call), included from `tests/common/http.rs` so that the
//! two test trees share one copy.

#[path = "../../../../tests/common/http.rs"]
mod http;
pub use http::*;
