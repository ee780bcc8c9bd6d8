//! The S3 store: object names map to keys `PREFIX + name` in one bucket.
//!
//! Every request is signed with AWS Signature Version 4 by rusty-s3, as a presigned URL
//! (the payload is unsigned), so a body can be streamed without hashing it first.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use cairn_plugin_sdk::http::Request;
use cairn_plugin_sdk::{Capabilities, Error, IncompleteUpload, ListPage, ObjectInfo, check_name};
use percent_encoding::percent_decode_str;
use rusty_s3::actions::ObjectIdentifier;
use rusty_s3::{Bucket, Credentials, Map, S3Action, UrlStyle};

use cairn_plugin_sdk::http::Streaming;

use crate::net::{self, SMALL_BODY};
use crate::xml;

/// How long a presigned URL stays valid (it only has to outlive the request it is made for).
const SIGNATURE_TTL: Duration = Duration::from_secs(3600);
/// Objects larger than this are sent with a multipart upload, smaller ones with one PUT
/// (option `multipart_threshold`).
const MULTIPART_THRESHOLD: u64 = 64 << 20;
/// Size of the parts of a multipart upload (option `part_size`; grown for huge objects, as
/// S3 allows 10,000 parts). S3 refuses parts under 5 MiB except the last.
const PART_SIZE: u64 = 16 << 20;
const MIN_PART_SIZE: u64 = 5 << 20;
const MAX_PARTS: u64 = 10_000;
/// Timeouts of requests that carry a large body, which the host feeds piece by piece.
const UPLOAD_TIMEOUT_MS: u64 = 15 * 60 * 1000;

pub struct Config {
    bucket: Bucket,
    creds: Credentials,
    /// Key prefix, empty or ending with '/'.
    prefix: String,
    /// The server honours `If-None-Match: *` on PUT (the `conditional_put` option).
    conditional: bool,
    multipart_threshold: u64,
    part_size: u64,
    /// Cleared when the server rejects the batch delete call, to use single deletes.
    batch_delete: Cell<bool>,
}

pub type Store = Rc<Config>;

fn bool_option(options: &[(String, String)], name: &str, default: bool) -> Result<bool, Error> {
    match cairn_plugin_sdk::option(options, name).map(str::trim) {
        None | Some("") => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => {
            Err(Error::InvalidConfig(format!("option `{name}` must be true or false, not {other:?}")))
        }
    }
}

/// A size option: a number of bytes, or a number with a KiB, MiB or GiB suffix.
fn size_option(options: &[(String, String)], name: &str, default: u64, min: u64) -> Result<u64, Error> {
    let Some(text) = cairn_plugin_sdk::option(options, name).map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(default);
    };
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, ""),
    };
    let unit = match unit.trim() {
        "" | "B" => Some(1u64),
        "KiB" => Some(1 << 10),
        "MiB" => Some(1 << 20),
        "GiB" => Some(1 << 30),
        _ => None,
    };
    match (digits.parse::<u64>().ok(), unit) {
        (Some(n), Some(unit)) if n.saturating_mul(unit) >= min => Ok(n.saturating_mul(unit)),
        _ => Err(Error::InvalidConfig(format!(
            "option `{name}` must be a size of at least {} MiB like \"16MiB\", not {text:?}",
            min >> 20
        ))),
    }
}

fn required<'a>(options: &'a [(String, String)], name: &str) -> Result<&'a str, Error> {
    match cairn_plugin_sdk::option(options, name).map(str::trim) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(Error::InvalidConfig(format!("option `{name}` is required"))),
    }
}

fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

impl Config {
    pub fn open(options: &[(String, String)]) -> Result<(Store, Capabilities), Error> {
        let config = Config::from_options(options)?;
        config.check_bucket()?;
        let caps = Capabilities {
            ranged_reads: true,
            atomic_put: true,
            conditional_put: config.conditional,
            max_object_size: None,
            preferred_concurrency: 4,
        };
        Ok((Rc::new(config), caps))
    }

