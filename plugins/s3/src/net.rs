//! HTTP pieces the sdk's client does not have: S3 error mapping, a response whose body is
//! read as a stream (a ranged read must not hold a whole object in memory when a server
//! ignores `Range`), and request bodies sent so that an abandoned upload is never stored.
//! Error messages name the operation, never the presigned URL (a short-lived credential).

use std::io::{Read, Write};

use cairn_plugin_sdk::http::{Request, Response};
use cairn_plugin_sdk::{Error, RateLimit};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, FutureIncomingResponse, IncomingBody, Method, OutgoingBody, OutgoingRequest,
    RequestOptions, Scheme,
};
use wasip2::io::streams::{InputStream, OutputStream};

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
pub fn s3_error(resp: &Response, what: &str) -> Error {
    let (code, message) = error_code(&resp.body).unwrap_or_else(|| {
        let text: String = resp.text().chars().take(300).collect();
        (String::new(), text.trim().to_string())
    });
    code_error(resp.status, &code, &message, what, resp.header("retry-after"))
}

/// Sends a request with a whole (small) body and reads the response.
pub fn send(req: &Request, body: &[u8], what: &str) -> Result<Response, Error> {
    BodyRequest::start(req, body, what)?.finish(SMALL_BODY)
}

fn map_error(e: ErrorCode, what: &str) -> Error {
    match e {
        ErrorCode::HttpRequestDenied => {
            Error::PermissionDenied(format!("{what}: the host refused the request (no grant for this host)"))
        }
        ErrorCode::DnsTimeout
        | ErrorCode::DnsError(_)
        | ErrorCode::ConnectionRefused
        | ErrorCode::ConnectionTerminated
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::ConnectionWriteTimeout
        | ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionLimitReached
        | ErrorCode::HttpResponseTimeout
        | ErrorCode::HttpResponseIncomplete
        // What hyper reports when the connection breaks while the body is being sent.
        | ErrorCode::HttpProtocolError
        | ErrorCode::DestinationUnavailable
        | ErrorCode::DestinationIpUnroutable
        | ErrorCode::HttpRequestBodySize(_)
        | ErrorCode::TlsProtocolError
        | ErrorCode::InternalError(_) => Error::Transient(format!("{what}: {e:?}")),
        other => Error::Other(format!("{what}: {other:?}")),
    }
}

/// A response whose body has not been read yet.
pub struct StreamedResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    what: String,
    // Declared before `body`: the stream is a child of the body and is dropped first.
    stream: InputStream,
    _body: IncomingBody,
}

impl StreamedResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Reads up to `max` bytes; fewer only at the end of the body.
    pub fn read_up_to(&mut self, max: u64) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(max.min(SMALL_BODY as u64) as usize);
        (&mut self.stream)
            .take(max)
            .read_to_end(&mut out)
            .map_err(|e| Error::Transient(format!("{}: reading the response: {e}", self.what)))?;
        Ok(out)
    }

    /// Discards up to `n` bytes; returns how many there were.
    pub fn skip(&mut self, n: u64) -> Result<u64, Error> {
        std::io::copy(&mut (&mut self.stream).take(n), &mut std::io::sink())
            .map_err(|e| Error::Transient(format!("{}: reading the response: {e}", self.what)))
    }

    /// Reads a (small) body whole, for error responses.
    pub fn into_response(mut self) -> Result<Response, Error> {
        let body = self.read_up_to(64 << 10)?;
        Ok(Response { status: self.status, headers: std::mem::take(&mut self.headers), body })
    }
}

fn build(req: &Request, what: &str) -> Result<(OutgoingRequest, Option<RequestOptions>), Error> {
    let fields = Fields::new();
    for (k, v) in &req.headers {
        fields.append(k, v.as_bytes()).map_err(|e| Error::Other(format!("{what}: header {k}: {e:?}")))?;
    }
    let out = OutgoingRequest::new(fields);
    let method = match req.method.as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        other => Method::Other(other.to_string()),
    };
    let url = url::Url::parse(&req.url).map_err(|e| Error::Other(format!("{what}: bad URL: {e}")))?;
    let scheme = if url.scheme() == "https" { Scheme::Https } else { Scheme::Http };
    let authority = match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or("")),
        None => url.host_str().unwrap_or("").to_string(),
    };
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    out.set_method(&method).map_err(|_| Error::Other(format!("{what}: bad method")))?;
    out.set_scheme(Some(&scheme)).map_err(|_| Error::Other(format!("{what}: bad scheme")))?;
    out.set_authority(Some(&authority))
        .map_err(|_| Error::Other(format!("{what}: bad authority {authority}")))?;
    out.set_path_with_query(Some(&path)).map_err(|_| Error::Other(format!("{what}: bad path")))?;
    let options = req.timeout_ms.map(|ms| {
        let o = RequestOptions::new();
        let ns = ms * 1_000_000;
        let _ = o.set_connect_timeout(Some(ns));
        let _ = o.set_first_byte_timeout(Some(ns));
        let _ = o.set_between_bytes_timeout(Some(ns));
        o
    });
    Ok((out, options))
}

