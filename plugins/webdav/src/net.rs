//! HTTP over wasi:http with streamed response bodies and streamed request bodies.
//!
//! The sdk's helper reads whole responses into memory and refuses bodies over a limit; a
//! WebDAV backend needs more: a multistatus listing is parsed as it arrives, a ranged read
//! answered with the whole file (200) is skipped to the offset without holding the file, and
//! an error page of any size still yields its status. Request building and error mapping
//! follow the sdk's client.

use std::io::{self, Read};

use cairn_plugin_sdk::http::{Endpoint, Request};
use cairn_plugin_sdk::{Error, RateLimit};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, FutureIncomingResponse, IncomingBody, IncomingResponse, Method, OutgoingBody,
    OutgoingRequest, RequestOptions, Scheme,
};
use wasip2::io::streams::{InputStream, OutputStream, StreamError};

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

fn build(req: &Request) -> Result<(OutgoingRequest, Option<RequestOptions>), Error> {
    let fields = Fields::new();
    for (k, v) in &req.headers {
        fields.append(k, v.as_bytes()).map_err(|e| Error::Other(format!("header {k}: {e:?}")))?;
    }
    let out = OutgoingRequest::new(fields);
    let method = match req.method.as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        other => Method::Other(other.to_string()),
    };
    let ep = Endpoint::parse(&req.url)?;
    let rest = req.url.split_once("://").map(|(_, r)| r).unwrap_or("");
    let path = rest.find('/').map(|i| &rest[i..]).unwrap_or("/");
    let scheme = if ep.https { Scheme::Https } else { Scheme::Http };
    out.set_method(&method).map_err(|_| Error::Other(format!("bad method {}", req.method)))?;
    out.set_scheme(Some(&scheme)).map_err(|_| Error::Other("bad scheme".into()))?;
    out.set_authority(Some(&ep.authority))
        .map_err(|_| Error::InvalidConfig(format!("bad authority {}", ep.authority)))?;
    out.set_path_with_query(Some(path)).map_err(|_| Error::InvalidName(format!("bad path {path}")))?;
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

fn what_of(req: &Request) -> String {
    format!("{} {}", req.method, req.url)
}

/// A response whose body is read on demand (it implements [`Read`]).
pub struct Response {
    pub status: u16,
    headers: Vec<(String, String)>,
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
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
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
        match self.status {
            404 | 410 => Error::NotFound(detail),
            401 | 403 => Error::PermissionDenied(detail),
            429 | 503 => Error::RateLimited(RateLimit {
                retry_after_ms: self
                    .header("retry-after")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|s| s.saturating_mul(1000)),
                message: detail,
            }),
            408 | 500..=599 => Error::Transient(detail),
            _ => Error::Other(detail),
        }
    }
}