    /// Checks the options and builds the configuration, without any request.
    fn from_options(options: &[(String, String)]) -> Result<Config, Error> {
        let endpoint = required(options, "endpoint")?;
        let bucket_name = required(options, "bucket")?;
        let access_key = required(options, "access_key_id")?;
        let secret = required(options, "secret_access_key")?;
        let region = cairn_plugin_sdk::option(options, "region")
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .unwrap_or("us-east-1");
        let path_style = bool_option(options, "path_style", true)?;
        let conditional = bool_option(options, "conditional_put", false)?;
        let multipart_threshold =
            size_option(options, "multipart_threshold", MULTIPART_THRESHOLD, MIN_PART_SIZE)?;
        let part_size = size_option(options, "part_size", PART_SIZE, MIN_PART_SIZE)?;
        let mut prefix =
            cairn_plugin_sdk::option(options, "prefix").unwrap_or("").trim_start_matches('/').to_string();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }

        let url = url::Url::parse(endpoint)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "option `endpoint`: {endpoint:?} is not an http:// or https:// URL with a host"
                ))
            })?;
        let style = if path_style { UrlStyle::Path } else { UrlStyle::VirtualHost };
        let bucket = Bucket::new(url, style, bucket_name.to_string(), region.to_string()).map_err(|e| {
            let hint = if path_style {
                String::new()
            } else {
                " (virtual-host addressing needs a host name, not an IP address; set path_style = true)"
                    .into()
            };
            Error::InvalidConfig(format!("options `endpoint` and `bucket`: no valid bucket URL: {e:?}{hint}"))
        })?;
        Ok(Config {
            bucket,
            creds: Credentials::new(access_key, secret),
            prefix,
            conditional,
            multipart_threshold,
            part_size,
            batch_delete: Cell::new(true),
        })
    }

    /// A cheap call that proves the bucket exists and the credentials work.
    fn check_bucket(&self) -> Result<(), Error> {
        let mut action = self.bucket.list_objects_v2(Some(&self.creds));
        action.with_max_keys(1);
        if !self.prefix.is_empty() {
            action.with_prefix(self.prefix.as_str());
        }
        let url = action.sign(SIGNATURE_TTL).to_string();
        let what = format!("listing bucket {}", self.bucket.name());
        let resp = net::send(&Request::new("GET", url), &[], &what)?;
        if is_success(resp.status) {
            return Ok(());
        }
        match net::s3_error(&resp, &what) {
            Error::NotFound(m) => Err(Error::InvalidConfig(format!(
                "option `bucket`: bucket {:?} not found at the endpoint ({m})",
                self.bucket.name()
            ))),
            Error::PermissionDenied(m) => Err(Error::PermissionDenied(format!(
                "{m} (check options `access_key_id` and `secret_access_key`, and that the key may \
                 list and write the bucket)"
            ))),
            e => Err(e),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name)
    }

    pub fn list(&self, prefix: &str, cursor: Option<&str>, max: u32) -> Result<ListPage, Error> {
        let full_prefix = self.key(prefix);
        let mut action = self.bucket.list_objects_v2(Some(&self.creds));
        action.with_max_keys(max.clamp(1, 1000) as usize);
        if !full_prefix.is_empty() {
            action.with_prefix(full_prefix.as_str());
        }
        // The cursor is `t:` and a continuation token, or `s:` and the last key of the previous
        // page, for servers that truncate a listing without giving a token.
        match cursor {
            Some(c) if c.starts_with("t:") => action.with_continuation_token(&c[2..]),
            Some(c) if c.starts_with("s:") => action.with_start_after(&c[2..]),
            Some(c) => return Err(Error::Other(format!("invalid list cursor {c:?}"))),
            None => {}
        }
        let url = action.sign(SIGNATURE_TTL).to_string();
        let what = format!("listing {full_prefix:?}");
        let resp = net::send(&Request::new("GET", url), &[], &what)?;
        if !is_success(resp.status) {
            return Err(net::s3_error(&resp, &what));
        }
        let root = parse_xml(&resp.body, &what)?;
        let mut objects = Vec::new();
        let mut last_key = None;
        for c in root.all("Contents") {
            let key = key_of(&root, c);
            let size = c
                .text_of("Size")
                .map(|s| s.trim().parse::<u64>())
                .transpose()
                .map_err(|_| Error::Other(format!("{what}: bad size for key {key:?}")))?
                .unwrap_or(0);
            if let Some(name) = key.strip_prefix(self.prefix.as_str())
                && !name.is_empty()
                && !name.ends_with('/')
            {
                objects.push(ObjectInfo { name: name.to_string(), size });
            }
            last_key = Some(key);
        }
        let truncated = root.text_of("IsTruncated").is_some_and(|t| t.trim().eq_ignore_ascii_case("true"));
        let next_cursor = match root.text_of("NextContinuationToken").filter(|t| !t.is_empty()) {
            Some(token) if truncated => Some(format!("t:{token}")),
            _ if truncated => last_key.map(|k| format!("s:{k}")),
            _ => None,
        };
        Ok(ListPage { objects, next_cursor })
    }

    pub fn stat(&self, name: &str) -> Result<ObjectInfo, Error> {
        check_name(name)?;
        let key = self.key(name);
        let url = self.bucket.head_object(Some(&self.creds), &key).sign(SIGNATURE_TTL).to_string();
        let what = format!("stat {key}");
        let resp = net::send(&Request::new("HEAD", url), &[], &what)?;
        if !is_success(resp.status) {
            return Err(net::s3_error(&resp, &what));
        }
        let size = resp
            .header("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| Error::Other(format!("{what}: no Content-Length in the answer")))?;
        Ok(ObjectInfo { name: name.to_string(), size })
    }

    pub fn read(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
        check_name(name)?;
        if len == 0 {
            // Still report a missing object as missing.
            self.stat(name)?;
            return Ok(Vec::new());
        }
        let key = self.key(name);
        let url = self.bucket.get_object(Some(&self.creds), &key).sign(SIGNATURE_TTL).to_string();
        let what = format!("read {key}");
        let last = offset.saturating_add(len - 1);
        let req = Request::new("GET", url).header("range", format!("bytes={offset}-{last}"));
        let mut resp = cairn_plugin_sdk::http::send(&req, &[], &what)?;
        match resp.status {
            // The range starts at or after the end of the object.
            416 => return Ok(Vec::new()),
            200 | 206 => {}
            _ => return Err(net::s3_error(&net::answer(resp), &what)),
        }
        let content_length = resp.header("content-length").and_then(|v| v.trim().parse::<u64>().ok());
        let range = resp.header("content-range").and_then(net::content_range);
        let (data, expected) = match range {
            // A partial answer (rclone sends it with status 200).
            Some((start, end, total)) => {
                if start != offset {
                    return Err(Error::Other(format!(
                        "{what}: asked for bytes from {offset}, the server sent from {start}"
                    )));
                }
                let data = resp.read_up_to(len)?;
                let mut expected = (end + 1).saturating_sub(start).min(len);
                if let Some(total) = total {
                    expected = expected.min(total.saturating_sub(offset));
                }
                (data, Some(expected))
            }
            None if resp.status == 206 => {
                return Err(Error::Other(format!("{what}: partial answer without Content-Range")));
            }
            // The whole object: skip to the range and stop reading after it.
            None => {
                let skipped = resp.skip(offset)?;
                if skipped < offset {
                    if content_length.is_some_and(|n| n > skipped) {
                        return Err(Error::Transient(format!("{what}: the answer was cut short")));
                    }
                    return Ok(Vec::new());
                }
                let data = resp.read_up_to(len)?;
                let expected = content_length.map(|n| n.saturating_sub(offset).min(len));
                (data, expected)
            }
        };
        if let Some(expected) = expected
            && (data.len() as u64) < expected
        {
            return Err(Error::Transient(format!(
                "{what}: the answer was cut short ({} of {expected} bytes)",
                data.len()
            )));
        }
        Ok(data)
    }

    pub fn start_upload(self: &Rc<Self>, name: &str, size: u64, if_absent: bool) -> Result<S3Upload, Error> {
        check_name(name)?;
        let key = self.key(name);
        if if_absent {
            // Early and cheap; the PUT itself is conditional when the server supports it.
            match self.stat(name) {
                Ok(_) => return Err(Error::AlreadyExists(format!("{key} already exists"))),
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let state = if size <= self.multipart_threshold {
            let url = self.bucket.put_object(Some(&self.creds), &key).sign(SIGNATURE_TTL).to_string();
            let mut req = Request::new("PUT", url).header("content-length", size.to_string());
            req.timeout_ms = Some(UPLOAD_TIMEOUT_MS);
            if if_absent && self.conditional {
                req = req.header("if-none-match", "*");
            }
            // Sent with the first piece of data (see `Streaming::start`).
            State::Single { req, body: None }
        } else {
            let url =
                self.bucket.create_multipart_upload(Some(&self.creds), &key).sign(SIGNATURE_TTL).to_string();
            let what = format!("starting the multipart upload of {key}");
            let resp = net::send(&Request::new("POST", url), &[], &what)?;
            if !is_success(resp.status) {
                return Err(net::s3_error(&resp, &what));
            }
            let root = parse_xml(&resp.body, &what)?;
            let upload_id = root
                .text_of("UploadId")
                .filter(|id| !id.is_empty())
                .ok_or_else(|| Error::Other(format!("{what}: no UploadId in the answer")))?
                .to_string();
            let part_size = self.part_size.max(size.div_ceil(MAX_PARTS).next_multiple_of(1 << 20));
            State::Multipart(Multipart { upload_id, part_size, etags: Vec::new(), part: None })
        };
        Ok(S3Upload {
            store: Rc::clone(self),
            key,
            size,
            if_absent,
            written: Cell::new(0),
            state: RefCell::new(Some(state)),
        })
    }

    /// Signs a request rusty-s3 has no action for, on the bucket's URL.
    fn sign_bucket(&self, method: rusty_s3::Method, query: &Map<'_>) -> String {
        rusty_s3::signing::sign(
            &jiff::Timestamp::now(),
            method,
            self.bucket.base_url().clone(),
            self.creds.key(),
            self.creds.secret(),
            self.creds.token(),
            self.bucket.region(),
            SIGNATURE_TTL.as_secs(),
            query.iter(),
            std::iter::empty(),
        )
        .to_string()
    }

    pub fn list_incomplete(&self, prefix: &str) -> Result<Vec<IncompleteUpload>, Error> {
        let full_prefix = self.key(prefix);
        let what = format!("listing the multipart uploads of {full_prefix:?}");
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut query = Map::new();
            query.insert("uploads", "");
            if !full_prefix.is_empty() {
                query.insert("prefix", full_prefix.clone());
            }
            if let Some((key, id)) = &markers {
                query.insert("key-marker", key.clone());
                query.insert("upload-id-marker", id.clone());
            }
            let url = self.sign_bucket(rusty_s3::Method::Get, &query);
            let resp = net::send(&Request::new("GET", url), &[], &what)?;
            if resp.status == 404
                && net::error_code(&resp.body).is_some_and(|(code, _)| code == "NoSuchUpload")
            {
                // rclone serve s3 answers so when the bucket has no unfinished upload at all.
                break;
            }
            if !is_success(resp.status) {
                return Err(net::s3_error(&resp, &what));
            }
            let root = parse_xml(&resp.body, &what)?;
            for u in root.all("Upload") {
                let key = key_of(&root, u);
                let Some(upload_id) = u.text_of("UploadId") else { continue };
                if let Some(name) = key.strip_prefix(self.prefix.as_str())
                    && name.starts_with(prefix)
                {
                    out.push(IncompleteUpload {
                        id: format!("{} {}", encode(name), encode(upload_id)),
                        name: name.to_string(),
                        size: 0,
                    });
                }
            }
            let truncated =
                root.text_of("IsTruncated").is_some_and(|t| t.trim().eq_ignore_ascii_case("true"));
            let next = (
                root.text_of("NextKeyMarker").unwrap_or("").to_string(),
                root.text_of("NextUploadIdMarker").unwrap_or("").to_string(),
            );
            if !truncated || next.0.is_empty() || markers.as_ref() == Some(&next) {
                break;
            }
            markers = Some(next);
        }
        Ok(out)
    }

    pub fn abort_incomplete(&self, id: &str) -> Result<(), Error> {
        let bad = || Error::InvalidName(format!("{id:?} is not an unfinished upload of this backend"));
        let (name, upload_id) = id.split_once(' ').ok_or_else(bad)?;
        let name = percent_decode_str(name).decode_utf8().map_err(|_| bad())?;
        let upload_id = percent_decode_str(upload_id).decode_utf8().map_err(|_| bad())?;
        if name.is_empty() || upload_id.is_empty() {
            return Err(bad());
        }
        self.abort_multipart(&self.key(&name), &upload_id)
    }

    fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), Error> {
        let url = self
            .bucket
            .abort_multipart_upload(Some(&self.creds), key, upload_id)
            .sign(SIGNATURE_TTL)
            .to_string();
        let what = format!("aborting the multipart upload of {key}");
        let resp = net::send(&Request::new("DELETE", url), &[], &what)?;
        if is_success(resp.status) || resp.status == 404 { Ok(()) } else { Err(net::s3_error(&resp, &what)) }
    }

    pub fn delete(&self, names: &[String]) -> Result<(), Error> {
        for name in names {
            check_name(name)?;
        }
        for batch in names.chunks(1000) {
            if !self.batch_delete.get() || !self.delete_batch(batch)? {
                for name in batch {
                    self.delete_one(&self.key(name))?;
                }
            }
        }
        Ok(())
    }

    /// One DeleteObjects call. `Ok(false)` when the server does not support it.
    fn delete_batch(&self, names: &[String]) -> Result<bool, Error> {
        let objects: Vec<ObjectIdentifier> =
            names.iter().map(|n| ObjectIdentifier::new(self.key(n))).collect();
        let mut action = self.bucket.delete_objects(Some(&self.creds), objects.iter());
        action.set_quiet(true);
        let url = action.sign(SIGNATURE_TTL).to_string();
        let (body, md5) = action.body_with_md5();
        let what = format!("deleting {} objects", names.len());
        let req = Request::new("POST", url)
            .header("content-md5", md5)
            .header("content-type", "application/xml")
            .header("content-length", body.len().to_string());
        let resp = net::send(&req, body.as_bytes(), &what)?;
        if matches!(resp.status, 400 | 405 | 411 | 501) {
            // Not every S3 server has the batch call: delete one at a time from now on.
            self.batch_delete.set(false);
            return Ok(false);
        }
        if !is_success(resp.status) {
            return Err(net::s3_error(&resp, &what));
        }
        let root = parse_xml(&resp.body, &what)?;
        if root.name == "Error" {
            return Err(net::code_error(
                resp.status,
                root.text_of("Code").unwrap_or(""),
                root.text_of("Message").unwrap_or(""),
                &what,
                None,
            ));
        }
        for e in root.all("Error") {
            let code = e.text_of("Code").unwrap_or("");
            if code == "NoSuchKey" {
                continue;
            }
            let what = format!("delete {}", e.text_of("Key").unwrap_or(""));
            // Per-key failures come with status 200; the code says what they mean.
            return Err(net::code_error(200, code, e.text_of("Message").unwrap_or(""), &what, None));
        }
        Ok(true)
    }

    fn delete_one(&self, key: &str) -> Result<(), Error> {
        let url = self.bucket.delete_object(Some(&self.creds), key).sign(SIGNATURE_TTL).to_string();
        let what = format!("delete {key}");
        let resp = net::send(&Request::new("DELETE", url), &[], &what)?;
        if is_success(resp.status) || resp.status == 404 { Ok(()) } else { Err(net::s3_error(&resp, &what)) }
    }
}

