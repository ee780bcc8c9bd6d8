//! A small blocking HTTP client over wasi:http, for network backends.
//!
//! The host decides which origins a plugin may reach (`repository.grants.hosts`); a refused
//! request fails here with `PermissionDenied`, and the host's error names the missing grant.
//! Connection failures and timeouts are `Transient`, so the host retries them.

use std::io::{Read, Write};

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, FutureIncomingResponse, IncomingBody, Method, OutgoingBody, OutgoingRequest,
    RequestOptions, Scheme,
};
use wasip2::io::streams::OutputStream;

use crate::Error;

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

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
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
        | ErrorCode::HttpRequestBodySize(_)
        | ErrorCode::TlsProtocolError
        | ErrorCode::InternalError(_) => Error::Transient(format!("{what}: {e:?}")),
        other => Error::Other(format!("{what}: {other:?}")),
    }
}

fn split_url(url: &str) -> Result<(Scheme, String, String), Error> {
    let ep = Endpoint::parse(url)?;
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or("");
    let path = match rest.find('/') {
        Some(i) => rest[i..].to_string(),
        None => "/".to_string(),
    };
    Ok((if ep.https { Scheme::Https } else { Scheme::Http }, ep.authority, path))
}

fn build(req: &Request) -> Result<(OutgoingRequest, Option<RequestOptions>), Error> {
    let fields = Fields::new();
    for (k, v) in &req.headers {
        fields.append(k, v.as_bytes()).map_err(|e| Error::Other(format!("header {k}: {e:?}")))?;
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
    let (scheme, authority, path) = split_url(&req.url)?;
    out.set_method(&method).map_err(|_| Error::Other("bad method".into()))?;
    out.set_scheme(Some(&scheme)).map_err(|_| Error::Other("bad scheme".into()))?;
    out.set_authority(Some(&authority)).map_err(|_| Error::Other(format!("bad authority {authority}")))?;
    out.set_path_with_query(Some(&path)).map_err(|_| Error::Other(format!("bad path {path}")))?;
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

fn wait(fut: FutureIncomingResponse, what: &str, limit: usize) -> Result<Response, Error> {
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
    let body = resp.consume().map_err(|_| Error::Other(format!("{what}: body taken twice")))?;
    let mut out = Vec::new();
    {
        let mut stream = body.stream().map_err(|_| Error::Other(format!("{what}: no body stream")))?;
        let mut limited = (&mut stream).take(limit as u64 + 1);
        limited
            .read_to_end(&mut out)
            .map_err(|e| Error::Transient(format!("{what}: reading the response: {e}")))?;
    }
    if out.len() > limit {
        return Err(Error::Other(format!("{what}: response larger than {limit} bytes")));
    }
    let _ = IncomingBody::finish(body);
    Ok(Response { status, headers, body: out })
}

/// Sends a request with a whole body; reads at most `limit` bytes of response body.
pub fn send(req: &Request, body: &[u8], limit: usize) -> Result<Response, Error> {
    let what = format!("{} {}", req.method, req.url);
    let (out, options) = build(req)?;
    let outgoing = out.body().map_err(|_| Error::Other("no request body".into()))?;
    let fut = outgoing_handler::handle(out, options).map_err(|e| map_error(e, &what))?;
    let written = if body.is_empty() {
        Ok(())
    } else {
        let mut stream = outgoing.write().map_err(|_| Error::Other("no body stream".into()))?;
        write_all(&mut stream, body, &what)
    };
    if let Err(e) = written {
        // A refused or failed request closes the body stream; the response future says why.
        drop(outgoing);
        return Err(match wait(fut, &what, 64 << 10) {
            Ok(resp) if resp.status >= 300 => status_error(&resp, &what),
            Ok(_) => e,
            Err(cause) => cause,
        });
    }
    OutgoingBody::finish(outgoing, None).map_err(|e| map_error(e, &what))?;
    wait(fut, &what, limit)
}

fn write_all(stream: &mut OutputStream, data: &[u8], what: &str) -> Result<(), Error> {
    Write::write_all(stream, data).map_err(|e| Error::Transient(format!("{what}: sending: {e}")))?;
    Write::flush(stream).map_err(|e| Error::Transient(format!("{what}: sending: {e}")))
}

/// A request whose body is sent in pieces as they come (an upload that never has to fit
/// in memory). The response is read by [`Streaming::finish`].
pub struct Streaming {
    what: String,
    stream: Option<OutputStream>,
    body: Option<OutgoingBody>,
    fut: Option<FutureIncomingResponse>,
}

impl Streaming {
    pub fn start(req: &Request) -> Result<Streaming, Error> {
        let what = format!("{} {}", req.method, req.url);
        let (out, options) = build(req)?;
        let body = out.body().map_err(|_| Error::Other("no request body".into()))?;
        let fut = outgoing_handler::handle(out, options).map_err(|e| map_error(e, &what))?;
        let stream = body.write().map_err(|_| Error::Other("no body stream".into()))?;
        Ok(Streaming { what, stream: Some(stream), body: Some(body), fut: Some(fut) })
    }

    pub fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        let r = match self.stream.as_mut() {
            Some(s) => write_all(s, data, &self.what),
            None => return Err(Error::Other(format!("{}: body already finished", self.what))),
        };
        if let Err(e) = r {
            // The request failed (refused, reset, answered early): the response says why.
            self.stream = None;
            self.body = None;
            if let Some(fut) = self.fut.take() {
                return Err(match wait(fut, &self.what, 64 << 10) {
                    Ok(resp) if resp.status >= 300 => status_error(&resp, &self.what),
                    Ok(_) => e,
                    Err(cause) => cause,
                });
            }
            return Err(e);
        }
        Ok(())
    }

    pub fn finish(mut self, limit: usize) -> Result<Response, Error> {
        drop(self.stream.take());
        if let Some(body) = self.body.take() {
            OutgoingBody::finish(body, None).map_err(|e| map_error(e, &self.what))?;
        }
        let fut = self.fut.take().ok_or_else(|| Error::Other(format!("{}: finished twice", self.what)))?;
        wait(fut, &self.what, limit)
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

/// Maps an HTTP status to the contract's error, for responses that are not successes.
pub fn status_error(resp: &Response, what: &str) -> Error {
    let detail =
        format!("{what}: HTTP {} {}", resp.status, resp.text().chars().take(300).collect::<String>());
    match resp.status {
        404 => Error::NotFound(detail),
        401 | 403 => Error::PermissionDenied(detail),
        409 | 412 => Error::AlreadyExists(detail),
        429 | 503 => Error::RateLimited(crate::RateLimit {
            retry_after_ms: resp
                .header("retry-after")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| s * 1000),
            message: detail,
        }),
        500..=599 | 408 => Error::Transient(detail),
        _ => Error::Other(detail),
    }
}
