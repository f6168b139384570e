//! A Kafka-protocol broker: `tansu`, in-memory storage, or SQLite storage for a broker
//! that is killed and started again.
//!
//! tansu 0.6's in-memory engine answers a fetch from an offset inside a produced batch
//! with the batches *after* that one (it looks batches up by base offset), so a
//! consumer that resumes mid-batch — as librdkafka does after a cooperative rebalance
//! pauses its fetchers — silently skips records. Suites that rebalance a group over
//! much data produce one record per batch (`kafka_client.py produce --one-per-batch`),
//! so that every offset starts a batch.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::env::{find_tool, free_port};

/// A real Kafka-protocol broker (`tansu`) on a free loopback port.
pub struct KafkaBroker {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    storage: &'static str,
}

impl KafkaBroker {
    /// In-memory storage: fast, gone with the process.
    pub fn start() -> KafkaBroker {
        KafkaBroker::launched("memory://tansu/")
    }

    /// SQLite storage in its directory: topics, records and committed offsets survive
    /// [`KafkaBroker::kill`] and [`KafkaBroker::start_again`].
    pub fn start_durable() -> KafkaBroker {
        KafkaBroker::launched("sqlite://tansu.db")
    }

    fn launched(storage: &'static str) -> KafkaBroker {
        let mut broker = KafkaBroker {
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
            port: free_port(),
            storage,
        };
        broker.launch();
        broker
    }

    fn launch(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .expect("log file");
        let child = Command::new(find_tool("tansu"))
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                self.storage,
            ])
            .current_dir(self.dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not start on port {}: {}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: the broker goes away as in a crash, mid-request.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port and storage.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the broker is still running");
        self.launch();
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
        self.kill();
    }
}
