//! S3 over the sdk's HTTP client: S3 error codes mapped to the contract's errors, small
//! requests read whole, and `Content-Range` parsing. Error messages name the operation,
//! never the presigned URL (a short-lived credential).

use cairn_plugin_sdk::http::{self, Complete, Request, Response};
use cairn_plugin_sdk::{Error, RateLimit};

use crate::xml;

/// Most bytes of an error or listing response body kept in memory.
pub const SMALL_BODY: usize = 16 << 20;

/// The S3 error code and message of an `<Error>` body, if it is one.
pub fn error_code(body: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(body).ok()?;
    if !text.contains("<Error") {
        return None;
    }
    let root = xml::parse(text).ok()?;
    if root.name != "Error" {
        return None;
    }
    Some((root.text_of("Code").unwrap_or("").to_string(), root.text_of("Message").unwrap_or("").to_string()))
}

/// Maps an S3 error code from an error body (also sent with status 200 by some calls).
pub fn code_error(status: u16, code: &str, message: &str, what: &str, retry_after: Option<&str>) -> Error {
    let detail = if code.is_empty() && message.is_empty() {
        format!("{what}: HTTP {status}")
    } else {
        format!("{what}: HTTP {status} {code}: {message}")
    };
    let retry_after_ms = retry_after.and_then(|v| v.trim().parse::<u64>().ok()).map(|s| s * 1000);
    match (status, code) {
        (_, "SlowDown") | (429, _) | (503, _) => {
            Error::RateLimited(RateLimit { retry_after_ms, message: detail })
        }
        (404, _) | (_, "NoSuchKey") | (_, "NoSuchUpload") | (_, "NoSuchBucket") => Error::NotFound(detail),
        (401 | 403, _) | (_, "AccessDenied") => Error::PermissionDenied(detail),
        (_, "InternalError" | "RequestTimeout" | "ServiceUnavailable" | "OperationAborted")
        | (408, _)
        | (500..=599, _) => Error::Transient(detail),
        _ => Error::Other(detail),
    }
}

/// The contract's error for a response that is not a success.
pub fn s3_error(resp: &Complete, what: &str) -> Error {
    let (code, message) = error_code(&resp.body).unwrap_or_else(|| {
        let text: String = resp.text().chars().take(300).collect();
        (String::new(), text.trim().to_string())
    });
    code_error(resp.status, &code, &message, what, resp.header("retry-after"))
}

/// Sends a request with a whole (small) body and reads the (small) answer whole.
pub fn send(req: &Request, body: &[u8], what: &str) -> Result<Complete, Error> {
    http::send(req, body, what)?.read_all(SMALL_BODY)
}

/// The status, headers and the start of the body of an answer, enough to say what failed.
pub fn answer(mut resp: Response) -> Complete {
    let body = resp.read_up_to(64 << 10).unwrap_or_default();
    Complete { status: resp.status, headers: std::mem::take(&mut resp.headers), body }
}

/// Parses `Content-Range: bytes START-END/TOTAL` (TOTAL may be `*`).
pub fn content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start.trim().parse().ok()?, end.trim().parse().ok()?, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_range() {
        assert_eq!(content_range("bytes 1-3/6"), Some((1, 3, Some(6))));
        assert_eq!(content_range("bytes 0-9/*"), Some((0, 9, None)));
        assert_eq!(content_range("bytes */6"), None);
    }

    #[test]
    fn maps_codes() {
        assert!(matches!(
            code_error(503, "SlowDown", "", "x", Some("2")),
            Error::RateLimited(RateLimit { retry_after_ms: Some(2000), .. })
        ));
        assert!(matches!(
            code_error(403, "SignatureDoesNotMatch", "", "x", None),
            Error::PermissionDenied(_)
        ));
        assert!(matches!(code_error(500, "InternalError", "", "x", None), Error::Transient(_)));
        assert!(matches!(code_error(400, "InvalidPart", "", "x", None), Error::Other(_)));
        let body = b"<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>gone</Message></Error>";
        assert_eq!(error_code(body), Some(("NoSuchKey".into(), "gone".into())));
    }
}
