//! The configuration the Kafka and NATS suites start from, so that both run the same
//! archiver: small batches and segments (many of each in a short test), a fast
//! scheduler, one-day retention (nothing is due unless a test says so), and input,
//! records and dead letters on the broker under test.

/// The broker an archiver reads from and publishes to, and what goes into its section.
pub enum Broker<'a> {
    /// `bootstrap.servers`, then the rest of `[kafka]` (and any sections after it).
    Kafka { brokers: &'a str, section: &'a str },
    /// The server URL, then the rest of `[nats]` (and any sections after it).
    Nats { url: &'a str, section: &'a str },
}

pub fn broker_config(broker: Broker) -> String {
    let (destination, section) = match broker {
        Broker::Kafka { brokers, section } => (
            "kafka",
            format!("[kafka]\nbrokers = \"{brokers}\"\n{section}"),
        ),
        Broker::Nats { url, section } => {
            ("nats", format!("[nats]\nservers = \"{url}\"\n{section}"))
        }
    };
    format!(
        r#"
[input]
max_event_bytes = 4096
batch_size = 32

[retention]
completed = "1d"
failed = "1d"

[archive]
segment_max_flows = 5

[publish]
destination = "{destination}"

[dead_letter]
destination = "{destination}"

[scheduler]
interval = "200ms"

{section}
"#
    )
}
