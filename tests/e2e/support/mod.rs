//! Test harness: runs the real binary in a temporary working directory, and owns
//! real servers (the S3 server) on free loopback ports, killing them on drop.
//! Failure messages carry the command, its directory and its output.

#![allow(dead_code)]

pub mod otlp;

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
                || k.starts_with("OTEL_")
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

/// Every file below `dir`, recursively, sorted; none when `dir` does not exist.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let p = entry.expect("directory entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

impl Env {
    /// The published records of one kind (`archived`, `purged`, `hold`).
    pub fn records_of(&self, kind: &str) -> Vec<Value> {
        self.archived()
            .into_iter()
            .filter(|r| r["type"] == format!("io.flowarchiver.flow.{kind}"))
            .collect()
    }
}

/// `tenant/flow_id/part` of a published record's data.
pub fn part_key(d: &Value) -> String {
    format!(
        "{}/{}/{}",
        d["tenant"].as_str().unwrap(),
        d["flow_id"].as_str().unwrap(),
        d["part"]
    )
}

/// `tenant/flow_id/part` of every part a `purge --json` report removed.
pub fn purged_parts(report: &Value) -> std::collections::BTreeSet<String> {
    report["purged"]
        .as_array()
        .expect("purged objects")
        .iter()
        .flat_map(|o| {
            let tenant = o["tenant"].as_str().unwrap().to_string();
            o["flow_parts"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |p| format!("{tenant}/{}", p.as_str().unwrap()))
        })
        .collect()
}

/// After hold, erase and purge: checks a part's latest published record — the erased
/// part purged for erasure, purged parts for retention, every other part still
/// archived — and returns whether the part is still archived.
pub fn check_latest_part_record(
    kind: &str,
    data: &Value,
    key: &str,
    erased_key: &str,
    purged: &std::collections::BTreeSet<String>,
) -> bool {
    if key == erased_key {
        assert_eq!(kind, "io.flowarchiver.flow.purged");
        assert_eq!(data["reason"], "erasure");
        false
    } else if purged.contains(key) {
        assert_eq!(kind, "io.flowarchiver.flow.purged", "{key}");
        assert_eq!(data["reason"], "retention");
        false
    } else {
        assert_eq!(kind, "io.flowarchiver.flow.archived", "{key}");
        true
    }
}

/// The index lists exactly `kept` parts, the held flow's among them and marked held.
pub fn assert_index_keeps(env: &Env, kept: usize, held_flow: &str) {
    assert!(kept >= 1, "the held flow's object is kept");
    let listed: Value =
        serde_json::from_str(&env.ok(&["list", "--json", "--limit", "1000"])).unwrap();
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), kept, "{listed}");
    assert!(items
        .iter()
        .any(|i| i["flow_id"] == held_flow && i["held"] == true));
}

/// The audit file's records, after checking that each of `actions` is among them.
pub fn audit_records_with(env: &Env, actions: &[&str]) -> Vec<Value> {
    let file = read_jsonl(&env.path().join("data/audit.jsonl"));
    let seen: std::collections::BTreeSet<&str> =
        file.iter().map(|r| r["action"].as_str().unwrap()).collect();
    for action in actions {
        assert!(seen.contains(action), "{action} audited: {seen:?}");
    }
    file
}

