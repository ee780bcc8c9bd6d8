//! A small blocking HTTP client over wasi:http, for network backends.
//!
//! Bodies stream both ways, so an object never has to fit in a plugin's memory: a response
//! body is read on demand ([`Response`] implements [`Read`]), and a request body is sent in
//! pieces across calls ([`Streaming`]).
//!
//! The host decides which origins a plugin may reach (`repository.grants.hosts`); a refused
//! request fails here with `PermissionDenied`, and the host's error names the missing grant.
//! Connection failures and timeouts are `Transient`, so the host retries them.
//!
//! Every call takes a `what` that names the operation in error messages; callers whose URLs
//! carry credentials (presigned S3 URLs) give one without the URL.

use std::io::{self, Read};

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, FutureIncomingResponse, IncomingBody, IncomingResponse, Method, OutgoingBody,
    OutgoingRequest, RequestOptions, Scheme,
};
use wasip2::io::streams::{InputStream, OutputStream, StreamError};

use crate::{Error, RateLimit};

/// A parsed `http(s)://host:port/base` endpoint.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub https: bool,
    /// `host` or `host:port`, as sent in the request.
    pub authority: String,
    /// Path prefix without a trailing slash ("" for the root).
    pub base_path: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, Error> {
        let bad = || Error::InvalidConfig(format!("{url:?} is not an http:// or https:// URL"));
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad());
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(bad());
        }
        Ok(Endpoint {
            https,
            authority: authority.to_string(),
            base_path: path.trim_end_matches('/').to_string(),
        })
    }

    /// The full URL of `path_and_query` (which starts with '/').
    pub fn url(&self, path_and_query: &str) -> String {
        format!(
            "{}://{}{}{}",
            if self.https { "https" } else { "http" },
            self.authority,
            self.base_path,
            path_and_query
        )
    }
}

/// A request to send.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// A full `http(s)://authority/path?query` URL.
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// Per-request timeouts, in milliseconds (connect, first byte, between bytes).
    pub timeout_ms: Option<u64>,
}

impl Request {
    pub fn new(method: &str, url: impl Into<String>) -> Request {
        Request { method: method.to_string(), url: url.into(), headers: Vec::new(), timeout_ms: Some(60_000) }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Request {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }
}

/// A response read whole (see [`Response::read_all`]).
#[derive(Debug)]
pub struct Complete {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Complete {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// The contract's error for an HTTP status that is not a success; `detail` already names
/// the operation and the status.
pub fn status_error(status: u16, retry_after: Option<&str>, detail: String) -> Error {
    match status {
        404 | 410 => Error::NotFound(detail),
        401 | 403 => Error::PermissionDenied(detail),
        429 | 503 => Error::RateLimited(RateLimit {
            retry_after_ms: retry_after
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| s.saturating_mul(1000)),
            message: detail,
        }),
        // 423 Locked: WebDAV servers lock a collection while another request creates or
        // fills it (rclone answers so to concurrent MKCOLs); it passes.
        408 | 423 | 500..=599 => Error::Transient(detail),
        _ => Error::Other(detail),
    }
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
    let ep = Endpoint::parse(&req.url)?;
    let rest = req.url.split_once("://").map(|(_, r)| r).unwrap_or("");
    let path = rest.find('/').map(|i| &rest[i..]).unwrap_or("/");
    let scheme = if ep.https { Scheme::Https } else { Scheme::Http };
    out.set_method(&method).map_err(|_| Error::Other(format!("{what}: bad method {}", req.method)))?;
    out.set_scheme(Some(&scheme)).map_err(|_| Error::Other(format!("{what}: bad scheme")))?;
    out.set_authority(Some(&ep.authority))
        .map_err(|_| Error::InvalidConfig(format!("{what}: bad authority {}", ep.authority)))?;
    out.set_path_with_query(Some(path)).map_err(|_| Error::InvalidName(format!("{what}: bad path")))?;
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

/// A response whose body is read on demand (it implements [`Read`]).
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    what: String,
    // Child resources must go before their parents: stream, body, response, future.
    stream: Option<InputStream>,
    body: Option<IncomingBody>,
    resp: Option<IncomingResponse>,
    fut: Option<FutureIncomingResponse>,
}

impl Drop for Response {
    fn drop(&mut self) {
        drop(self.stream.take());
        drop(self.body.take());
        drop(self.resp.take());
        drop(self.fut.take());
    }
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    fn reading(&self, e: io::Error) -> Error {
        Error::Transient(format!("{}: reading the response: {e}", self.what))
    }

    /// Reads up to `max` bytes; fewer only at the end of the body.
    pub fn read_up_to(&mut self, max: u64) -> Result<Vec<u8>, Error> {
        // Sized once from Content-Length when there is one: growing by doubling would make
        // the instance's memory (which never shrinks) peak at 1.5 times the body.
        let announced = self.header("content-length").and_then(|v| v.trim().parse::<u64>().ok());
        let mut out = Vec::with_capacity(max.min(announced.unwrap_or(1 << 20)).min(64 << 20) as usize);
        (&mut *self).take(max).read_to_end(&mut out).map_err(|e| self.reading(e))?;
        Ok(out)
    }

