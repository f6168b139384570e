//! NATS with JetStream: Debian's `nats-server` 2.9.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::env::{find_tool, free_port};

/// A real `nats-server -js` on a free loopback port with its own store directory;
/// `restart` keeps the port and the store.
pub struct NatsServer {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    monitor_port: u16,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = NatsServer {
            child: None,
            dir,
            port: free_port(),
            monitor_port: free_port(),
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let child = Command::new(find_tool("nats-server"))
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-m",
                &self.monitor_port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path().join("store"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Client connections the server holds now (its monitoring endpoint's `/connz`).
    pub fn connections(&self) -> u64 {
        let url = format!("http://127.0.0.1:{}/connz", self.monitor_port);
        let (_, body) = crate::support::http_get(&url, "");
        body["num_connections"].as_u64().unwrap_or(0)
    }

    /// Stops the server (SIGTERM) and starts it again on the same port and store.
    pub fn restart(&mut self, down_for: Duration) {
        if let Some(mut child) = self.child.take() {
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let _ = child.wait();
        }
        std::thread::sleep(down_for);
        self.launch();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
