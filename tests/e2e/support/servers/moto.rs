//! S3 with Object Lock: `moto` in server mode (PyPI `moto[server]`), which keeps
//! bucket lock configuration, per-object retention, legal holds and storage classes,
//! and refuses to delete a retained version. It does not check payload checksums:
//! those tests stay on `s3s-fs`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::env::free_port;

pub struct MotoServer {
    child: Child,
    pub endpoint: String,
}

impl MotoServer {
    pub fn start() -> MotoServer {
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto (pip install 'moto[server]')");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        MotoServer {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// SIGSTOP (`true`) or SIGCONT: a server that accepts connections and never answers.
    pub fn hang(&self, hung: bool) {
        let signal = if hung { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: signals a child process this struct owns and has not reaped.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Runs `tests/py/s3_lock.py` against this server; its stdout.
    pub fn client(&self, args: &[&str]) -> String {
        let out = Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/s3_lock.py"))
            .arg(&self.endpoint)
            .args(args)
            .output()
            .expect("run tests/py/s3_lock.py");
        assert!(
            out.status.success(),
            "s3_lock.py {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What S3 says about each current object under `prefix`.
    pub fn inspect(&self, bucket: &str, prefix: &str) -> Vec<serde_json::Value> {
        self.client(&["inspect", bucket, prefix])
            .lines()
            .map(|l| serde_json::from_str(l).expect("inspect JSON"))
            .collect()
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.hang(false);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