impl Read for Response {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.stream.as_mut() {
            Some(s) => s.read(buf),
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
    Ok(Response { status, headers, stream: Some(stream), body: Some(body), resp: Some(resp), fut: Some(fut) })
}

/// Sends a request with a whole (small) body and returns the response, body unread.
pub fn send(req: &Request, body: &[u8]) -> Result<Response, Error> {
    let what = what_of(req);
    // A known length keeps the body from being sent chunked, which some servers refuse.
    let mut req = req.clone();
    if !req.headers.iter().any(|(k, _)| k == "content-length") {
        req.headers.push(("content-length".into(), body.len().to_string()));
    }
    let (out, options) = build(&req)?;
    let outgoing = out.body().map_err(|_| Error::Other("no request body".into()))?;
    let fut = outgoing_handler::handle(out, options).map_err(|e| map_error(e, &what))?;
    // An empty body is not written at all: flushing one can find the stream already closed
    // by a server that answered without waiting for it.
    let sent = if body.is_empty() {
        Ok(())
    } else {
        match outgoing.write() {
            Ok(stream) => write_all(&stream, body, &what),
            Err(_) => Err(Error::Other("no body stream".into())),
        }
    };
    let finished = OutgoingBody::finish(outgoing, None).map_err(|e| map_error(e, &what));
    match (wait(fut, what), sent.and(finished)) {
        // A server may answer (often with an error) before reading the whole body.
        (Ok(resp), _) => Ok(resp),
        (Err(_), Err(e)) => Err(e),
        (Err(e), Ok(())) => Err(e),
    }
}

/// Writes `data` without flushing: a flush can find the stream closed by the host once a
/// body with a Content-Length is complete (the last bytes are already on their way), which is
/// not a failure. `OutgoingBody::finish` and the response tell whether everything arrived.
fn write_all(stream: &OutputStream, mut data: &[u8], what: &str) -> Result<(), Error> {
    let failed = |e: StreamError| {
        Error::Transient(match e {
            StreamError::Closed => format!("{what}: sending: the connection was closed"),
            StreamError::LastOperationFailed(e) => format!("{what}: sending: {}", e.to_debug_string()),
        })
    };
    while !data.is_empty() {
        let permit = stream.check_write().map_err(failed)?;
        if permit == 0 {
            stream.subscribe().block();
            continue;
        }
        let n = data.len().min(usize::try_from(permit).unwrap_or(usize::MAX));
        stream.write(&data[..n]).map_err(failed)?;
        data = &data[n..];
    }
    Ok(())
}

/// A request whose body is sent in pieces, across calls.
pub struct Streaming {
    what: String,
    // Child before parent: the stream belongs to the body.
    stream: Option<OutputStream>,
    body: Option<OutgoingBody>,
    fut: Option<FutureIncomingResponse>,
}

impl Streaming {
    pub fn start(req: &Request) -> Result<Streaming, Error> {
        let what = what_of(req);
        let (out, options) = build(req)?;
        let body = out.body().map_err(|_| Error::Other("no request body".into()))?;
        let fut = outgoing_handler::handle(out, options).map_err(|e| map_error(e, &what))?;
        let stream = body.write().map_err(|_| Error::Other("no body stream".into()))?;
        Ok(Streaming { what, stream: Some(stream), body: Some(body), fut: Some(fut) })
    }

    pub fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        match self.stream.as_mut() {
            Some(s) => write_all(s, data, &self.what),
            None => Err(Error::Other(format!("{}: body already finished", self.what))),
        }
    }

    /// Ends the body and waits for the response.
    pub fn finish(mut self) -> Result<Response, Error> {
        drop(self.stream.take());
        if let Some(body) = self.body.take() {
            OutgoingBody::finish(body, None).map_err(|e| map_error(e, &self.what))?;
        }
        let fut = self.fut.take().ok_or_else(|| Error::Other(format!("{}: finished twice", self.what)))?;
        wait(fut, std::mem::take(&mut self.what))
    }

    /// The server's answer if it already gave one (a server may refuse a request before
    /// reading its whole body).
    pub fn early_response(&mut self) -> Option<Response> {
        let got = self.fut.as_ref()?.get()?;
        drop(self.stream.take());
        drop(self.body.take());
        let fut = self.fut.take()?;
        into_response(fut, Some(got), self.what.clone()).ok()
    }

    /// Abandons the request: the body is dropped unfinished, which the host's HTTP client
    /// treats as corrupted and aborts. Waits briefly for the connection to settle so the
    /// server has stopped writing before a following DELETE of what it stored.
    pub fn abort(mut self) {
        drop(self.stream.take());
        drop(self.body.take());
        if let Some(fut) = self.fut.take() {
            {
                let done = fut.subscribe();
                let timer = wasip2::clocks::monotonic_clock::subscribe_duration(2_000_000_000);
                wasip2::io::poll::poll(&[&done, &timer]);
            }
            drop(fut);
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        drop(self.stream.take());
        drop(self.body.take());
        drop(self.fut.take());
    }
}