fn encode(s: &str) -> String {
    cairn_plugin_sdk::http::encode(s, false)
}

/// The `Key` of a listing entry, URL-decoded when the listing says it is encoded.
fn key_of(listing: &xml::Node, entry: &xml::Node) -> String {
    let raw = entry.text_of("Key").unwrap_or("");
    if listing.text_of("EncodingType").is_some_and(|e| e.eq_ignore_ascii_case("url")) {
        percent_decode_str(raw).decode_utf8_lossy().into_owned()
    } else {
        raw.to_string()
    }
}

fn parse_xml(body: &[u8], what: &str) -> Result<xml::Node, Error> {
    let text = std::str::from_utf8(body).map_err(|_| Error::Other(format!("{what}: answer is not UTF-8")))?;
    xml::parse(text).map_err(|e| Error::Other(format!("{what}: {e}")))
}

struct Part {
    stream: Streaming,
    len: u64,
    written: u64,
}

struct Multipart {
    upload_id: String,
    part_size: u64,
    etags: Vec<String>,
    part: Option<Part>,
}

enum State {
    /// One PUT whose body is streamed as the host writes.
    Single { req: Request, body: Option<Streaming> },
    /// A multipart upload, its parts streamed as the host writes.
    Multipart(Multipart),
}

/// One upload in progress. Dropping it without `finish` discards it.
pub struct S3Upload {
    store: Store,
    key: String,
    size: u64,
    if_absent: bool,
    written: Cell<u64>,
    /// `None` once finished or aborted.
    state: RefCell<Option<State>>,
}

