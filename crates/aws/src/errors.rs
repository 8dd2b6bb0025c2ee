//! Which AWS errors are worth a retry.
//!
//! The rule is explicit rather than inherited from the SDK so that it can be
//! read, tested and kept in step with the sidecar's retry loop: throttling and
//! server-side failures (5xx, timeouts, broken connections) are transient;
//! access denied, not found and validation errors will fail the same way
//! again, so retrying them only spends budget and delays the escalation.

use aws_sdk_glue::error::ProvideErrorMetadata;
use aws_smithy_types::error::metadata::ErrorMetadata;
use selfheal_sidecar::actuate::ActError;

/// The kinds of AWS failure the sidecar tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Too many requests: back off and retry.
    Throttling,
    /// A 5xx, a timeout or a broken connection: retry.
    Server,
    /// Credentials or IAM policy refuse the call: do not retry.
    AccessDenied,
    /// The job, run, database or table does not exist: do not retry.
    NotFound,
    /// The request is invalid: do not retry.
    Validation,
    /// Any other 4xx: do not retry.
    Client,
    /// A run of the job is still running and the job allows no more at once
    /// (`ConcurrentRunsExceededException`; `MaxConcurrentRuns` is 1 by
    /// default, <https://docs.aws.amazon.com/glue/latest/webapi/API_ExecutionProperty.html>).
    /// Not throttling: retrying cannot succeed while that run lives; wait
    /// for it, stop it, or tell a person.
    RunInProgress,
}

impl ErrorKind {
    /// Whether another attempt may succeed.
    pub fn retryable(self) -> bool {
        matches!(self, ErrorKind::Throttling | ErrorKind::Server)
    }

    /// Short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Throttling => "throttling",
            ErrorKind::Server => "server",
            ErrorKind::AccessDenied => "access-denied",
            ErrorKind::NotFound => "not-found",
            ErrorKind::Validation => "validation",
            ErrorKind::Client => "client",
            ErrorKind::RunInProgress => "run-in-progress",
        }
    }
}

const THROTTLING: [&str; 6] = [
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "SlowDown",
];
const ACCESS: [&str; 5] =
    ["AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "InvalidClientTokenId", "ExpiredToken"];
const NOT_FOUND: [&str; 4] =
    ["EntityNotFoundException", "ResourceNotFoundException", "ResourceNotFound", "NoSuchEntity"];
const VALIDATION: [&str; 6] = [
    "ValidationException",
    "ValidationError",
    "InvalidInputException",
    "InvalidParameterValue",
    "InvalidParameterCombination",
    "MissingParameter",
];

/// Classify an AWS error by its error code and HTTP status (either may be
/// unknown: a connection that broke has neither).
pub fn classify(code: Option<&str>, status: Option<u16>) -> ErrorKind {
    if let Some(c) = code {
        if c == "ConcurrentRunsExceededException" {
            return ErrorKind::RunInProgress;
        }
        if THROTTLING.contains(&c) {
            return ErrorKind::Throttling;
        }
        if ACCESS.contains(&c) {
            return ErrorKind::AccessDenied;
        }
        if NOT_FOUND.contains(&c) {
            return ErrorKind::NotFound;
        }
        if VALIDATION.contains(&c) {
            return ErrorKind::Validation;
        }
    }
    match status {
        Some(429) => ErrorKind::Throttling,
        Some(403) => ErrorKind::AccessDenied,
        Some(404) => ErrorKind::NotFound,
        Some(400..=499) => ErrorKind::Client,
        _ => ErrorKind::Server,
    }
}

/// An SDK error, classified, with a readable message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsFailure {
    /// What kind.
    pub kind: ErrorKind,
    /// The operation and what AWS said.
    pub message: String,
}

impl AwsFailure {
    /// Classify an SDK error of `operation`.
    pub fn from_sdk<E, R>(operation: &str, e: &aws_sdk_glue::error::SdkError<E, R>) -> AwsFailure
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + HttpStatus,
    {
        use aws_sdk_glue::error::SdkError;
        let (code, status, msg) = match e {
            SdkError::ServiceError(ctx) => {
                let meta: &ErrorMetadata = ctx.err().meta();
                let status = ctx.raw().status_code();
                (meta.code().map(str::to_string), Some(status), meta.message().unwrap_or("").to_string())
            }
            SdkError::ResponseError(ctx) => (None, Some(ctx.raw().status_code()), format!("{e}")),
            other => (None, None, format!("{other}: {}", source_chain(other))),
        };
        // A request that could not even be built fails the same way every time.
        let kind = match e {
            SdkError::ConstructionFailure(_) => ErrorKind::Validation,
            _ => classify(code.as_deref(), status),
        };
        let code = code.unwrap_or_else(|| status.map_or("no response".into(), |s| format!("HTTP {s}")));
        AwsFailure { kind, message: format!("{operation}: {code} ({}): {msg}", kind.name()) }
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}

/// The HTTP status of a raw SDK response.
pub trait HttpStatus {
    /// The status code.
    fn status_code(&self) -> u16;
}

impl HttpStatus for aws_smithy_runtime_api::http::Response {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

impl From<AwsFailure> for ActError {
    fn from(f: AwsFailure) -> ActError {
        if f.kind.retryable() {
            ActError::Transient(f.message)
        } else {
            ActError::Failed(f.message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_maps_to_retry_or_not() {
        let cases = [
            (Some("ThrottlingException"), Some(400), ErrorKind::Throttling, true),
            (Some("Throttling"), Some(400), ErrorKind::Throttling, true),
            (None, Some(429), ErrorKind::Throttling, true),
            (Some("ConcurrentRunsExceededException"), Some(400), ErrorKind::RunInProgress, false),
            (Some("InternalServiceException"), Some(500), ErrorKind::Server, true),
            (None, Some(503), ErrorKind::Server, true),
            (None, None, ErrorKind::Server, true),
            (Some("AccessDeniedException"), Some(400), ErrorKind::AccessDenied, false),
            (None, Some(403), ErrorKind::AccessDenied, false),
            (Some("EntityNotFoundException"), Some(400), ErrorKind::NotFound, false),
            (Some("InvalidInputException"), Some(400), ErrorKind::Validation, false),
            (Some("ValidationError"), Some(400), ErrorKind::Validation, false),
            (Some("SomethingElse"), Some(400), ErrorKind::Client, false),
        ];
        for (code, status, kind, retry) in cases {
            let k = classify(code, status);
            assert_eq!(k, kind, "{code:?} {status:?}");
            assert_eq!(k.retryable(), retry, "{code:?} {status:?}");
            let e: ActError = AwsFailure { kind: k, message: "m".into() }.into();
            assert_eq!(matches!(e, ActError::Transient(_)), retry);
        }
    }
}
