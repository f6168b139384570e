//! S3: `s3s-fs`, which checks SigV4 signatures and `x-amz-checksum-sha256`; it can be
//! stopped, restarted on the same port and directory, or hung (SIGSTOP), for outages.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::env::{find_tool, free_port};

/// A real S3 server (`s3s-fs`) on a free loopback port with its own directory.
pub struct S3Server {
    child: Option<Child>,
    pub port: u16,
    pub root: tempfile::TempDir,
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
}

impl S3Server {
    pub fn start(bucket: &str) -> S3Server {
        let root = tempfile::tempdir().expect("temp dir");
        // s3s-fs maps each top-level directory to a bucket.
        std::fs::create_dir_all(root.path().join(bucket)).expect("bucket dir");
        let port = free_port();
        let (access_key, secret_key) = ("test-access".to_string(), "test-secret-key".to_string());
        let mut server = S3Server {
            child: None,
            port,
            root,
            endpoint: format!("http://127.0.0.1:{port}"),
            access_key,
            secret_key,
        };
        server.restart();
        server
    }

    /// Starts the server (again) on its port and directory, and waits until it
    /// accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "s3s-fs is already running");
        let port = self.port;
        let child = Command::new(find_tool("s3s-fs"))
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--access-key",
                &self.access_key,
                "--secret-key",
                &self.secret_key,
            ])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server; its objects stay in its directory.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP (`true`) or SIGCONT: a server that accepts connections and never answers.
    pub fn hang(&self, hung: bool) {
        let child = self.child.as_ref().expect("s3s-fs running");
        let signal = if hung { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: signals a child process this struct owns and has not reaped.
        unsafe {
            libc::kill(child.id() as i32, signal);
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A stopped process is killed all the same, but let it go cleanly.
            // SAFETY: as in `hang`.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGCONT);
            }
        }
        self.stop();
    }
}
