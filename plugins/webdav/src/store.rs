//! The WebDAV store: object names map to files below the base collection (the `url` option).
//!
//! Uploads are PUT, streamed, to a hidden temporary file beside their final name
//! (`.NAME.cairn-upload-RANDOM`) and then MOVEd into place (`Overwrite: F` for `if-absent`),
//! so an object is either absent or complete under its final name even on servers that
//! expose a PUT while it is still arriving.

use std::cell::RefCell;
use std::collections::HashSet;
use std::io::{BufReader, Read};
use std::rc::Rc;

use cairn_plugin_sdk::http::{self, Endpoint, Request, Response, Streaming, encode};
use cairn_plugin_sdk::{
    Capabilities, Error, IncompleteUpload, ListPage, ObjectInfo, check_name, valid_name, valid_segment,
};

use crate::dav::{self, DavEntry};

const UPLOAD_MARKER: &str = ".cairn-upload-";
/// Object names have a few segments; deeper trees are foreign and not walked.
const MAX_DEPTH: usize = 16;
/// Timeout of ordinary requests (connect, first byte, between bytes).
const TIMEOUT_MS: u64 = 60_000;
/// Attempts at reaching the base collection in `open`.
const OPEN_ATTEMPTS: u64 = 3;
/// An upload's response comes only after its whole body was sent.
const UPLOAD_TIMEOUT_MS: u64 = 600_000;

/// A member of a collection: name, is a collection, size.
type Member = (String, bool, u64);

/// The connection settings and what this instance learned about the server.
pub struct Client {
    ep: Endpoint,
    auth: Option<String>,
    /// Collections (relative paths without a trailing slash) known to exist.
    dirs: RefCell<HashSet<String>>,
}

impl Client {
    /// The URL of a file `rel` below the base.
    fn url(&self, rel: &str) -> String {
        self.ep.url(&format!("/{}", encode(rel, true)))
    }

    /// The URL of a collection `dir` below the base ("" is the base), with a trailing slash.
    fn dir_url(&self, dir: &str) -> String {
        let dir = dir.trim_end_matches('/');
        if dir.is_empty() { self.ep.url("/") } else { self.ep.url(&format!("/{}/", encode(dir, true))) }
    }

    fn request(&self, method: &str, url: String) -> Request {
        let mut req = Request::new(method, url);
        req.timeout_ms = Some(TIMEOUT_MS);
        if let Some(auth) = &self.auth {
            req = req.header("authorization", auth.clone());
        }
        req
    }

    fn send(&self, req: Request, body: &[u8]) -> Result<Response, Error> {
        let what = format!("{} {}", req.method, req.url);
        http::send(&req, body, &what)
    }

    /// PROPFIND with `depth` on `url`; `None` when the resource does not exist.
    fn propfind(&self, url: String, depth: &str) -> Result<Option<Vec<DavEntry>>, Error> {
        let what = format!("PROPFIND {url}");
        let req = self
            .request("PROPFIND", url)
            .header("depth", depth)
            .header("content-type", "application/xml; charset=utf-8");
        let mut resp = self.send(req, dav::PROPFIND_BODY.as_bytes())?;
        match resp.status {
            207 => {}
            404 => return Ok(None),
            _ => return Err(resp.error(&what)),
        }
        let entries =
            dav::parse_multistatus(BufReader::with_capacity(64 * 1024, &mut resp)).map_err(|e| match e {
                quick_xml::Error::Io(e) => Error::Transient(format!("{what}: reading the response: {e}")),
                e => Error::Other(format!("{what}: unreadable multistatus answer: {e}")),
            })?;
        Ok(Some(entries))
    }

    /// The members of collection `dir` (name, is_dir, size); `None` if it does not exist.
    fn children(&self, dir: &str) -> Result<Option<Vec<Member>>, Error> {
        let url = self.dir_url(dir);
        let Some(entries) = self.propfind(url.clone(), "1")? else {
            return Ok(None);
        };
        let own = dav::href_path(&url);
        let mut out = Vec::new();
        for e in entries {
            let path = dav::href_path(&e.href);
            if path == own {
                continue;
            }
            match path.rsplit_once('/') {
                Some((parent, name)) if parent == own && !name.is_empty() => {
                    out.push((name.to_string(), e.is_dir, e.size.unwrap_or(0)));
                }
                _ => {
                    return Err(Error::Other(format!(
                        "PROPFIND {url}: the server listed {:?}, which is not inside {own:?}",
                        e.href
                    )));
                }
            }
        }
        Ok(Some(out))
    }

