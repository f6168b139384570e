//! S3: `s3s-fs`, which checks SigV4 signatures and `x-amz-checksum-sha256`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::env::{find_tool, free_port};

/// A real S3 server (`s3s-fs`) on a free loopback port with its own directory.
pub struct S3Server {
    child: Child,
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
        let child = Command::new(find_tool("s3s-fs"))
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--access-key",
                &access_key,
                "--secret-key",
                &secret_key,
            ])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let server = S3Server {
            child,
            root,
            endpoint: format!("http://127.0.0.1:{port}"),
            access_key,
            secret_key,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