impl S3Upload {
    fn closed(&self) -> Error {
        Error::Other(format!("{}: upload already closed", self.key))
    }

    pub fn write(&self, data: &[u8]) -> Result<(), Error> {
        let mut guard = self.state.borrow_mut();
        let state = guard.as_mut().ok_or_else(|| self.closed())?;
        let written = self.written.get();
        if written + data.len() as u64 > self.size {
            return Err(Error::Other(format!(
                "{}: more bytes written than the announced {}",
                self.key, self.size
            )));
        }
        let res = match state {
            State::Single { body: Some(body), .. } => body.write(data),
            State::Single { req, body } if !data.is_empty() => {
                let what = format!("PUT {}", self.key);
                Streaming::start(req, data, &what).map(|b| *body = Some(b))
            }
            State::Single { .. } => Ok(()),
            State::Multipart(m) => self.write_parts(m, data),
        };
        match res {
            Ok(()) => {
                self.written.set(written + data.len() as u64);
                Ok(())
            }
            Err(e) => {
                // The request is broken: find out why from the answer, and give up (the
                // multipart upload is aborted).
                let state = guard.take();
                drop(guard);
                Err(self.explain(state, e))
            }
        }
    }

    /// After a failed body write, the server's answer (if any) says more than the write error.
    fn explain(&self, state: Option<State>, e: Error) -> Error {
        let what = format!("PUT {}", self.key);
        let better = match state {
            Some(State::Single { body: Some(mut body), .. }) => body.rejection().map(net::answer),
            Some(State::Multipart(mut m)) => {
                let r = m.part.take().and_then(|mut p| p.stream.rejection()).map(net::answer);
                let _ = self.store.abort_multipart(&self.key, &m.upload_id);
                r
            }
            _ => None,
        };
        match better {
            Some(resp) if !is_success(resp.status) => net::s3_error(&resp, &what),
            _ => e,
        }
    }