    /// MKCOL of one collection: true if it exists afterwards, false if its parent is missing.
    fn mkcol(&self, dir: &str) -> Result<bool, Error> {
        let url = self.dir_url(dir);
        let what = format!("MKCOL {url}");
        let mut resp = self.send(self.request("MKCOL", url), b"")?;
        match resp.status {
            // Created, or already there (405: MKCOL is not allowed on an existing resource).
            200 | 201 | 204 | 405 => Ok(true),
            409 => Ok(false),
            _ => Err(resp.error(&what)),
        }
    }

    /// Creates the collections holding `name` that are not known to exist.
    fn ensure_parents(&self, name: &str) -> Result<(), Error> {
        let Some((parent, _)) = name.rsplit_once('/') else {
            return Ok(());
        };
        if self.dirs.borrow().contains(parent) {
            return Ok(());
        }
        let ancestors: Vec<&str> =
            parent.match_indices('/').map(|(i, _)| &parent[..i]).chain([parent]).collect();
        // Usually only the deepest is missing (or none is): one request.
        if !self.mkcol(parent)? {
            for dir in &ancestors {
                if !self.dirs.borrow().contains(*dir) && !self.mkcol(dir)? {
                    return Err(Error::Transient(format!(
                        "MKCOL {}: the parent collection vanished",
                        self.dir_url(dir)
                    )));
                }
            }
        }
        self.dirs.borrow_mut().extend(ancestors.iter().map(|d| d.to_string()));
        Ok(())
    }

    /// DELETE of one file; a missing one is not an error.
    fn delete_file(&self, rel: &str) -> Result<(), Error> {
        let url = self.url(rel);
        let what = format!("DELETE {url}");
        let mut resp = self.send(self.request("DELETE", url), b"")?;
        match resp.status {
            200..=299 | 404 => Ok(()),
            _ => Err(resp.error(&what)),
        }
    }
}

pub struct DavStore {
    client: Rc<Client>,
}

