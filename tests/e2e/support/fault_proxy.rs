//! A TCP proxy in front of an HTTP server that can answer every request itself with
//! a server error (500, 503) instead of forwarding it: a failing S3 endpoint without
//! touching the real server. Switching to an error closes the connections open
//! through it, so a client's kept-alive connection meets the error on its next
//! request too. Its threads end when it is dropped.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct FaultProxy {
    pub port: u16,
    /// 0 forwards; otherwise the status every request gets.
    status: Arc<AtomicU16>,
    /// Requests answered with an error so far.
    pub refused: Arc<AtomicU64>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    pub fn start(target_port: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let proxy = FaultProxy {
            port,
            status: Arc::new(AtomicU16::new(0)),
            refused: Arc::new(AtomicU64::new(0)),
            open: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (status, refused, open, stop) = (
            proxy.status.clone(),
            proxy.refused.clone(),
            proxy.open.clone(),
            proxy.stop.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(_) => continue,
                };
                let _ = client.set_nonblocking(false);
                match status.load(Ordering::Relaxed) {
                    0 => forward(client, target_port, &open),
                    code => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        std::thread::spawn(move || answer(client, code));
                    }
                }
            }
        });
        proxy
    }

    /// Every request from now on gets `status` (0 forwards again).
    pub fn fail_with(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
        if status != 0 {
            for stream in self.open.lock().unwrap().drain(..) {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// Copies both ways between the client and the target until either side closes.
fn forward(client: TcpStream, target_port: u16, open: &Arc<Mutex<Vec<TcpStream>>>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    {
        let mut open = open.lock().unwrap();
        open.retain(|s| s.peer_addr().is_ok());
        open.push(client.try_clone().unwrap());
        open.push(server.try_clone().unwrap());
    }
    let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(Shutdown::Write);
    });
    let (mut s_read, mut c_write) = (server, client);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut s_read, &mut c_write);
        let _ = c_write.shutdown(Shutdown::Both);
    });
}

/// Reads the request head and answers `code` with an S3-style error body, closing
/// the connection (a request body, if any, is not needed to refuse it).
fn answer(mut client: TcpStream, code: u16) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 << 10 {
        match client.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let (reason, s3_code) = match code {
        503 => ("Service Unavailable", "SlowDown"),
        _ => ("Internal Server Error", "InternalError"),
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{s3_code}</Code><Message>injected by the test proxy</Message></Error>"
    );
    let _ = write!(
        client,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.shutdown(Shutdown::Both);
}