    /// Streams `data` into the parts it belongs to, starting and finishing parts as needed.
    fn write_parts(&self, m: &mut Multipart, mut data: &[u8]) -> Result<(), Error> {
        while !data.is_empty() {
            let number = m.etags.len() + 1;
            let what = format!("PUT {} part {number}", self.key);
            let part = match m.part.as_mut() {
                Some(part) => {
                    let n = ((part.len - part.written) as usize).min(data.len());
                    part.stream.write(&data[..n])?;
                    part.written += n as u64;
                    data = &data[n..];
                    part
                }
                None => {
                    let len = m.part_size.min(self.size - (number as u64 - 1) * m.part_size);
                    let url = self
                        .store
                        .bucket
                        .upload_part(Some(&self.store.creds), &self.key, number as u16, &m.upload_id)
                        .sign(SIGNATURE_TTL)
                        .to_string();
                    let mut req = Request::new("PUT", url).header("content-length", len.to_string());
                    req.timeout_ms = Some(UPLOAD_TIMEOUT_MS);
                    let n = (len as usize).min(data.len());
                    let stream = Streaming::start(&req, &data[..n], &what)?;
                    data = &data[n..];
                    m.part.insert(Part { stream, len, written: n as u64 })
                }
            };
            if part.written == part.len {
                let part = m.part.take().expect("present");
                let resp = part.stream.finish()?.read_all(SMALL_BODY)?;
                if !is_success(resp.status) {
                    return Err(net::s3_error(&resp, &what));
                }
                let etag = resp
                    .header("etag")
                    .ok_or_else(|| Error::Other(format!("{what}: no ETag in the answer")))?;
                m.etags.push(etag.to_string());
            }
        }
        Ok(())
    }

