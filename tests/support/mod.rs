//! Test harness: runs the real binary in a temporary working directory, and owns
//! real servers (the S3 server) on free loopback ports, killing them on drop.
//! Failure messages carry the command, its directory and its output.

#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_flow-archiver");

/// A working directory with a config file; every command runs inside it.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub vars: Vec<(String, String)>,
}

impl Env {
    pub fn new(config: &str) -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("flow-archiver.toml"), config).expect("write config");
        Env {
            dir,
            vars: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args).current_dir(self.path());
        // Hermetic: nothing from the developer's environment changes the config.
        for (k, _) in std::env::vars() {
            if k.starts_with("FLOW_ARCHIVER")
                || k.starts_with("ARCHIVE_")
                || k.starts_with("AWS_")
                || k == "FLOW_RETENTION_DAYS"
            {
                cmd.env_remove(k);
            }
        }
        cmd.env("RUST_LOG", "warn");
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run flow-archiver")
    }

    /// Runs and asserts success, returning stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{}",
            describe(args, self.path(), &out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn write(&self, name: &str, content: &[u8]) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, content).expect("write input");
        p
    }

    /// The published `flow.archived` records.
    pub fn archived(&self) -> Vec<Value> {
        read_jsonl(&self.path().join("data/events/archived.jsonl"))
    }

    pub fn dead_letters(&self) -> Vec<Value> {
        read_jsonl(&self.path().join("data/dead-letter.jsonl"))
    }
}

pub fn describe(args: &[&str], dir: &Path, out: &Output) -> String {
    format!(
        "flow-archiver {} (in {}) exited with {:?}\n--- stdout\n{}\n--- stderr\n{}",
        args.join(" "),
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn read_jsonl(path: &Path) -> Vec<Value> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("bad JSON line in {}: {e}: {l}", path.display()))
        })
        .collect()
}

/// A CloudEvent line for tests.
pub fn ce(tenant: &str, flow: &str, id: &str, seq: u64, kind: &str, time: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"/engine","type":"io.test.flow.{kind}","subject":"{flow}","tenant":"{tenant}","sequence":"{seq:04}","time":"{time}","data":{{"step":{seq},"labels":{{"team":"t{}"}}}}}}"#,
        seq % 3
    )
}

/// The bytes of the frame a `flow.archived` record names: `[offset, offset + length)`.
pub fn frame_of<'a>(object: &'a [u8], data: &Value) -> &'a [u8] {
    let offset = data["offset"].as_u64().expect("offset") as usize;
    let length = data["length"].as_u64().expect("length") as usize;
    &object[offset..offset + length]
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Pipes `input` through a command-line tool (`zstd -dc`, `gzip -dc`).
pub fn pipe(cmd: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{} is required for this test: {e}", cmd[0]));
    let mut stdin = child.stdin.take().expect("stdin");
    let data = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("writer").expect("write stdin");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Finds an installed tool on PATH or in ~/.cargo/bin.
pub fn find_tool(name: &str) -> PathBuf {
    let cargo_bin = std::env::var("HOME")
        .map(|h| PathBuf::from(h).join(".cargo/bin").join(name))
        .ok();
    if let Some(p) = cargo_bin.filter(|p| p.exists()) {
        return p;
    }
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.exists() {
                return p;
            }
        }
    }
    panic!("{name} is not installed; run `bash .ci/run` once (it installs the test servers)");
}

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