fn receive(fut: FutureIncomingResponse, what: &str) -> Result<StreamedResponse, Error> {
    fut.subscribe().block();
    let resp = fut
        .get()
        .ok_or_else(|| Error::Transient(format!("{what}: no response")))?
        .map_err(|_| Error::Other(format!("{what}: response taken twice")))?
        .map_err(|e| map_error(e, what))?;
    let status = resp.status();
    let headers = resp
        .headers()
        .entries()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    let incoming = resp.consume().map_err(|_| Error::Other(format!("{what}: body taken twice")))?;
    let stream = incoming.stream().map_err(|_| Error::Other(format!("{what}: no body stream")))?;
    Ok(StreamedResponse { status, headers, what: what.to_string(), stream, _body: incoming })
}

/// Sends a body-less request (GET) and returns the response with its body unread.
pub fn send_streamed(req: &Request, what: &str) -> Result<StreamedResponse, Error> {
    let (out, options) = build(req, what)?;
    let body = out.body().map_err(|_| Error::Other(format!("{what}: no request body")))?;
    let fut = outgoing_handler::handle(out, options).map_err(|e| map_error(e, what))?;
    OutgoingBody::finish(body, None).map_err(|e| map_error(e, what))?;
    receive(fut, what)
}

/// A request whose body is sent in pieces as the host writes them (`Content-Length` set by
/// the caller). Dropping it unfinished makes the connection fail, so the server discards
/// the request.
///
/// The first piece is queued before the request is handed over, so the request head never
/// goes out alone: a server then sees either nothing at all or at least one body byte when
/// an upload is abandoned. (SeaweedFS stores an empty object when a PUT's connection closes
/// right after its head.)
pub struct BodyRequest {
    what: String,
    // Drop order matters: the stream is a child of the body, and dropping the body unfinished
    // (aborting it) must happen before the response future is dropped.
    stream: Option<OutputStream>,
    body: Option<OutgoingBody>,
    fut: Option<FutureIncomingResponse>,
}

impl BodyRequest {
    pub fn start(req: &Request, first: &[u8], what: &str) -> Result<BodyRequest, Error> {
        let (out, options) = build(req, what)?;
        let body = out.body().map_err(|_| Error::Other(format!("{what}: no request body")))?;
        let stream = body.write().map_err(|_| Error::Other(format!("{what}: no body stream")))?;
        let sending =
            |e: wasip2::io::streams::StreamError| Error::Transient(format!("{what}: sending: {e:?}"));
        // Without blocking: nothing reads the body before the request is handed over.
        let budget = stream.check_write().map_err(sending)?;
        let n = (budget.min(first.len() as u64)) as usize;
        if n > 0 {
            stream.write(&first[..n]).map_err(sending)?;
        }
        let fut = outgoing_handler::handle(out, options).map_err(|e| map_error(e, what))?;
        let mut req =
            BodyRequest { what: what.to_string(), stream: Some(stream), body: Some(body), fut: Some(fut) };
        req.write(&first[n..])?;
        Ok(req)
    }

    pub fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| Error::Other(format!("{}: body already finished", self.what)))?;
        // No flush: the data is queued for the connection as it is written, and once the last
        // byte of the Content-Length is sent the connection may already have closed the stream
        // (a flush would then fail although everything went out).
        stream.write_all(data).map_err(|e| Error::Transient(format!("{}: sending: {e}", self.what)))
    }

    /// After a failed write: abandons the body and returns the server's answer if it sent
    /// one (a server may reject a request before reading all of its body).
    pub fn rejection(mut self) -> Option<Response> {
        drop(self.stream.take());
        drop(self.body.take());
        let fut = self.fut.take()?;
        let mut resp = receive(fut, &self.what).ok()?;
        let body = resp.read_up_to(64 << 10).unwrap_or_default();
        Some(Response { status: resp.status, headers: std::mem::take(&mut resp.headers), body })
    }

    /// Ends the body and reads the response, keeping at most `limit` bytes of its body.
    pub fn finish(mut self, limit: usize) -> Result<Response, Error> {
        drop(self.stream.take());
        if let Some(body) = self.body.take() {
            OutgoingBody::finish(body, None).map_err(|e| map_error(e, &self.what))?;
        }
        let fut = self.fut.take().ok_or_else(|| Error::Other(format!("{}: finished twice", self.what)))?;
        let mut resp = receive(fut, &self.what)?;
        let body = resp.read_up_to(limit as u64)?;
        Ok(Response { status: resp.status, headers: std::mem::take(&mut resp.headers), body })
    }
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