    pub fn finish(&self) -> Result<(), Error> {
        let state = self.state.borrow_mut().take().ok_or_else(|| self.closed())?;
        if self.written.get() != self.size {
            self.discard(state);
            return Err(Error::Other(format!(
                "{}: {} bytes written, {} announced",
                self.key,
                self.written.get(),
                self.size
            )));
        }
        let what = format!("PUT {}", self.key);
        match state {
            State::Single { req, body } => {
                let body = match body {
                    Some(body) => body,
                    // Nothing was written: an empty object.
                    None => Streaming::start(&req, &[], &what)?,
                };
                let resp = body.finish()?.read_all(SMALL_BODY)?;
                self.check_put(&resp, &what)
            }
            State::Multipart(m) => {
                let res = self.complete(&m);
                if res.is_err() {
                    let _ = self.store.abort_multipart(&self.key, &m.upload_id);
                }
                res
            }
        }
    }

    fn check_put(&self, resp: &cairn_plugin_sdk::http::Complete, what: &str) -> Result<(), Error> {
        if is_success(resp.status) {
            // CompleteMultipartUpload can fail with status 200 and an error body.
            if let Some((code, message)) = net::error_code(&resp.body) {
                return Err(net::code_error(resp.status, &code, &message, what, None));
            }
            return Ok(());
        }
        match resp.status {
            412 if self.if_absent => Err(Error::AlreadyExists(format!("{} already exists", self.key))),
            // A concurrent conditional write won: retrying gives a clear answer.
            409 if self.if_absent => Err(Error::Transient(format!("{what}: conflicting conditional write"))),
            _ => Err(net::s3_error(resp, what)),
        }
    }

