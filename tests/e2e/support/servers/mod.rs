//! Real servers for the end-to-end suites, each on a free loopback port with its own
//! temporary directory, killed on drop: S3 (`s3s-fs`), a Kafka-protocol broker
//! (`tansu`) and NATS with JetStream (`nats-server`). `scripts/test.sh` installs them.

mod kafka;
mod nats;
mod s3;

pub use kafka::KafkaBroker;
pub use nats::NatsServer;
pub use s3::S3Server;
