//! NATS connection settings and JetStream streams shared by the NATS source and the
//! NATS publishers.
//!
//! Subjects are built from tenant and flow ids with [`subject_token`], which
//! percent-encodes everything but letters, digits, `-` and `_`: ids may contain `.`,
//! `*` or `>`, which would otherwise split or wildcard a subject.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

mod config;

pub use config::{valid_stream_name, valid_subject, NatsConfig};

/// How long connecting and start-up checks wait.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects with the configured credentials and TLS; retries in the background after
/// the first connection (a restarted server is reconnected to).
pub async fn connect(n: &NatsConfig) -> Result<async_nats::Client, String> {
    let mut options = async_nats::ConnectOptions::new()
        .name("flow-archiver")
        .connection_timeout(CONNECT_TIMEOUT)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Disconnected => {
                    tracing::warn!("NATS connection lost; reconnecting.")
                }
                async_nats::Event::Connected => tracing::info!("NATS connected."),
                other => tracing::debug!(event = %other, "NATS event."),
            }
        });
    if let Some(path) = &n.creds_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| format!("nats.creds_file {}: {e}", path.display()))?;
    }
    if let Some(path) = &n.nkey_seed_file {
        let seed = std::fs::read_to_string(path)
            .map_err(|e| format!("nats.nkey_seed_file {}: {e}", path.display()))?;
        options = options.nkey(seed.trim().to_string());
    }
    if let (Some(user), Some(password)) = (&n.user, &n.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &n.token {
        options = options.token(token.clone());
    }
    if n.tls_required {
        options = options.require_tls(true);
    }
    if let Some(ca) = &n.tls_ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&n.tls_cert_file, &n.tls_key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    let servers: Vec<async_nats::ServerAddr> = n
        .servers
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("nats.servers {:?}: {e}", n.servers))?;
    async_nats::connect_with_options(servers, options)
        .await
        .map_err(|e| format!("cannot connect to NATS at {}: {e}", n.servers))
}

/// The stream `name`, created with `config` when it does not exist.
pub async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, String> {
    let name = config.name.clone();
    js.get_or_create_stream(config)
        .await
        .map_err(|e| format!("NATS stream {name}: {e}"))
}

/// The compacted stream of `flow.archived`: the latest message per subject, kept.
pub fn archived_stream_config(n: &NatsConfig) -> stream::Config {
    stream::Config {
        name: n.archived_stream.clone(),
        subjects: vec![format!("{}.>", n.archived_prefix)],
        max_messages_per_subject: 1,
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

pub fn dead_letter_stream_config(n: &NatsConfig) -> stream::Config {
    stream::Config {
        name: n.dead_letter_stream.clone(),
        subjects: vec![n.dead_letter_subject.clone()],
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

/// One subject token for an id: letters, digits, `-` and `_` as they are, every other
/// byte as `%XX`.
pub fn subject_token(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `{prefix}.{tenant}.{flow_id}.{part}`: one subject, and so one retained message, per
/// flow part.
pub fn archived_subject(prefix: &str, tenant: &str, flow_id: &str, part: u32) -> String {
    format!(
        "{prefix}.{}.{}.{part}",
        subject_token(tenant),
        subject_token(flow_id)
    )
}

/// The subject of a flow's hold state: `{prefix}.{tenant}.{flow_id}.hold` (one message
/// per subject, so the stream keeps the latest).
pub fn hold_subject(prefix: &str, tenant: &str, flow_id: &str) -> String {
    format!(
        "{prefix}.{}.{}.hold",
        subject_token(tenant),
        subject_token(flow_id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cannot_split_or_wildcard_a_subject() {
        assert_eq!(subject_token("flow-1_a"), "flow-1_a");
        assert_eq!(subject_token("a.b*>c d"), "a%2Eb%2A%3Ec%20d");
        assert_eq!(subject_token("100%"), "100%25");
        assert_eq!(subject_token("é"), "%C3%A9");
        assert_eq!(
            archived_subject("flow.archived", "acme", "wf.1", 2),
            "flow.archived.acme.wf%2E1.2"
        );
    }
}
