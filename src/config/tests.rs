use std::path::PathBuf;
use std::time::Duration;

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_match_the_documented_paths() {
    let c = Config::from_sources(None, &[]).unwrap();
    assert_eq!(c.state.path, PathBuf::from("./data/state"));
    assert_eq!(c.archive.dir, PathBuf::from("./data/archive"));
    assert_eq!(
        c.publish.archived_path,
        PathBuf::from("./data/events/archived.jsonl")
    );
    assert_eq!(
        c.dead_letter.path,
        PathBuf::from("./data/dead-letter.jsonl")
    );
}

#[test]
fn file_then_env_then_operator_names() {
    let toml = r#"
        [archive]
        concurrency = 2
        prefix = "from-file"
        [retention]
        completed = "1h"
        abandoned = "7d"
        [[retention.override]]
        match = { labels = { category = "security" } }
        retention = "0s"
        archive_for = "5y"
    "#;
    let c = Config::from_sources(
        Some(toml),
        &env(&[
            ("FLOW_ARCHIVER__ARCHIVE__CONCURRENCY", "3"),
            ("ARCHIVE_PREFIX", "ops"),
            ("ARCHIVE_BATCH_SIZE", "50"),
            ("FLOW_RETENTION_DAYS", "2"),
            ("ARCHIVE_BUCKET", "my-bucket"),
        ]),
    )
    .unwrap();
    assert_eq!(c.archive.concurrency, 3);
    assert_eq!(c.archive.prefix, "ops");
    assert_eq!(c.archive.batch_size, 50);
    assert_eq!(c.archive.bucket.as_deref(), Some("my-bucket"));
    assert_eq!(
        c.retention.completed,
        Retention::After(Duration::from_secs(2 * 86_400))
    );
    assert_eq!(
        c.retention.abandoned,
        Retention::After(Duration::from_secs(7 * 86_400))
    );
    assert_eq!(c.retention.overrides.len(), 1);
    assert_eq!(
        c.retention.overrides[0].retention,
        Some(Retention::After(Duration::ZERO))
    );
}