    fn complete(&self, m: &Multipart) -> Result<(), Error> {
        let store = &self.store;
        let action = store.bucket.complete_multipart_upload(
            Some(&store.creds),
            &self.key,
            &m.upload_id,
            m.etags.iter().map(String::as_str),
        );
        let url = action.sign(SIGNATURE_TTL).to_string();
        let body = action.body();
        let mut req = Request::new("POST", url)
            .header("content-type", "application/xml")
            .header("content-length", body.len().to_string());
        req.timeout_ms = Some(UPLOAD_TIMEOUT_MS);
        if self.if_absent && store.conditional {
            req = req.header("if-none-match", "*");
        }
        let what = format!("completing the multipart upload of {}", self.key);
        let resp = net::send(&req, body.as_bytes(), &what)?;
        self.check_put(&resp, &what)
    }

    /// Throws away what was sent: an unfinished request body is never stored, and a
    /// multipart upload is aborted.
    fn discard(&self, state: State) {
        match state {
            State::Single { body, .. } => drop(body),
            State::Multipart(mut m) => {
                drop(m.part.take());
                let _ = self.store.abort_multipart(&self.key, &m.upload_id);
            }
        }
    }

    pub fn abort(&self) {
        if let Some(state) = self.state.borrow_mut().take() {
            self.discard(state);
        }
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        self.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn sizes() {
        let min = MIN_PART_SIZE;
        assert_eq!(size_option(&opts(&[]), "part_size", 7, min).unwrap(), 7);
        assert_eq!(size_option(&opts(&[("part_size", "8MiB")]), "part_size", 7, min).unwrap(), 8 << 20);
        assert_eq!(size_option(&opts(&[("part_size", "1GiB")]), "part_size", 7, min).unwrap(), 1 << 30);
        assert_eq!(size_option(&opts(&[("part_size", "6291456")]), "part_size", 7, min).unwrap(), 6 << 20);
        for bad in ["4MiB", "5MB", "lots", "-5MiB", "5.5MiB"] {
            let err = size_option(&opts(&[("part_size", bad)]), "part_size", 7, min).unwrap_err();
            assert!(matches!(&err, Error::InvalidConfig(m) if m.contains("part_size")), "{bad}: {err:?}");
        }
    }

    fn config(extra: &[(&str, &str)]) -> Result<Config, Error> {
        let mut pairs = vec![
            ("endpoint", "https://s3.example.com:9000"),
            ("bucket", "backups"),
            ("access_key_id", "AK"),
            ("secret_access_key", "SK"),
        ];
        // Later entries replace earlier ones of the same name.
        pairs.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
        pairs.extend_from_slice(extra);
        Config::from_options(&opts(&pairs))
    }

    #[test]
    fn addressing_and_prefix() {
        let path = config(&[("prefix", "/laptop")]).unwrap();
        let url = path.bucket.get_object(Some(&path.creds), &path.key("config")).sign(SIGNATURE_TTL);
        assert_eq!(url.host_str(), Some("s3.example.com"));
        assert!(url.path().starts_with("/backups/laptop/config"), "{url}");
        assert!(url.query().unwrap().contains("X-Amz-Signature="), "{url}");
        assert!(url.query().unwrap().contains("us-east-1"), "{url}");

        let vhost = config(&[("path_style", "false"), ("region", "eu-west-3")]).unwrap();
        let url = vhost.bucket.get_object(Some(&vhost.creds), &vhost.key("config")).sign(SIGNATURE_TTL);
        assert_eq!(url.host_str(), Some("backups.s3.example.com"));
        assert_eq!(url.port(), Some(9000));
        assert_eq!(url.path(), "/config");
        assert!(url.query().unwrap().contains("eu-west-3"), "{url}");
    }

    #[test]
    fn bad_options_name_the_option() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("path_style", "yes")], "path_style"),
            (&[("endpoint", "ftp://x")], "endpoint"),
            (&[("conditional_put", "1")], "conditional_put"),
            (&[("part_size", "1MiB")], "part_size"),
            (&[("bucket", " ")], "bucket"),
        ];
        for (extra, option) in cases {
            match config(extra) {
                Err(Error::InvalidConfig(m)) => assert!(m.contains(option), "{option}: {m}"),
                other => panic!("{option}: {:?}", other.err()),
            }
        }
    }
}