    /// Discards up to `n` bytes; returns how many there were.
    pub fn skip(&mut self, n: u64) -> Result<u64, Error> {
        io::copy(&mut (&mut *self).take(n), &mut io::sink()).map_err(|e| self.reading(e))
    }

    /// Reads the whole body, which must not be larger than `limit` bytes.
    pub fn read_all(mut self, limit: usize) -> Result<Complete, Error> {
        let body = self.read_up_to(limit as u64 + 1)?;
        if body.len() > limit {
            return Err(Error::Other(format!("{}: response larger than {limit} bytes", self.what)));
        }
        Ok(Complete { status: self.status, headers: std::mem::take(&mut self.headers), body })
    }

    /// The start of the body, as one short line of text, for error messages.
    pub fn excerpt(&mut self) -> String {
        let mut buf = Vec::new();
        let _ = (&mut *self).take(2048).read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        let mut out = String::new();
        for word in text.split_whitespace() {
            if out.len() > 200 {
                out.push_str(" ...");
                break;
            }
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(word);
        }
        out
    }

    /// The contract's error for a response that is not a success.
    pub fn error(&mut self, what: &str) -> Error {
        let excerpt = self.excerpt();
        let detail = if excerpt.is_empty() {
            format!("{what}: HTTP {}", self.status)
        } else {
            format!("{what}: HTTP {}: {excerpt}", self.status)
        };
        status_error(self.status, self.header("retry-after"), detail)
    }
}

/// Most bytes asked of the host per stream read: the host sizes its buffer by the request,
/// and a large spare capacity would make every read allocate that much.
const READ_CHUNK: usize = 256 << 10;

impl Read for Response {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(READ_CHUNK);
        match self.stream.as_mut() {
            Some(s) => s.read(&mut buf[..n]),
            None => Ok(0),
        }
    }
}

type Got = Option<Result<Result<IncomingResponse, ErrorCode>, ()>>;

fn wait(fut: FutureIncomingResponse, what: String) -> Result<Response, Error> {
    fut.subscribe().block();
    let got = fut.get();
    into_response(fut, got, what)
}

fn into_response(fut: FutureIncomingResponse, got: Got, what: String) -> Result<Response, Error> {
    let resp = got
        .ok_or_else(|| Error::Transient(format!("{what}: no response")))?
        .map_err(|_| Error::Other(format!("{what}: response taken twice")))?
        .map_err(|e| map_error(e, &what))?;
    let status = resp.status();
    let headers = resp
        .headers()
        .entries()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    let body = resp.consume().map_err(|_| Error::Other(format!("{what}: body taken twice")))?;
    let stream = body.stream().map_err(|_| Error::Other(format!("{what}: no body stream")))?;
    Ok(Response {
        status,
        headers,
        what,
        stream: Some(stream),
        body: Some(body),
        resp: Some(resp),
        fut: Some(fut),
    })
}

/// Sends a request with a whole (small) body and returns the response, body unread. A
/// server that answers before reading the whole body (often to refuse it) is heard.
pub fn send(req: &Request, body: &[u8], what: &str) -> Result<Response, Error> {
    // A known length keeps the body from being sent chunked, which some servers refuse.
    let mut req = req.clone();
    if !req.headers.iter().any(|(k, _)| k == "content-length") {
        req.headers.push(("content-length".into(), body.len().to_string()));
    }
    Streaming::start(&req, body, what)?.finish()
}

fn send_error(what: &str, e: StreamError) -> Error {
    Error::Transient(match e {
        StreamError::Closed => format!("{what}: sending: the connection was closed"),
        StreamError::LastOperationFailed(e) => format!("{what}: sending: {}", e.to_debug_string()),
    })
}

/// Writes `data` without flushing: a flush can find the stream closed by the host once a
/// body with a Content-Length is complete (the last bytes are already on their way), which is
/// not a failure. `OutgoingBody::finish` and the response tell whether everything arrived.
fn write_all(stream: &OutputStream, mut data: &[u8], what: &str) -> Result<(), Error> {
    while !data.is_empty() {
        let permit = stream.check_write().map_err(|e| send_error(what, e))?;
        if permit == 0 {
            stream.subscribe().block();
            continue;
        }
        let n = data.len().min(usize::try_from(permit).unwrap_or(usize::MAX));
        stream.write(&data[..n]).map_err(|e| send_error(what, e))?;
        data = &data[n..];
    }
    Ok(())
}

/// A request whose body is sent in pieces, across calls (an upload that never has to fit
/// in memory). Dropping it unfinished makes the connection fail, so the server discards
/// the request.
pub struct Streaming {
    what: String,
    /// Why sending failed; then only the server's answer (if any) can say more.
    failed: Option<String>,
    // Child before parent: the stream belongs to the body, and dropping the body unfinished
    // (aborting it) must happen before the response future is dropped.
    stream: Option<OutputStream>,
    body: Option<OutgoingBody>,
    fut: Option<FutureIncomingResponse>,
}

impl Streaming {
    /// Starts the request with the first piece of its body already queued, so the request
    /// head never goes out alone: a server then sees either nothing at all or at least one
    /// body byte when an upload is abandoned. (SeaweedFS stores an empty object when a PUT's
    /// connection closes right after its head.)
    pub fn start(req: &Request, first: &[u8], what: &str) -> Result<Streaming, Error> {
        let (out, options) = build(req, what)?;
        let body = out.body().map_err(|_| Error::Other(format!("{what}: no request body")))?;
        let stream = body.write().map_err(|_| Error::Other(format!("{what}: no body stream")))?;
        // Without blocking: nothing reads the body before the request is handed over.
        let budget = stream.check_write().map_err(|e| send_error(what, e))?;
        let n = budget.min(first.len() as u64) as usize;
        if n > 0 {
            stream.write(&first[..n]).map_err(|e| send_error(what, e))?;
        }
        let fut = outgoing_handler::handle(out, options).map_err(|e| map_error(e, what))?;
        let mut s = Streaming {
            what: what.to_string(),
            failed: None,
            stream: Some(stream),
            body: Some(body),
            fut: Some(fut),
        };
        // A failure here shows at the next `write` or at `finish`, with the server's answer.
        let _ = s.write(&first[n..]);
        Ok(s)
    }