/// A broker's copy of the audit trail holds exactly the file's records.
pub fn assert_same_records(copy: &[Value], file: &[Value], what: &str) {
    let as_set = |v: &[Value]| {
        v.iter()
            .map(|r| r.to_string())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(copy.len(), file.len(), "{what}");
    assert_eq!(as_set(copy), as_set(file), "{what}");
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

/// A real Kafka-protocol broker (`tansu`, in-memory storage) on a free loopback port.
pub struct KafkaBroker {
    child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl KafkaBroker {
    pub fn start() -> KafkaBroker {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("tansu.log")).expect("log file");
        let child = Command::new(find_tool("tansu"))
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .current_dir(dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tansu");
        let broker = KafkaBroker { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not start on port {port}: {}",
                broker.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        broker
    }

    /// `host:port`, as clients take it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }

    /// Creates a topic (tansu does not auto-create them).
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let out = Command::new(find_tool("tansu"))
            .args([
                "topic",
                "create",
                name,
                "--partitions",
                &partitions.to_string(),
                "--broker",
                &format!("tcp://127.0.0.1:{}", self.port),
            ])
            .output()
            .expect("run tansu topic create");
        assert!(
            out.status.success(),
            "tansu topic create {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `tests/py/NAME` with `args` and returns its stdout, failing the test (with the
/// script's stderr) when it fails. The scripts are the independent clients.
pub fn python(name: &str, args: &[&str]) -> String {
    let script = format!("{}/tests/py/{name}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(&script)
        .args(args)
        .output()
        .expect("python3 is required for the end-to-end tests");
    assert!(
        out.status.success(),
        "{name} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `tests/py/kafka_client.py` (confluent-kafka, fastavro): an independent client.
pub fn kafka_client(args: &[&str]) -> String {
    python("kafka_client.py", args)
}

/// Records read back by the independent client, one JSON object each.
pub fn consume_topic(broker: &KafkaBroker, topic: &str, n: usize, avro: bool) -> Vec<Value> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas");
    let schema = format!("{dir}/flow_archived.avsc,{dir}/flow_purged.avsc,{dir}/flow_hold.avsc");
    let address = broker.address();
    let n = n.to_string();
    let mut args = vec!["consume", &address, topic, &n, "--timeout", "60"];
    if avro {
        args.extend(["--avro", &schema]);
    }
    kafka_client(&args)
        .lines()
        .map(|l| serde_json::from_str(l).expect("consumer JSON"))
        .collect()
}

/// A background `flow-archiver` process; killed on drop so that no test leaves one
/// behind, whatever it asserted.
pub struct Running {
    child: Option<Child>,
    stderr: PathBuf,
    args: String,
}

impl Env {
    pub fn spawn(&self, args: &[&str]) -> Running {
        self.spawn_env(&[], args)
    }

    /// Like [`Env::spawn`], with extra environment variables.
    pub fn spawn_env(&self, vars: &[(String, String)], args: &[&str]) -> Running {
        let stderr = self.path().join(format!("stderr-{}.log", free_port()));
        let file = std::fs::File::create(&stderr).expect("stderr file");
        let child = self
            .command(args)
            .envs(vars.iter().cloned())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn flow-archiver");
        Running {
            child: Some(child),
            stderr,
            args: args.join(" "),
        }
    }
}

impl Running {
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM, then waits (up to 60 s) for a clean exit; returns stderr.
    pub fn stop(mut self) -> String {
        let mut child = self.child.take().expect("running");
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let status = wait_timeout(&mut child, Duration::from_secs(60));
        let stderr = self.stderr();
        assert!(
            status.is_some_and(|s| s.success()),
            "flow-archiver {} did not stop cleanly ({status:?}):\n{stderr}",
            self.args
        );
        stderr
    }

    /// Waits for the process to end by itself (a failpoint kill); returns its status.
    pub fn wait(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        let status = wait_timeout(&mut child, limit);
        let stderr = self.stderr();
        match status {
            Some(s) => (s, stderr),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "flow-archiver {} did not exit within {limit:?}:\n{stderr}",
                    self.args
                )
            }
        }
    }
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `check` every 200 ms until it returns `Some`, or panics with `what` after `limit`.
pub fn eventually<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A real `nats-server -js` on a free loopback port with its own store directory;
/// `restart` keeps the port and the store.
pub struct NatsServer {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = NatsServer {
            child: None,
            dir,
            port: free_port(),
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

/// Runs `tests/py/nats_client.py` (nats-py): an independent client.
pub fn nats_client(args: &[&str]) -> String {
    python("nats_client.py", args)
}

/// GET through `tests/py/http_get.py` (Python's standard library): (status, JSON body).
pub fn http_get(url: &str, token: &str) -> (u16, Value) {
    let v: Value =
        serde_json::from_str(&python("http_get.py", &[url, token])).expect("http_get.py JSON");
    (v["status"].as_u64().unwrap_or(0) as u16, v["body"].clone())
}

/// Any method, with an optional JSON body, through the same client.
pub fn http_request(method: &str, url: &str, token: &str, body: Option<&str>) -> (u16, Value) {
    let mut args = vec![url, token, method];
    args.extend(body);
    let v: Value = serde_json::from_str(&python("http_get.py", &args)).expect("http_get.py JSON");
    (v["status"].as_u64().unwrap_or(0) as u16, v["body"].clone())
}

/// Every case's status must be documented in schemas/openapi.yaml for its path, and
/// its body must validate against the documented schema (checked in Python with
/// PyYAML and jsonschema, sharing nothing with the server). Cases are GETs: (spec path,
/// URL, token).
pub fn check_openapi(env: &Env, base: &str, cases: &[(&str, String, &str)]) {
    let cases: Vec<Value> = cases
        .iter()
        .map(|(path, url, token)| serde_json::json!({"path": path, "url": url, "token": token}))
        .collect();
    check_openapi_cases(env, base, &cases);
}

/// As [`check_openapi`], with any method and body: `{"path", "url", "token",
/// "method", "body"}` per case.
pub fn check_openapi_cases(env: &Env, base: &str, cases: &[Value]) {
    let file = env.write(
        "openapi-cases.json",
        serde_json::to_string(&cases).unwrap().as_bytes(),
    );
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/openapi.yaml");
    // Fails (with the mismatches) when a response differs from the spec.
    python("openapi_check.py", &[spec, base, file.to_str().unwrap()]);
}

/// Scrapes `{base}/metrics` and parses it with Python's official client (OpenMetrics
/// parser): `{"families": {name: type}, "samples": {"name{k=v}": value}}`.
pub fn scrape_metrics(base: &str) -> Value {
    serde_json::from_str(&python("metrics_check.py", &[&format!("{base}/metrics")]))
        .expect("metrics_check.py JSON")
}

/// `serve` on a free loopback port; killed with the returned guard.
pub fn serve_api(env: &Env) -> (Running, String) {
    let port = free_port();
    let run = env.spawn(&["serve", "--listen", &format!("127.0.0.1:{port}")]);
    eventually(Duration::from_secs(20), "the API to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    (run, format!("http://127.0.0.1:{port}"))
}

/// The `flow_archiver_consumer_lag_messages` sample, read with a raw HTTP/1.0 GET (fast
/// enough to poll while ingest runs).
pub fn lag_of(port: u16) -> Option<i64> {
    metric_of(port, "flow_archiver_consumer_lag_messages")
}

/// The value of an unlabelled metric served at `/metrics` on `port`.
pub fn metric_of(port: u16, name: &str) -> Option<i64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}