#[test]
fn errors_name_the_key_and_the_fix() {
    let err = Config::from_sources(None, &env(&[("ARCHIVE_CONCURRENCY", "0")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("archive.concurrency") && err.contains("Fix:"),
        "{err}"
    );

    let err = Config::from_sources(Some("[archive]\nconcurency = 2\n"), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("concurency"), "{err}");

    let err = Config::from_sources(Some("[retention]\ncompleted = \"soon\"\n"), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("soon"), "{err}");

    let err = Config::from_sources(None, &env(&[("FLOW_RETENTION_DAYS", "ten")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("FLOW_RETENTION_DAYS"), "{err}");

    let err = Config::from_sources(None, &env(&[("ARCHIVE_BUCKET", "Bad_Bucket")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("archive.bucket"), "{err}");
}

#[test]
fn effective_config_round_trips_through_toml() {
    let c = Config::from_sources(None, &[]).unwrap();
    let again = Config::from_sources(Some(&c.to_toml()), &[]).unwrap();
    assert_eq!(c, again);
}

#[test]
fn kafka_section_from_file_and_environment() {
    let toml = r#"
[kafka]
brokers = "k1:9092,k2:9092"
topics = ["flows.events", "argo.workflows"]
[kafka.properties]
"security.protocol" = "SASL_SSL"
[publish]
destination = "kafka"
"#;
    let c = Config::from_sources(
        Some(toml),
        &env(&[
            ("FLOW_ARCHIVER__KAFKA__TOPICS", "a.events, b.events"),
            ("FLOW_ARCHIVER__KAFKA__DATA_ENCODING", "json"),
        ]),
    )
    .unwrap();
    assert_eq!(c.kafka.topics, ["a.events", "b.events"]);
    assert_eq!(c.kafka.brokers, "k1:9092,k2:9092");
    assert_eq!(c.kafka.data_encoding, DataEncoding::Json);
    assert_eq!(c.publish.destination, Destination::Kafka);
    assert_eq!(c.kafka.properties["security.protocol"], "SASL_SSL");
}

#[test]
fn kafka_guarantees_cannot_be_overridden() {
    let err = |toml: &str| {
        Config::from_sources(Some(toml), &[])
            .unwrap_err()
            .to_string()
    };
    let e = err("[kafka.properties]\n\"enable.auto.offset.store\" = \"true\"");
    assert!(
        e.contains("kafka.properties") && e.contains("delivery guarantees"),
        "{e}"
    );
    let e = err("[kafka.properties]\n\"group.id\" = \"x\"");
    assert!(e.contains("kafka.group_id"), "{e}");
    // Setting a pinned property to its pinned value is harmless.
    Config::from_sources(
        Some("[kafka.properties]\n\"enable.idempotence\" = \"true\""),
        &[],
    )
    .unwrap();
    let e = err("[kafka]\ntopics = [\"../etc\"]");
    assert!(e.contains("kafka.topics"), "{e}");
    let e = err("[kafka]\narchived_topic = \"flow archived\"");
    assert!(e.contains("kafka.archived_topic"), "{e}");
}

#[test]
fn kafka_properties_can_name_an_environment_variable() {
    let toml = "[kafka.properties]\n\"sasl.password\" = \"env:KAFKA_SASL_PASSWORD\"\n";
    let c =
        Config::from_sources(Some(toml), &env(&[("KAFKA_SASL_PASSWORD", "from-secret")])).unwrap();
    assert_eq!(c.kafka.properties["sasl.password"], "from-secret");
    let e = Config::from_sources(Some(toml), &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("KAFKA_SASL_PASSWORD") && e.contains("sasl.password"),
        "{e}"
    );
}

#[test]
fn printed_config_hides_secrets() {
    let c = Config::from_sources(
        Some(
            "[api]\nadmin_token = \"admin-secret-0123456789\"\n\
             [api.tenant_tokens]\nacme = \"tenant-secret-0123456789\"\n\
             [nats]\nuser = \"u\"\npassword = \"nats-secret\"\n\
             [kafka.properties]\n\"sasl.password\" = \"kafka-secret\"\n\"linger.ms\" = \"7\"\n",
        ),
        &[],
    )
    .unwrap();
    let text = c.to_toml();
    for secret in [
        "admin-secret",
        "tenant-secret",
        "nats-secret",
        "kafka-secret",
    ] {
        assert!(!text.contains(secret), "{secret} printed:\n{text}");
    }
    assert!(text.contains("<redacted>"));
    assert!(text.contains("\"7\""), "other properties are shown");
}

#[test]
fn nats_section_is_validated() {
    let err = |toml: &str| {
        Config::from_sources(Some(toml), &[])
            .unwrap_err()
            .to_string()
    };
    let e = err("[nats]\nfilter_subject = \"flows events\"");
    assert!(e.contains("nats.filter_subject"), "{e}");
    let e = err("[nats]\narchived_prefix = \"flow.*\"");
    assert!(e.contains("nats.archived_prefix"), "{e}");
    let e = err("[audit]\nsubject = \"flow.archived.audit\"");
    assert!(e.contains("audit.subject"), "{e}");
    let e = err("[nats]\nconsumer = \"a.b\"");
    assert!(e.contains("nats.consumer"), "{e}");
    let e = err("[nats]\nmax_ack_pending = 100");
    assert!(e.contains("nats.max_ack_pending"), "{e}");
    let e = err("[nats]\nuser = \"u\"");
    assert!(e.contains("nats.user"), "{e}");
    let e = err("[nats]\ntls_cert_file = \"c.pem\"");
    assert!(e.contains("nats.tls_cert_file"), "{e}");
    let c = Config::from_sources(
        Some("[nats]\nsubjects = \"a.>, b.*\"\n[publish]\ndestination = \"nats\""),
        &[],
    )
    .unwrap();
    assert_eq!(c.nats.subjects, ["a.>", "b.*"]);
    assert_eq!(c.publish.destination, Destination::Nats);
}

#[test]
fn the_postgres_backend_names_its_url_and_keeps_its_password_out_of_sight() {
    let postgres = "[state]\nbackend = \"postgres\"\n";
    let missing = Config::from_sources(Some(postgres), &[]).unwrap_err();
    assert!(missing.to_string().contains("state.url"), "{missing}");
    assert!(missing.to_string().contains("DATABASE_URL"), "{missing}");

    for (url, says) in [
        ("mysql://u@db/x", "postgres://"),
        ("postgres://u@db/x?sslmode=verfy-full", "verify-full"),
        ("postgres://u@[db/x", "cannot be parsed"),
    ] {
        let text = format!("{postgres}url = \"{url}\"\n");
        let error = Config::from_sources(Some(&text), &[])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("state.url") && error.contains(says),
            "{url}: {error}"
        );
    }

    // DATABASE_URL fills an unset state.url; state.url wins over it.
    let from_env = Config::from_sources(
        Some(postgres),
        &env(&[("DATABASE_URL", "postgres://a:s3cret@db:5432/flows")]),
    )
    .unwrap();
    assert_eq!(
        from_env.state.url.as_deref(),
        Some("postgres://a:s3cret@db:5432/flows")
    );
    let text = format!("{postgres}url = \"postgres://b@other/x\"\n");
    let both = Config::from_sources(
        Some(&text),
        &env(&[("DATABASE_URL", "postgres://a@db/flows")]),
    )
    .unwrap();
    assert_eq!(both.state.url.as_deref(), Some("postgres://b@other/x"));

    let shown = from_env.to_toml();
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("postgres://a:***@db:5432/flows"), "{shown}");
}

#[test]
fn kafka_partitions_are_listed_once() {
    let error = Config::from_sources(Some("[kafka]\npartitions = [0, 1, 0]\n"), &[])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("kafka.partitions") && error.contains("twice"),
        "{error}"
    );
}

#[test]
fn object_lock_and_storage_classes_need_s3_and_known_names() {
    let err = |toml: &str| {
        Config::from_sources(Some(toml), &[])
            .unwrap_err()
            .to_string()
    };
    let e = err("[archive]\nobject_lock = \"compliance\"\n");
    assert!(
        e.contains("archive.object_lock") && e.contains("archive.bucket"),
        "{e}"
    );
    let e = err("[archive]\nbucket = \"b-1\"\nobject_lock = \"forever\"\n");
    assert!(e.contains("forever"), "{e}");
    let e = err("[archive]\nbucket = \"b-1\"\nstorage_class = \"glacier\"\n");
    assert!(
        e.contains("archive.storage_class") && e.contains("GLACIER_IR"),
        "{e}"
    );
    let e = err("[archive]\nbucket = \"b-1\"\nstorage_class = \"GLACIER\"\n");
    assert!(e.contains("lifecycle"), "uploads are read back: {e}");
    let e = err("[archive]\nstorage_class = \"GLACIER_IR\"\n");
    assert!(e.contains("a local directory"), "{e}");
    let transition = |after: &str, class: &str| {
        format!("[archive]\nbucket = \"b-1\"\n[[archive.transition]]\nafter = \"{after}\"\nstorage_class = \"{class}\"\n")
    };
    let e = err(&transition("36h", "GLACIER"));
    assert!(e.contains("whole number of days"), "{e}");
    let e = err(&transition("10d", "STANDARD_IA"));
    assert!(e.contains("30 days"), "{e}");
    let e = err(&transition("90d", "STANDARD"));
    assert!(e.contains("not a class objects can move to"), "{e}");
    let e = err(&(transition("180d", "GLACIER")
        + "[[archive.transition]]\nafter = \"30d\"\nstorage_class = \"STANDARD_IA\"\n"));
    assert!(e.contains("increasing age"), "{e}");
    assert!(Config::from_sources(Some(&transition("180d", "DEEP_ARCHIVE")), &[]).is_ok());
    let ok = Config::from_sources(
        Some("[archive]\nbucket = \"b-1\"\nobject_lock = \"governance\"\nstorage_class = \"GLACIER_IR\"\n"),
        &[],
    )
    .unwrap();
    assert_eq!(
        ok.archive.object_lock,
        crate::config::ObjectLock::Governance
    );
}