    /// Sends more of the body. After a failure, [`Streaming::finish`] or
    /// [`Streaming::rejection`] give the server's answer if it sent one.
    pub fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        if let Some(why) = &self.failed {
            return Err(Error::Transient(why.clone()));
        }
        let Some(stream) = self.stream.as_ref() else {
            return Err(Error::Other(format!("{}: body already finished", self.what)));
        };
        write_all(stream, data, &self.what).inspect_err(|e| self.failed = Some(message(e)))
    }

    /// Ends the body and waits for the response. If sending failed, the server's answer
    /// when it gave one, else the sending error.
    pub fn finish(mut self) -> Result<Response, Error> {
        if let Some(why) = self.failed.take() {
            return self.rejection().ok_or(Error::Transient(why));
        }
        drop(self.stream.take());
        if let Some(body) = self.body.take() {
            OutgoingBody::finish(body, None).map_err(|e| map_error(e, &self.what))?;
        }
        let fut = self.fut.take().ok_or_else(|| Error::Other(format!("{}: finished twice", self.what)))?;
        wait(fut, std::mem::take(&mut self.what))
    }

    /// Abandons the body and returns the server's answer if it gives one within two seconds
    /// (a server may refuse a request before reading its whole body).
    pub fn rejection(&mut self) -> Option<Response> {
        drop(self.stream.take());
        drop(self.body.take());
        let fut = self.fut.take()?;
        settle(&fut);
        let got = fut.get();
        got.as_ref()?;
        into_response(fut, got, self.what.clone()).ok()
    }

    /// Abandons the request: the body is dropped unfinished, which the host's HTTP client
    /// treats as corrupted and aborts. Waits briefly for the connection to settle so the
    /// server has stopped writing before a following DELETE of what it stored.
    pub fn abort(mut self) {
        drop(self.stream.take());
        drop(self.body.take());
        if let Some(fut) = self.fut.take() {
            settle(&fut);
        }
    }
}

/// Waits up to two seconds for a response (or the connection's failure).
fn settle(fut: &FutureIncomingResponse) {
    let done = fut.subscribe();
    let timer = wasip2::clocks::monotonic_clock::subscribe_duration(2_000_000_000);
    wasip2::io::poll::poll(&[&done, &timer]);
}

fn message(e: &Error) -> String {
    match e {
        Error::Transient(m) | Error::Other(m) => m.clone(),
        other => format!("{other:?}"),
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        drop(self.stream.take());
        drop(self.body.take());
        drop(self.fut.take());
    }
}

/// Percent-encodes a path segment or query value (RFC 3986 unreserved characters stay).
pub fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_the_contract() {
        let e = |status, retry_after| status_error(status, retry_after, String::new());
        assert!(matches!(e(404, None), Error::NotFound(_)));
        assert!(matches!(e(403, None), Error::PermissionDenied(_)));
        assert!(matches!(e(423, None), Error::Transient(_)));
        assert!(matches!(e(502, None), Error::Transient(_)));
        assert!(matches!(e(400, None), Error::Other(_)));
        assert!(matches!(
            e(429, Some("3")),
            Error::RateLimited(RateLimit { retry_after_ms: Some(3000), .. })
        ));
    }

    #[test]
    fn endpoints_parse() {
        let ep = Endpoint::parse("https://dav.example.com:8443/base/dir/").unwrap();
        assert!(ep.https);
        assert_eq!(ep.authority, "dav.example.com:8443");
        assert_eq!(ep.url("/x"), "https://dav.example.com:8443/base/dir/x");
        assert!(Endpoint::parse("ftp://x").is_err());
        assert!(Endpoint::parse("http:///path").is_err());
        assert_eq!(encode("a b/c", true), "a%20b/c");
    }
}
