//! A loopback TCP proxy that breaks connections on purpose: reset them, cut them after N
//! bytes sent towards the server, or stall them. Put between a plugin and a real server to
//! see what a dropped upload leaves behind.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Forward everything.
    Pass,
    /// Close the connection (both ways) once this many bytes went towards the server.
    CutAfter(u64),
    /// Close every new connection at once.
    Reset,
    /// Stop forwarding (but keep the connection open) after this many bytes towards the
    /// server.
    StallAfter(u64),
    /// Answer the request itself, as an overloaded S3 server does: `503 SlowDown` with
    /// `Retry-After: 1`.
    SlowDown,
}

pub struct Proxy {
    pub port: u16,
    fault: Arc<Mutex<Fault>>,
    /// How many connections the current fault still applies to (then it reverts to Pass).
    budget: Arc<AtomicU64>,
    pub faults_fired: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let fault = Arc::new(Mutex::new(Fault::Pass));
        let budget = Arc::new(AtomicU64::new(0));
        let fired = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, b, fi, st) = (fault.clone(), budget.clone(), fired.clone(), stop.clone());
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let mut this = *f.lock().unwrap();
                        if this != Fault::Pass {
                            // Consume one unit of budget; when none is left, pass.
                            if b.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                                .is_err()
                            {
                                this = Fault::Pass;
                            }
                        }
                        let fired = fi.clone();
                        std::thread::spawn(move || handle(client, upstream, this, fired));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => break,
                }
            }
        });
        Proxy { port, fault, budget, faults_fired: fired, stop }
    }

    /// Applies `fault` to the next `connections` connections, then passes again.
    pub fn set(&self, fault: Fault, connections: u64) {
        *self.fault.lock().unwrap() = fault;
        self.budget.store(connections, Ordering::SeqCst);
    }

    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn handle(client: TcpStream, upstream: u16, fault: Fault, fired: Arc<AtomicU64>) {
    if fault == Fault::SlowDown {
        fired.fetch_add(1, Ordering::Relaxed);
        slow_down(client);
        return;
    }
    if fault == Fault::Reset {
        fired.fetch_add(1, Ordering::Relaxed);
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    // Server -> client: plain copy.
    let back = std::thread::spawn(move || {
        let (mut from, mut to) = (s2, c2);
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
    // Client -> server: counted, and broken as told.
    let (mut from, mut to) = (client, server);
    let mut sent = 0u64;
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let limit = match fault {
            Fault::CutAfter(n) | Fault::StallAfter(n) => Some(n),
            _ => None,
        };
        if let Some(limit) = limit
            && sent + n as u64 > limit
        {
            let part = (limit - sent) as usize;
            let _ = to.write_all(&buf[..part]);
            fired.fetch_add(1, Ordering::Relaxed);
            if let Fault::StallAfter(_) = fault {
                // Hold the connection open without forwarding, until the client gives up.
                while from.read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
            }
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
            break;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n as u64;
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = back.join();
}

/// Reads the request head and answers 503 SlowDown without reading the body.
fn slow_down(mut client: TcpStream) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
                <Message>Please reduce your request rate.</Message></Error>";
    let answer = format!(
        "HTTP/1.1 503 Slow Down\r\nRetry-After: 1\r\nContent-Type: application/xml\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(answer.as_bytes());
    let _ = client.shutdown(Shutdown::Write);
    // Let the client read the answer before the connection goes.
    std::thread::sleep(Duration::from_millis(200));
}