impl DavStore {
    pub fn open(options: &[(String, String)]) -> Result<(DavStore, Capabilities), Error> {
        let url = cairn_plugin_sdk::option(options, "url")
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| Error::InvalidConfig("option `url` is required (the WebDAV folder's URL)".into()))?
            .trim();
        let ep = Endpoint::parse(url).map_err(|_| {
            Error::InvalidConfig(format!("option `url`: {url:?} is not an http:// or https:// URL"))
        })?;
        if url.contains(['?', '#']) {
            return Err(Error::InvalidConfig(format!(
                "option `url`: {url:?} must not have a query or fragment"
            )));
        }
        if ep.authority.contains('@') {
            return Err(Error::InvalidConfig(
                "option `url`: put credentials in the `username` and `password` options, not the URL".into(),
            ));
        }
        let username = cairn_plugin_sdk::option(options, "username").filter(|u| !u.is_empty());
        let password = cairn_plugin_sdk::option(options, "password");
        let auth = match (username, password) {
            (Some(u), p) => {
                if u.contains(':') {
                    return Err(Error::InvalidConfig("option `username` must not contain ':'".into()));
                }
                Some(format!("Basic {}", dav::base64(format!("{u}:{}", p.unwrap_or("")).as_bytes())))
            }
            (None, Some(p)) if !p.is_empty() => {
                return Err(Error::InvalidConfig("option `password` is set but `username` is not".into()));
            }
            _ => None,
        };
        let client = Client { ep, auth, dirs: RefCell::new(HashSet::new()) };
        let store = DavStore { client: Rc::new(client) };
        store.check_base()?;
        let caps = Capabilities {
            ranged_reads: true,
            atomic_put: true,
            conditional_put: true,
            max_object_size: None,
            preferred_concurrency: 4,
        };
        Ok((store, caps))
    }

    /// The base collection must exist (it is created if missing) and be a collection. `open`
    /// also runs when the host starts an instance mid-operation, so a busy or briefly
    /// unreachable server gets a few short retries here rather than failing the operation.
    fn check_base(&self) -> Result<(), Error> {
        let mut attempt = 1u64;
        loop {
            let wait_ms = match self.check_base_once() {
                Err(Error::Transient(_)) if attempt < OPEN_ATTEMPTS => 300 * attempt,
                Err(Error::RateLimited(r)) if attempt < OPEN_ATTEMPTS => {
                    r.retry_after_ms.unwrap_or(300 * attempt).min(3_000)
                }
                res => return res,
            };
            wasip2::clocks::monotonic_clock::subscribe_duration(wait_ms * 1_000_000).block();
            attempt += 1;
        }
    }

    fn check_base_once(&self) -> Result<(), Error> {
        let c = &self.client;
        let url = c.dir_url("");
        let hint = |e: Error| match e {
            Error::PermissionDenied(m) => {
                Error::PermissionDenied(format!("{m} (check the `username` and `password` options)"))
            }
            e => e,
        };
        match c.propfind(url.clone(), "0") {
            Ok(Some(entries)) => {
                if entries.first().is_some_and(|e| !e.is_dir) {
                    return Err(Error::InvalidConfig(format!("option `url`: {url} is a file, not a folder")));
                }
            }
            Ok(None) => self.create_base()?,
            Err(Error::Other(m)) if m.contains("HTTP 405") || m.contains("HTTP 501") => {
                return Err(Error::InvalidConfig(format!(
                    "option `url`: {url} does not answer WebDAV requests ({m})"
                )));
            }
            Err(e) => return Err(hint(e)),
        }
        c.dirs.borrow_mut().insert(String::new());
        Ok(())
    }

    /// MKCOL of the base collection, and of its missing ancestors if needed.
    fn create_base(&self) -> Result<(), Error> {
        let c = &self.client;
        let url = c.dir_url("");
        let mkcol = |url: String| -> Result<bool, Error> {
            let what = format!("MKCOL {url}");
            let mut resp = c.send(c.request("MKCOL", url), b"")?;
            match resp.status {
                200 | 201 | 204 | 405 => Ok(true),
                409 => Ok(false),
                404 => Err(Error::InvalidConfig(format!("option `url`: {what}: HTTP 404 (no such path)"))),
                _ => Err(resp.error(&what)),
            }
        };
        if mkcol(url.clone())? {
            return Ok(());
        }
        let base = c.ep.base_path.clone();
        let segs: Vec<&str> = base.split('/').filter(|s| !s.is_empty()).collect();
        let root = Endpoint { base_path: String::new(), ..c.ep.clone() };
        for i in 1..segs.len() {
            // Ancestors may exist yet refuse MKCOL with something else than 405: carry on.
            let _ = mkcol(root.url(&format!("/{}/", segs[..i].join("/"))));
        }
        if mkcol(url.clone())? {
            Ok(())
        } else {
            Err(Error::InvalidConfig(format!("option `url`: cannot create {url}: its parent does not exist")))
        }
    }

    /// Visits the members of `dir` (relative, "" or ending in '/') that can hold names
    /// starting with `prefix`, in name order, recursing into collections. `visit` returns
    /// false to stop the walk; the result says whether it was stopped.
    fn walk(
        &self,
        dir: &str,
        prefix: &str,
        skip_through: Option<&str>,
        depth: usize,
        visit: &mut dyn FnMut(&str, &str, u64) -> bool,
    ) -> Result<bool, Error> {
        if depth > MAX_DEPTH {
            return Ok(false);
        }
        let Some(mut members) = self.client.children(dir)? else {
            return Ok(false);
        };
        // Sorting files by name and collections by name + '/' visits full names in order.
        let key = |m: &Member| if m.1 { format!("{}/", m.0) } else { m.0.clone() };
        members.sort_by_key(key);
        for (name, is_dir, size) in members {
            if !valid_segment(&name) {
                continue; // a foreign file no object name can address
            }
            let full = format!("{dir}{name}");
            if is_dir {
                if name.starts_with('.') {
                    continue;
                }
                let sub = format!("{full}/");
                let relevant = sub.starts_with(prefix) || prefix.starts_with(&sub);
                // Everything below `sub` sorts after it; skip it if the cursor is past it all.
                let done = skip_through.is_some_and(|c| !c.starts_with(&sub) && c > sub.as_str());
                if relevant && !done && self.walk(&sub, prefix, skip_through, depth + 1, visit)? {
                    return Ok(true);
                }
            } else if full.starts_with(prefix) && !visit(dir, &name, size) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub fn list(&self, prefix: &str, cursor: Option<&str>, max: u32) -> Result<ListPage, Error> {
        let max = max.max(1) as usize;
        let mut objects = Vec::new();
        // The cursor is the last name of the previous page: stateless, so any instance can
        // continue a listing another instance started.
        self.walk("", prefix, cursor, 0, &mut |dir, file, size| {
            let name = format!("{dir}{file}");
            if !file.starts_with('.') && cursor.is_none_or(|c| name.as_str() > c) {
                objects.push(ObjectInfo { name, size });
            }
            objects.len() < max
        })?;
        let next_cursor = if objects.len() == max { objects.last().map(|o| o.name.clone()) } else { None };
        Ok(ListPage { objects, next_cursor })
    }

    pub fn stat(&self, name: &str) -> Result<ObjectInfo, Error> {
        check_name(name)?;
        let c = &self.client;
        let url = c.url(name);
        match c.propfind(url.clone(), "0")? {
            Some(entries) => match entries.first() {
                Some(e) if !e.is_dir => Ok(ObjectInfo { name: name.to_string(), size: e.size.unwrap_or(0) }),
                Some(_) => Err(Error::NotFound(format!("{name}: a folder, not an object"))),
                None => Err(Error::Other(format!("PROPFIND {url}: empty multistatus answer"))),
            },
            None => Err(Error::NotFound(name.to_string())),
        }
    }

    pub fn read(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
        check_name(name)?;
        if len == 0 {
            self.stat(name)?;
            return Ok(Vec::new());
        }
        let c = &self.client;
        let url = c.url(name);
        let what = format!("GET {url}");
        let last = offset.saturating_add(len - 1);
        let req = c.request("GET", url).header("range", format!("bytes={offset}-{last}"));
        let mut resp = c.send(req, b"")?;
        let read_err = |e: std::io::Error| Error::Transient(format!("{what}: reading the response: {e}"));
        let mut out = Vec::with_capacity(len.min(8 << 20) as usize);
        match resp.status {
            206 => {
                let start = resp.header("content-range").and_then(content_range_start);
                if start.is_some_and(|s| s != offset) {
                    return Err(Error::Other(format!(
                        "{what}: asked for bytes from {offset}, the server answered {:?}",
                        resp.header("content-range")
                    )));
                }
                (&mut resp).take(len).read_to_end(&mut out).map_err(read_err)?;
            }
            // The server ignored the range: skip to the offset and keep only what was asked.
            200 => {
                let skipped =
                    std::io::copy(&mut (&mut resp).take(offset), &mut std::io::sink()).map_err(read_err)?;
                if skipped == offset {
                    (&mut resp).take(len).read_to_end(&mut out).map_err(read_err)?;
                }
            }
            // The offset is at or past the end of an object that exists.
            416 => {}
            _ => return Err(resp.error(&what)),
        }
        Ok(out)
    }

    pub fn start_upload(&self, name: &str, size: u64, if_absent: bool) -> Result<DavUpload, Error> {
        check_name(name)?;
        let c = &self.client;
        c.ensure_parents(name)?;
        if if_absent {
            // A cheap early answer; the MOVE with `Overwrite: F` is what makes it atomic.
            match self.stat(name) {
                Ok(_) => return Err(Error::AlreadyExists(name.to_string())),
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let (dir, base) = match name.rsplit_once('/') {
            Some((d, b)) => (format!("{d}/"), b),
            None => (String::new(), name),
        };
        let tmp = format!("{dir}.{base}{UPLOAD_MARKER}{:016x}", wasip2::random::random::get_random_u64());
        let mut req = c
            .request("PUT", c.url(&tmp))
            .header("content-length", size.to_string())
            .header("content-type", "application/octet-stream");
        req.timeout_ms = Some(UPLOAD_TIMEOUT_MS);
        let body = Streaming::start(&req, &[], &format!("PUT {}", req.url))?;
        Ok(DavUpload {
            client: self.client.clone(),
            state: RefCell::new(Some(Pending { body, written: 0 })),
            tmp,
            name: name.to_string(),
            size,
            if_absent,
        })
    }

    pub fn list_incomplete(&self, prefix: &str) -> Result<Vec<IncompleteUpload>, Error> {
        let mut out = Vec::new();
        // Temporary files live beside their final name, so walk what could hold that name.
        self.walk("", prefix_dir(prefix), None, 0, &mut |dir, file, size| {
            if let Some(stem) = file.strip_prefix('.')
                && let Some((base, _)) = stem.split_once(UPLOAD_MARKER)
            {
                let name = format!("{dir}{base}");
                if name.starts_with(prefix) {
                    out.push(IncompleteUpload { id: format!("{dir}{file}"), name, size });
                }
            }
            true
        })?;
        Ok(out)
    }

    pub fn abort_incomplete(&self, id: &str) -> Result<(), Error> {
        let (dir, file) = id.rsplit_once('/').unwrap_or(("", id));
        let valid = (dir.is_empty() || valid_name(dir))
            && valid_segment(file)
            && file.starts_with('.')
            && file.contains(UPLOAD_MARKER);
        if !valid {
            return Err(Error::InvalidName(format!("{id:?} is not an unfinished upload")));
        }
        self.client.delete_file(id)
    }

    pub fn delete(&self, names: &[String]) -> Result<(), Error> {
        for name in names {
            check_name(name)?;
            self.client.delete_file(name)?;
        }
        Ok(())
    }
}

/// `bytes 100-199/1000` -> 100.
fn content_range_start(v: &str) -> Option<u64> {
    v.trim().strip_prefix("bytes")?.trim_start().split('-').next()?.trim().parse().ok()
}

/// The folder part of a listing prefix (`data/ab/c` -> `data/ab/`), so a walk can prune.
fn prefix_dir(prefix: &str) -> &str {
    match prefix.rfind('/') {
        Some(i) => &prefix[..=i],
        None => "",
    }
}

struct Pending {
    body: Streaming,
    written: u64,
}

/// One upload in progress. Dropping it without `finish` removes the temporary file.
pub struct DavUpload {
    client: Rc<Client>,
    state: RefCell<Option<Pending>>,
    tmp: String,
    name: String,
    size: u64,
    if_absent: bool,
}

impl DavUpload {
    pub fn write(&self, data: &[u8]) -> Result<(), Error> {
        let mut state = self.state.borrow_mut();
        let p =
            state.as_mut().ok_or_else(|| Error::Other(format!("{}: upload already closed", self.name)))?;
        if p.written + data.len() as u64 > self.size {
            drop(state);
            self.abort();
            return Err(Error::Other(format!(
                "{}: more bytes written than the announced {}",
                self.name, self.size
            )));
        }
        if let Err(e) = p.body.write(data) {
            // The server may have refused the request early: its status says more.
            let err = match p.body.rejection() {
                Some(mut resp) if !resp.is_success() => resp.error(&format!("PUT {}", self.tmp)),
                _ => e,
            };
            drop(state);
            self.abort();
            return Err(err);
        }
        p.written += data.len() as u64;
        Ok(())
    }

    pub fn finish(&self) -> Result<(), Error> {
        let p = self
            .state
            .borrow_mut()
            .take()
            .ok_or_else(|| Error::Other(format!("{}: upload already closed", self.name)))?;
        if p.written != self.size {
            p.body.abort();
            let _ = self.client.delete_file(&self.tmp);
            return Err(Error::Other(format!(
                "{}: {} bytes written, {} announced",
                self.name, p.written, self.size
            )));
        }
        let res = self.publish(p.body);
        if res.is_err() {
            let _ = self.client.delete_file(&self.tmp);
        }
        res
    }

    fn publish(&self, body: Streaming) -> Result<(), Error> {
        let c = &self.client;
        let mut resp = body.finish()?;
        if !resp.is_success() {
            if resp.status == 409 {
                // The parent collection is gone (removed behind our back): forget what we
                // knew, so the retry creates it again.
                c.dirs.borrow_mut().retain(|d| d.is_empty());
                let detail = resp.excerpt();
                return Err(Error::Transient(format!("PUT {}: HTTP 409 {detail}", c.url(&self.tmp))));
            }
            return Err(resp.error(&format!("PUT {}", c.url(&self.tmp))));
        }
        drop(resp);
        let src = c.url(&self.tmp);
        let dst = c.url(&self.name);
        let what = format!("MOVE {src} -> {dst}");
        let req = c
            .request("MOVE", src)
            .header("destination", dst)
            .header("overwrite", if self.if_absent { "F" } else { "T" });
        let mut resp = c.send(req, b"")?;
        match resp.status {
            200..=299 => Ok(()),
            412 if self.if_absent => Err(Error::AlreadyExists(self.name.clone())),
            _ => Err(resp.error(&what)),
        }
    }

    pub fn abort(&self) {
        let pending = self.state.borrow_mut().take();
        if let Some(p) = pending {
            p.body.abort();
            let _ = self.client.delete_file(&self.tmp);
        }
    }
}

impl Drop for DavUpload {
    fn drop(&mut self) {
        self.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("data/ab/abcd"));
        assert!(!valid_name("data/.ab"));
        assert!(!valid_name("data//x"));
        assert!(!valid_name("../x"));
        assert_eq!(content_range_start("bytes 100-199/1000"), Some(100));
        assert_eq!(prefix_dir("data/ab/c"), "data/ab/");
    }
}
