//! The service `run` starts, called as a library function (`service::run`) the way the
//! binary calls it: a file source, the archive on its timer, the index follower and
//! the API, one cancellation token to stop them all.

use std::sync::Arc;
use std::time::Duration;

use flow_archiver::config::{Config, Retention};
use flow_archiver::service::{self, RunOptions, ServiceError};
use flow_archiver::source::SourceError;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::support::*;

/// A configuration rooted in `dir` that archives completed flows at once and serves
/// the API on `port`.
fn config(dir: &std::path::Path, port: u16) -> Config {
    let mut c = Config::rooted_at(dir);
    c.retention.completed = Retention::After(Duration::ZERO);
    c.scheduler.interval = Duration::from_millis(100);
    c.api.listen = Some(format!("127.0.0.1:{port}"));
    c
}

fn events(flows: u32) -> String {
    (0..flows)
        .flat_map(|f| {
            let flow = format!("svc-{f}");
            [
                ce(
                    "acme",
                    &flow,
                    &format!("{flow}-a"),
                    1,
                    "started",
                    "2026-05-01T00:00:00Z",
                ),
                ce(
                    "acme",
                    &flow,
                    &format!("{flow}-b"),
                    2,
                    "completed",
                    "2026-05-01T00:00:01Z",
                ),
            ]
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The service follows the file, archives every completed flow, serves them through
/// the API (live or archived) and, once cancelled, stops every task and reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_ingests_archives_serves_and_stops_on_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    std::fs::write(&input, events(20)).unwrap();
    let port = free_port();
    let cancel = CancellationToken::new();
    let options = RunOptions {
        source: Some(format!("file:{}", input.display())),
        until_idle: None,
    };
    let running = tokio::spawn(service::run(
        config(dir.path(), port),
        options,
        cancel.clone(),
    ));

    let base = format!("http://127.0.0.1:{port}");
    let archived = Arc::new(dir.path().join("archived.jsonl"));
    tokio::task::spawn_blocking(move || {
        eventually(Duration::from_secs(30), "20 flows archived", || {
            (read_jsonl(&archived).len() >= 20).then_some(())
        });
    })
    .await
    .unwrap();
    let flow = tokio::task::spawn_blocking(move || {
        eventually(
            Duration::from_secs(30),
            "the API to serve an archived flow",
            || {
                let (status, body) = http_get(&format!("{base}/flows/acme/svc-7"), "");
                (status == 200 && body["archived"] == true).then_some(body)
            },
        )
    })
    .await
    .unwrap();
    assert_eq!(flow["events"].as_array().map(Vec::len), Some(2), "{flow}");

    cancel.cancel();
    let report = tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .expect("the service stops after cancel")
        .unwrap()
        .expect("a clean stop");
    assert_eq!(report.ingest.stored, 40);
    assert_eq!(report.sweep.flow_parts, 20);
    assert!(
        report.sweep.failures.is_empty(),
        "{:?}",
        report.sweep.failures
    );
    // Nothing listens any more.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    let records: Vec<Value> = read_jsonl(&dir.path().join("archived.jsonl"));
    assert_eq!(records.len(), 20);
}

/// A source spec the service cannot read is an error, before anything starts.
#[tokio::test]
async fn a_bad_source_is_an_error_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let options = RunOptions {
        source: Some("kafka:not a topic".into()),
        until_idle: None,
    };
    let err = service::run(
        config(dir.path(), free_port()),
        options,
        CancellationToken::new(),
    )
    .await
    .expect_err("an unknown source");
    assert!(
        matches!(err, ServiceError::Source(SourceError::Spec(_))),
        "{err}"
    );
}
