//! A Kafka-protocol broker: `tansu`, in-memory storage.
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
