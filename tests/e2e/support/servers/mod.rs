//! Real servers for the end-to-end suites, each on a free loopback port with its own
//! temporary directory, killed on drop: S3 (`s3s-fs`), a Kafka-protocol broker
//! (`tansu`), NATS with JetStream (`nats-server`), PostgreSQL, and S3 with Object Lock
//! (`moto`). `scripts/test.sh` installs them.

mod kafka;
mod moto;
mod nats;
mod postgres;
mod s3;

pub use kafka::KafkaBroker;
pub use moto::MotoServer;
pub use nats::NatsServer;
pub use postgres::{database_for, shared_pg, PgServer};
pub use s3::S3Server;
