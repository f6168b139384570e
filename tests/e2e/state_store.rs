//! `StateStore` conformance: each scenario is written once and instantiated for every
//! backend by `conformance!`: the embedded redb store on real disk, and PostgreSQL
//! (a real server started by the harness, a database per scenario). Below them, the
//! scenarios only a shared store has: several instances on one database.

use std::time::Duration;

use flow_archiver::config::StateBackend;
use flow_archiver::config::{Compression, Config, Retention, StateConfig};
use flow_archiver::flow::{FlowEvent, FlowStatus, Sequence};
use flow_archiver::policy::RetentionPolicy;
use flow_archiver::state::{
    ArchiveIntent, EmbeddedStore, EraseIntent, IntentStage, LiveQuery, PostgresStore, PurgeIntent,
    SealedPart, StateError, StateStore, VerifiedObject,
};

use crate::support::database_for;

const MIN: i64 = 60_000;

fn policy() -> RetentionPolicy {
    let mut r = Config::default().retention;
    r.completed = Retention::After(Duration::from_secs(600));
    RetentionPolicy::new(r)
}

fn event(flow: &str, id: &str, seq: u64, status: FlowStatus, time_ms: i64) -> FlowEvent {
    FlowEvent {
        tenant: "t".into(),
        flow_id: flow.into(),
        dedupe_key: Some(("src".into(), id.into())),
        sequence: Some(Sequence::Number(seq.to_string().into())),
        status,
        event_type: format!("x.{status}").into(),
        time_ms,
        labels: [("k", id)].into_iter().collect(),
        traceparent: None,
        tracestate: None,
        raw: format!("{{\"id\":\"{id}\",\"seq\":{seq}}}").into_bytes(),
    }
}

fn events_of(store: &dyn StateStore, flow: &str, part: u32) -> Vec<String> {
    let mut out = Vec::new();
    store
        .for_each_event("t", flow, part, &mut |b| {
            out.push(String::from_utf8_lossy(b).into_owned());
            Ok(())
        })
        .unwrap();
    out
}

fn intent_for(store: &dyn StateStore, id: &str, flows: &[&str]) -> ArchiveIntent {
    let parts = flows
        .iter()
        .map(|f| SealedPart {
            meta: store.live_flow("t", f).unwrap().expect("live flow"),
            archive_status: FlowStatus::Completed,
            purge_at_ms: 0,
        })
        .collect();
    ArchiveIntent {
        id: id.into(),
        tenant: "t".into(),
        object_key: format!("k/{id}"),
        archived_at_ms: 0,
        compression: Compression::Zstd,
        zstd_level: 3,
        parts,
        stage: IntentStage::Pending,
    }
}

macro_rules! conformance {
    ($backend:ident, $open:expr) => {
        mod $backend {
            use super::*;

            fn open(dir: &std::path::Path) -> Box<dyn StateStore> {
                #[allow(clippy::redundant_closure_call)]
                ($open)(dir)
            }

            /// A flow's events spread over batches whose sequences interleave, with
            /// batches holding several events of it (one row of a run on PostgreSQL)
            /// and events large enough to close a run: read singly and read ahead,
            /// they come back in sequence order, counted one by one.
            #[test]
            fn batches_with_interleaved_sequences_read_back_in_flow_order() {
                let dir = tempfile::tempdir().unwrap();
                let s = open(dir.path());
                let p = policy();
                let big = |id: &str, seq: u64| {
                    let mut e = event("f", id, seq, FlowStatus::Running, seq as i64);
                    e.raw = format!("{{\"id\":\"{id}\",\"pad\":\"{}\"}}", "x".repeat(150_000))
                        .into_bytes();
                    e
                };
                let batches = [
                    vec![
                        event("f", "7", 7, FlowStatus::Running, 7),
                        event("f", "1", 1, FlowStatus::Running, 1),
                        event("f", "4", 4, FlowStatus::Running, 4),
                    ],
                    vec![
                        event("f", "8", 8, FlowStatus::Running, 8),
                        event("f", "2", 2, FlowStatus::Running, 2),
                        event("g", "x", 1, FlowStatus::Completed, 1),
                        event("f", "5", 5, FlowStatus::Running, 5),
                        event("f", "2", 2, FlowStatus::Running, 2),
                    ],
                    vec![big("3", 3), big("6", 6), big("9", 9)],
                    vec![event("f", "10", 10, FlowStatus::Completed, 10)],
                ];
                let mut stored = 0;
                for batch in &batches {
                    stored += s.ingest(batch, &p, 0, None).unwrap().stored;
                }
                assert_eq!(stored, 11, "one duplicate");
                let ids = |events: Vec<String>| -> Vec<String> {
                    events
                        .iter()
                        .map(|e| {
                            let v: serde_json::Value = serde_json::from_str(e).unwrap();
                            v["id"].as_str().unwrap().to_string()
                        })
                        .collect()
                };
                let expected: Vec<String> = (1..=10).map(|i| i.to_string()).collect();
                assert_eq!(ids(events_of(&*s, "f", 1)), expected);
                let reader = s.event_reader().unwrap();
                let meta = reader.live_flow("t", "f").unwrap().unwrap();
                let other = reader.live_flow("t", "g").unwrap().unwrap();
                reader.read_ahead(&[&other, &meta]).unwrap();
                let mut ahead = Vec::new();
                reader
                    .for_each_event("t", "f", 1, &mut |b| {
                        ahead.push(String::from_utf8_lossy(b).into_owned());
                        Ok(())
                    })
                    .unwrap();
                assert_eq!(ids(ahead), expected);
                drop(reader);
                assert_eq!(s.stats().unwrap().stored_events, 11);
                assert_eq!(meta.event_count, 10);
                let erased = s.erase_live("t", "f").unwrap();
                assert_eq!(erased.events, 10);
                assert_eq!(s.stats().unwrap().stored_events, 1);
            }

            #[test]
            fn events_come_back_in_sequence_order_without_duplicates() {
                let dir = tempfile::tempdir().unwrap();
                let s = open(dir.path());
                let p = policy();
                let batch = [
                    event("f", "c", 10, FlowStatus::Completed, 3),
                    event("f", "a", 2, FlowStatus::Running, 1),
                    event("f", "b", 9, FlowStatus::Running, 2),
                    event("f", "a", 2, FlowStatus::Running, 1),
                ];
                let out = s.ingest(&batch, &p, 0, Some(("src", b"pos-1"))).unwrap();
                assert_eq!((out.stored, out.duplicates), (3, 1));
                let again = s.ingest(&batch[..1], &p, 0, None).unwrap();
                assert_eq!(again.duplicates, 1, "duplicates across batches too");
                assert_eq!(
                    events_of(&*s, "f", 1),
                    vec![
                        r#"{"id":"a","seq":2}"#,
                        r#"{"id":"b","seq":9}"#,
                        r#"{"id":"c","seq":10}"#
                    ]
                );
                let meta = s.live_flow("t", "f").unwrap().unwrap();
                assert_eq!(
                    meta.status,
                    FlowStatus::Completed,
                    "status of the highest sequence"
                );
                assert_eq!(meta.event_count, 3);
                assert_eq!(s.checkpoint("src").unwrap().as_deref(), Some(&b"pos-1"[..]));
                let stats = s.stats().unwrap();
                assert_eq!((stats.live_flows, stats.stored_events), (1, 3));
            }

            #[test]
            fn due_flows_come_from_the_deadline_index_in_deadline_order() {
                let dir = tempfile::tempdir().unwrap();
                let s = open(dir.path());
                let p = policy();
                let mut batch = Vec::new();
                for i in 0..50 {
                    // Completed flows at staggered times, plus running flows that are never due.
                    batch.push(event(
                        &format!("done-{i:02}"),
                        "e",
                        1,
                        FlowStatus::Completed,
                        i * MIN,
                    ));
                    batch.push(event(
                        &format!("busy-{i:02}"),
                        "e",
                        1,
                        FlowStatus::Running,
                        0,
                    ));
                }
                s.ingest(&batch, &p, 0, None).unwrap();
                assert!(
                    s.due_flows(10 * MIN - 1, 100).unwrap().is_empty(),
                    "nothing one ms early"
                );
                let due = s.due_flows(10 * MIN + 5 * MIN, 100).unwrap();
                let ids: Vec<&str> = due.iter().map(|m| m.flow_id.as_str()).collect();
                assert_eq!(
                    ids,
                    ["done-00", "done-01", "done-02", "done-03", "done-04", "done-05"]
                );
                assert_eq!(
                    s.due_flows(i64::MAX / 2, 3).unwrap().len(),
                    3,
                    "limit respected"
                );
                // A new event moves the timer.
                s.ingest(
                    &[event("done-00", "late", 2, FlowStatus::Completed, 30 * MIN)],
                    &p,
                    0,
                    None,
                )
                .unwrap();
                let due = s.due_flows(15 * MIN, 100).unwrap();
                assert!(due.iter().all(|m| m.flow_id != "done-00"));
            }

            #[test]
            fn seal_complete_and_the_next_part() {
                let dir = tempfile::tempdir().unwrap();
                let s = open(dir.path());
                let p = policy();
                s.ingest(
                    &[
                        event("f", "1", 1, FlowStatus::Completed, 0),
                        event("g", "1", 1, FlowStatus::Completed, 0),
                    ],
                    &p,
                    0,
                    None,
                )
                .unwrap();
                let intent = intent_for(&*s, "i1", &["f", "g"]);
                // g changes after it was read: it is left for the next pass.
                s.ingest(&[event("g", "2", 2, FlowStatus::Completed, 0)], &p, 0, None)
                    .unwrap();
                let sealed = s.seal(intent).unwrap().expect("f qualifies");
                assert_eq!(sealed.parts.len(), 1);
                assert!(
                    s.live_flow("t", "f").unwrap().is_none(),
                    "sealed flows leave the live set"
                );
                assert!(s
                    .due_flows(i64::MAX / 2, 10)
                    .unwrap()
                    .iter()
                    .all(|m| m.flow_id != "f"));
                assert_eq!(
                    events_of(&*s, "f", 1).len(),
                    1,
                    "sealed events stay until complete"
                );

                // An event during archival opens part 2; part 1 is untouched.
                s.ingest(&[event("f", "3", 3, FlowStatus::Completed, 0)], &p, 0, None)
                    .unwrap();
                assert_eq!(s.live_flow("t", "f").unwrap().unwrap().part, 2);
                assert_eq!(events_of(&*s, "f", 1).len(), 1);

                let proof = VerifiedObject {
                    object_sha256: "ab".into(),
                    object_size: 1,
                };
                s.record_upload("i1", &proof).unwrap();
                let pending = s.intents().unwrap();
                assert_eq!(pending.len(), 1);
                assert_eq!(pending[0].stage, IntentStage::Verified(proof));

                s.complete("i1").unwrap();
                assert!(s.intents().unwrap().is_empty());
                assert!(
                    events_of(&*s, "f", 1).is_empty(),
                    "archived events are deleted"
                );
                assert_eq!(events_of(&*s, "f", 2).len(), 1);
                assert!(
                    s.complete("i1").is_err(),
                    "completing twice is an error, not a no-op"
                );
                // A redelivered event of the archived part is still a duplicate.
                let out = s
                    .ingest(&[event("f", "1", 1, FlowStatus::Completed, 0)], &p, 0, None)
                    .unwrap();
                assert_eq!(out.duplicates, 1);
            }

            #[test]
            fn large_parts_read_in_order_and_dedupe_across_the_inline_index() {
                // 100 events in shuffled sequence order over 5 batches: more than a
                // meta record keeps inline, so they end up in both places.
                let dir = tempfile::tempdir().unwrap();
                let s = open(dir.path());
                let p = policy();
                let mut seqs: Vec<u64> = (1..=100).collect();
                seqs.reverse();
                seqs.swap(3, 60);
                seqs.swap(10, 90);
                let ev = |seq: u64| {
                    let status = if seq == 100 {
                        FlowStatus::Completed
                    } else {
                        FlowStatus::Running
                    };
                    event("big", &format!("e{seq}"), seq, status, 0)
                };
                let mut stored = 0;
                for chunk in seqs.chunks(20) {
                    let mut batch: Vec<FlowEvent> = chunk.iter().map(|&q| ev(q)).collect();
                    // Redeliveries of the batch's first event and of the very first one.
                    batch.push(ev(chunk[0]));
                    batch.push(ev(seqs[0]));
                    let out = s.ingest(&batch, &p, 0, None).unwrap();
                    assert_eq!(out.duplicates, 2);
                    stored += out.stored;
                }
                assert_eq!(stored, 100);
                let expected: Vec<String> = (1..=100)
                    .map(|q| format!("{{\"id\":\"e{q}\",\"seq\":{q}}}"))
                    .collect();
                assert_eq!(events_of(&*s, "big", 1), expected, "open part, in order");
                let meta = s.live_flow("t", "big").unwrap().unwrap();
                assert_eq!(
                    (meta.event_count, meta.status),
                    (100, FlowStatus::Completed)
                );

                // Sealed: still in order until complete, then gone.
                s.seal(intent_for(&*s, "i1", &["big"]))
                    .unwrap()
                    .expect("sealed");
                assert_eq!(events_of(&*s, "big", 1), expected, "sealed part, in order");
                s.complete("i1").unwrap();
                assert!(events_of(&*s, "big", 1).is_empty());
                assert_eq!(s.stats().unwrap().stored_events, 0);

                // Redeliveries of archived events, early (inline digest) and late
                // (individual key), are duplicates; a new event opens part 2.
                let out = s
                    .ingest(
                        &[
                            ev(100),
                            ev(1),
                            ev(50),
                            event("big", "new", 101, FlowStatus::Running, 0),
                        ],
                        &p,
                        0,
                        None,
                    )
                    .unwrap();
                assert_eq!((out.duplicates, out.stored, out.reopened), (3, 1, 1));
                assert_eq!(events_of(&*s, "big", 2), vec![r#"{"id":"new","seq":101}"#]);
                // Everything survives reopening the store.
                drop(s);
                let s = open(dir.path());
                let again = s.ingest(&[ev(7)], &p, 0, None).unwrap();
                assert_eq!(again.duplicates, 1);
                assert_eq!(events_of(&*s, "big", 2).len(), 1);
            }

            #[test]
            fn state_survives_reopening() {
                let dir = tempfile::tempdir().unwrap();
                {
                    let s = open(dir.path());
                    s.ingest(
                        &[event("f", "1", 1, FlowStatus::Completed, 0)],
                        &policy(),
                        0,
                        Some(("src", b"9")),
                    )
                    .unwrap();
                    s.seal(intent_for(&*s, "i1", &["f"])).unwrap();
                }
                let s = open(dir.path());
                assert_eq!(s.checkpoint("src").unwrap().as_deref(), Some(&b"9"[..]));
                assert_eq!(s.intents().unwrap().len(), 1);
                assert_eq!(events_of(&*s, "f", 1).len(), 1);
            }

            #[test]
            fn a_sealed_part_stays_out_of_the_live_set_and_keeps_its_number() {
                let dir = tempfile::tempdir().unwrap();
                let s = open(dir.path());
                let p = policy();
                s.ingest(
                    &[
                        event("f", "1", 1, FlowStatus::Completed, 0),
                        event("g", "1", 1, FlowStatus::Completed, 0),
                    ],
                    &p,
                    0,
                    None,
                )
                .unwrap();
                let intent = intent_for(&*s, "i1", &["f"]);
                s.seal(intent.clone()).unwrap().expect("sealed");
                assert!(s.live_flow("t", "f").unwrap().is_none());
                let reader = s.event_reader().unwrap();
                assert!(reader.live_flow("t", "f").unwrap().is_none());
                drop(reader);
                assert_eq!(s.stats().unwrap().live_flows, 1);
                assert!(
                    s.seal(intent).unwrap().is_none(),
                    "a part is sealed into one intent only"
                );

                // A new policy gives deadlines to live flows only.
                let mut r = Config::default().retention;
                r.completed = Retention::After(Duration::from_secs(60));
                assert_eq!(s.apply_policy(&RetentionPolicy::new(r)).unwrap(), 1);
                let due = s.due_flows(MIN, 10).unwrap();
                assert_eq!(due.len(), 1);
                assert_eq!(due[0].flow_id, "g");

                // Erasing it takes the sealed events, but it was not an open part, and
                // its part number stays taken.
                let erased = s.erase_live("t", "f").unwrap();
                assert!(!erased.open_part);
                assert_eq!(s.stats().unwrap().live_flows, 1);
                s.ingest(&[event("f", "2", 2, FlowStatus::Running, 0)], &p, 0, None)
                    .unwrap();
                assert_eq!(s.live_flow("t", "f").unwrap().unwrap().part, 2);
                s.complete("i1").unwrap();
                assert_eq!(s.live_flow("t", "f").unwrap().unwrap().part, 2);
                assert_eq!(events_of(&*s, "f", 2).len(), 1);
                assert_eq!(s.stats().unwrap().live_flows, 2);
                // Its dedupe keys went with it; another flow's equal key is untouched.
                let again = s
                    .ingest(
                        &[
                            event("f", "1", 1, FlowStatus::Running, 0),
                            event("g", "1", 1, FlowStatus::Running, 0),
                        ],
                        &p,
                        0,
                        None,
                    )
                    .unwrap();
                assert_eq!((again.stored, again.duplicates), (1, 1));
            }

            #[test]
            fn live_flows_are_searched_by_tenant_and_prefix_a_page_at_a_time() {
                let dir = tempfile::tempdir().unwrap();
                let s = open(dir.path());
                let p = policy();
                let mut events = Vec::new();
                for flow in ["a-1", "a-2", "a-3", "b-1", "a_%x", "ü-1", "a-10"] {
                    events.push(event(flow, &format!("{flow}/1"), 1, FlowStatus::Running, 0));
                }
                let mut other = event("a-9", "u/1", 1, FlowStatus::Running, 0);
                other.tenant = "u".into();
                events.push(other);
                s.ingest(&events, &p, 0, None).unwrap();
                // A sealed part is no longer live.
                s.seal(intent_for(&*s, "i1", &["a-2"])).unwrap();

                let search = |tenant: Option<&str>, prefix: &str, limit: usize| {
                    let mut query = LiveQuery {
                        tenant: tenant.map(str::to_string),
                        flow_id_prefix: prefix.to_string(),
                        after: None,
                        limit,
                    };
                    let mut found = Vec::new();
                    for _ in 0..20 {
                        let page = s.live_flows(&query).unwrap();
                        assert!(page.flows.len() <= limit);
                        found.extend(
                            page.flows
                                .iter()
                                .map(|m| format!("{}/{}", m.tenant, m.flow_id)),
                        );
                        match page.resume_after {
                            Some(after) => query.after = Some(after),
                            None => return found,
                        }
                    }
                    panic!("the search did not end");
                };
                let mut a = search(Some("t"), "a-", 1);
                a.sort();
                assert_eq!(a, ["t/a-1", "t/a-10", "t/a-3"]);
                let mut every = search(None, "a-", 2);
                every.sort();
                assert_eq!(every, ["t/a-1", "t/a-10", "t/a-3", "u/a-9"]);
                // Prefixes are characters, not patterns.
                assert_eq!(search(Some("t"), "a_", 10), ["t/a_%x"]);
                assert!(search(Some("t"), "%", 10).is_empty());
                assert!(search(Some("t"), "_", 10).is_empty());
                assert_eq!(search(Some("t"), "ü", 10), ["t/ü-1"]);
                assert!(search(Some("nobody"), "", 10).is_empty());
                assert_eq!(search(Some("t"), "", 100).len(), 6);
            }

            #[test]
            fn a_policy_change_recomputes_deadlines_once() {
                let dir = tempfile::tempdir().unwrap();
                let s = open(dir.path());
                let p = policy();
                assert_eq!(s.apply_policy(&p).unwrap(), 0);
                s.ingest(&[event("f", "1", 1, FlowStatus::Completed, 0)], &p, 0, None)
                    .unwrap();
                let mut r = Config::default().retention;
                r.completed = Retention::After(Duration::from_secs(60));
                let shorter = RetentionPolicy::new(r);
                assert_eq!(s.apply_policy(&shorter).unwrap(), 1);
                assert_eq!(
                    s.apply_policy(&shorter).unwrap(),
                    0,
                    "unchanged policy: no work"
                );
                assert_eq!(s.due_flows(MIN, 10).unwrap().len(), 1);
            }
        }
    };
}

conformance!(embedded, |dir: &std::path::Path| -> Box<dyn StateStore> {
    Box::new(EmbeddedStore::open(&state_config(dir, 16 << 20)).unwrap())
});

conformance!(postgres, |dir: &std::path::Path| -> Box<dyn StateStore> {
    Box::new(PostgresStore::open(&pg_config(&database_for(dir), Duration::from_secs(30))).unwrap())
});

fn state_config(dir: &std::path::Path, journal_file_bytes: u64) -> StateConfig {
    StateConfig {
        path: dir.to_path_buf(),
        journal_file_bytes,
        ..StateConfig::default()
    }
}

fn pg_config(url: &str, lease: Duration) -> StateConfig {
    StateConfig {
        backend: StateBackend::Postgres,
        url: Some(url.to_string()),
        lease,
        retry_for: Duration::from_secs(20),
        ..StateConfig::default()
    }
}

/// The event journal of the embedded store, on disk: `(file name, bytes)`, sorted.
fn journal_files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("journal"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

fn archive_now(s: &dyn StateStore, id: &str, flows: &[&str]) {
    s.seal(intent_for(s, id, flows)).unwrap().expect("sealed");
    s.complete(id).unwrap();
}

#[test]
fn journal_files_are_deleted_once_every_event_in_them_is_archived() {
    let dir = tempfile::tempdir().unwrap();
    // ~30-byte events, 4 KiB files: each batch of 200 events starts a new file.
    let s = EmbeddedStore::open(&state_config(dir.path(), 4096)).unwrap();
    let p = policy();
    let flows: Vec<String> = (0..40).map(|i| format!("f{i:02}")).collect();
    for batch in 0..4 {
        let events: Vec<FlowEvent> = (0..200)
            .map(|i| {
                let flow = &flows[i % 40];
                event(
                    flow,
                    &format!("{batch}-{i}"),
                    (batch * 200 + i) as u64,
                    FlowStatus::Completed,
                    0,
                )
            })
            .collect();
        s.ingest(&events, &p, 0, None).unwrap();
    }
    // "pinned" has one event in the first file only.
    assert_eq!(journal_files(dir.path()).len(), 4);
    let first = journal_files(dir.path())[0].0.clone();
    s.ingest(
        &[event("pinned", "p", 1, FlowStatus::Running, 0)],
        &p,
        0,
        None,
    )
    .unwrap();
    assert_eq!(journal_files(dir.path()).len(), 5, "the full file rotated");

    let all: Vec<&str> = flows.iter().map(String::as_str).collect();
    archive_now(&s, "i1", &all);
    let left: Vec<String> = journal_files(dir.path()).into_iter().map(|f| f.0).collect();
    assert_eq!(
        left.len(),
        1,
        "every file but the active one is freed once its events are archived: {left:?}"
    );
    assert_eq!(events_of(&s, "pinned", 1), vec![r#"{"id":"p","seq":1}"#]);
    assert_ne!(left[0], first);

    // A reader opened before an archival keeps the files it may read.
    s.ingest(
        &(0..200)
            .map(|i| event("late", &format!("l{i}"), i, FlowStatus::Completed, 0))
            .collect::<Vec<_>>(),
        &p,
        0,
        None,
    )
    .unwrap();
    let reader = s.event_reader().unwrap();
    s.ingest(
        &[event("next", "n", 1, FlowStatus::Completed, 0)],
        &p,
        0,
        None,
    )
    .unwrap();
    archive_now(&s, "i2", &["late", "pinned"]);
    let mut seen = 0;
    reader
        .for_each_event("t", "late", 1, &mut |_| {
            seen += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(seen, 200, "the open reader still reads its snapshot");
    drop(reader);
    s.ingest(
        &[event("next", "n2", 2, FlowStatus::Completed, 0)],
        &p,
        0,
        None,
    )
    .unwrap();
    assert_eq!(
        journal_files(dir.path()).len(),
        1,
        "freed files go once the reader has closed"
    );
    assert_eq!(events_of(&s, "next", 1).len(), 2);
}

#[test]
fn an_uncommitted_journal_tail_is_cut_at_open_and_stray_files_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let p = policy();
    {
        let s = EmbeddedStore::open(&state_config(dir.path(), 1 << 20)).unwrap();
        s.ingest(&[event("f", "1", 1, FlowStatus::Running, 0)], &p, 0, None)
            .unwrap();
    }
    // What a SIGKILL between the journal write and the commit leaves: bytes past the
    // committed end, and a file started by a rotation that never committed.
    let (name, committed) = journal_files(dir.path()).remove(0);
    let active = dir.path().join("journal").join(&name);
    let mut torn = committed.clone();
    torn.extend_from_slice(b"{\"id\":\"never-committed\"}");
    std::fs::write(&active, &torn).unwrap();
    std::fs::write(dir.path().join("journal/00000099.log"), b"stray").unwrap();

    let s = EmbeddedStore::open(&state_config(dir.path(), 1 << 20)).unwrap();
    assert_eq!(journal_files(dir.path()), vec![(name, committed)]);
    s.ingest(&[event("f", "2", 2, FlowStatus::Completed, 0)], &p, 0, None)
        .unwrap();
    assert_eq!(
        events_of(&s, "f", 1),
        vec![r#"{"id":"1","seq":1}"#, r#"{"id":"2","seq":2}"#]
    );
}

#[test]
fn a_damaged_journal_byte_is_an_error_naming_the_file_not_wrong_history() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(&state_config(dir.path(), 1 << 20)).unwrap();
    s.ingest(
        &[event("f", "1", 1, FlowStatus::Running, 0)],
        &policy(),
        0,
        None,
    )
    .unwrap();
    let (name, mut bytes) = journal_files(dir.path()).remove(0);
    bytes[3] ^= 0x20;
    std::fs::write(dir.path().join("journal").join(&name), &bytes).unwrap();
    let err = s
        .for_each_event("t", "f", 1, &mut |_| Ok(()))
        .expect_err("a CRC mismatch");
    let text = err.to_string();
    assert!(text.contains(&name) && text.contains("CRC"), "{text}");
}

#[test]
fn erasing_a_live_flow_overwrites_its_bytes_in_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(&state_config(dir.path(), 1 << 20)).unwrap();
    let p = policy();
    s.ingest(
        &[
            event("keep", "k1", 1, FlowStatus::Running, 0),
            event("secret-flow", "s-private-1", 1, FlowStatus::Running, 0),
            event("keep", "k2", 2, FlowStatus::Running, 0),
            event("secret-flow", "s-private-2", 2, FlowStatus::Running, 0),
        ],
        &p,
        0,
        None,
    )
    .unwrap();
    // More than a meta record keeps inline: the rest are individual entries.
    let more: Vec<FlowEvent> = (3..43)
        .map(|i| {
            event(
                "secret-flow",
                &format!("s-private-{i}"),
                i,
                FlowStatus::Running,
                0,
            )
        })
        .collect();
    s.ingest(&more, &p, 0, None).unwrap();
    let erased = s.erase_live("t", "secret-flow").unwrap();
    assert_eq!(erased.events, 42);
    assert_eq!(s.stats().unwrap().stored_events, 2);
    let on_disk: Vec<u8> = journal_files(dir.path())
        .into_iter()
        .flat_map(|f| f.1)
        .collect();
    let text = String::from_utf8_lossy(&on_disk);
    assert!(!text.contains("s-private"), "erased bytes left: {text:?}");
    assert_eq!(
        events_of(&s, "keep", 1),
        vec![r#"{"id":"k1","seq":1}"#, r#"{"id":"k2","seq":2}"#]
    );
}

/// Ingests four batches into 4 KiB journal files: each batch 199 events of ten
/// finished flows, plus `pin(batch)`. Returns the finished flows.
fn fill_four_files(s: &EmbeddedStore, pin: impl Fn(u64) -> FlowEvent) -> Vec<String> {
    for batch in 0..4u64 {
        let mut events: Vec<FlowEvent> = (0..199)
            .map(|i| {
                event(
                    &format!("done-{batch}-{}", i % 10),
                    &format!("{batch}-{i}"),
                    i,
                    FlowStatus::Completed,
                    0,
                )
            })
            .collect();
        events.push(pin(batch));
        s.ingest(&events, &policy(), 0, None).unwrap();
    }
    (0..4)
        .flat_map(|b| (0..10).map(move |i| format!("done-{b}-{i}")))
        .collect()
}

#[test]
fn compaction_moves_the_few_live_events_of_mostly_archived_files_and_frees_them() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(&state_config(dir.path(), 4096)).unwrap();
    let p = policy();
    // Four files, each with 199 events of finished flows and one of a running flow.
    let done = fill_four_files(&s, |batch| {
        event(
            "running",
            &format!("r{batch}"),
            batch,
            FlowStatus::Running,
            0,
        )
    });
    let before = journal_files(dir.path());
    assert_eq!(before.len(), 4);
    assert_eq!(
        s.compact().unwrap(),
        Default::default(),
        "nothing to do while the files are full of live events"
    );

    let done: Vec<&str> = done.iter().map(String::as_str).collect();
    archive_now(&s, "i1", &done);
    assert_eq!(
        journal_files(dir.path()).len(),
        4,
        "one running flow pins every file"
    );

    // The active file is full too, so the moved events start a fifth file, and the
    // fourth (no longer active, mostly dead) is compacted in the same call.
    let c = s.compact().unwrap();
    assert_eq!((c.files, c.moved_events), (4, 4), "{c:?}");
    let after = journal_files(dir.path());
    assert_eq!(after.len(), 1, "only the active file is left");
    assert!(c.freed_bytes > 0);
    assert_eq!(
        events_of(&s, "running", 1),
        vec![
            r#"{"id":"r0","seq":0}"#,
            r#"{"id":"r1","seq":1}"#,
            r#"{"id":"r2","seq":2}"#,
            r#"{"id":"r3","seq":3}"#
        ],
        "moved events read back in order"
    );
    assert_eq!(s.compact().unwrap(), Default::default(), "idempotent");

    // The moved events survive a restart and archive like any other.
    drop(s);
    let s = EmbeddedStore::open(&state_config(dir.path(), 4096)).unwrap();
    assert_eq!(events_of(&s, "running", 1).len(), 4);
    s.ingest(
        &[event("running", "end", 9, FlowStatus::Completed, 0)],
        &p,
        0,
        None,
    )
    .unwrap();
    archive_now(&s, "i2", &["running"]);
    assert!(events_of(&s, "running", 1).is_empty());
}

#[test]
fn compaction_repoints_the_inline_events_of_a_sealed_part() {
    // As above, but the flow pinning the files is sealed (its inline events are still
    // in its meta record) and not yet deleted when compaction runs.
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(&state_config(dir.path(), 4096)).unwrap();
    let done = fill_four_files(&s, |batch| {
        event(
            "sealed",
            &format!("s{batch}"),
            10 - batch,
            FlowStatus::Completed,
            0,
        )
    });
    let done: Vec<&str> = done.iter().map(String::as_str).collect();
    archive_now(&s, "i1", &done);
    s.seal(intent_for(&s, "i2", &["sealed"]))
        .unwrap()
        .expect("sealed");

    let c = s.compact().unwrap();
    assert_eq!((c.files, c.moved_events), (4, 4), "{c:?}");
    assert_eq!(journal_files(dir.path()).len(), 1);
    let expected = vec![
        r#"{"id":"s3","seq":7}"#,
        r#"{"id":"s2","seq":8}"#,
        r#"{"id":"s1","seq":9}"#,
        r#"{"id":"s0","seq":10}"#,
    ];
    assert_eq!(events_of(&s, "sealed", 1), expected, "read back in order");
    drop(s);
    let s = EmbeddedStore::open(&state_config(dir.path(), 4096)).unwrap();
    assert_eq!(events_of(&s, "sealed", 1), expected, "after reopening");
    s.complete("i2").unwrap();
    assert!(events_of(&s, "sealed", 1).is_empty());
    assert_eq!(s.stats().unwrap().stored_events, 0);
}

#[test]
fn compaction_repoints_the_chunked_events_of_a_long_part() {
    // As above, but the pinning flow has 25 events in each file: 100 in all, 68 of
    // them in chunks past its inline ones, in reverse sequence order.
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(&state_config(dir.path(), 4096)).unwrap();
    let mut done = Vec::new();
    for batch in 0..4u64 {
        let mut events: Vec<FlowEvent> = (0..25)
            .map(|i| {
                let seq = 100 - (batch * 25 + i);
                event("long", &format!("l{seq}"), seq, FlowStatus::Running, 0)
            })
            .collect();
        for i in 0..200 {
            let flow = format!("done-{batch}-{}", i % 10);
            events.push(event(
                &flow,
                &format!("{batch}-{i}"),
                i,
                FlowStatus::Completed,
                0,
            ));
        }
        s.ingest(&events, &policy(), 0, None).unwrap();
        done.extend((0..10).map(|i| format!("done-{batch}-{i}")));
    }
    assert_eq!(journal_files(dir.path()).len(), 4);
    let done: Vec<&str> = done.iter().map(String::as_str).collect();
    archive_now(&s, "i1", &done);

    let c = s.compact().unwrap();
    assert_eq!((c.files, c.moved_events), (4, 100), "{c:?}");
    assert_eq!(journal_files(dir.path()).len(), 1);
    let expected: Vec<String> = (1..=100)
        .map(|q| format!("{{\"id\":\"l{q}\",\"seq\":{q}}}"))
        .collect();
    assert_eq!(events_of(&s, "long", 1), expected, "read back in order");
    drop(s);
    let s = EmbeddedStore::open(&state_config(dir.path(), 4096)).unwrap();
    assert_eq!(events_of(&s, "long", 1), expected, "after reopening");
    drop(s);
    let check = EmbeddedStore::check(&state_config(dir.path(), 4096)).unwrap();
    assert!(check.is_clean(), "{check:?}");
    assert_eq!(
        check.events_checked, 100,
        "the chunks' pointers are checked"
    );
    let s = EmbeddedStore::open(&state_config(dir.path(), 4096)).unwrap();
    archive_now(&s, "i2", &["long"]);
    assert!(events_of(&s, "long", 1).is_empty());
    assert_eq!(s.stats().unwrap().stored_events, 0);
}

/// Two instances on one database: a flow whose events reach both keeps one history,
/// in sequence order, deduplicated across them.
#[test]
fn postgres_instances_share_one_history_per_flow() {
    let dir = tempfile::tempdir().unwrap();
    let url = database_for(dir.path());
    let a = PostgresStore::open(&pg_config(&url, Duration::from_secs(30))).unwrap();
    let b = PostgresStore::open(&pg_config(&url, Duration::from_secs(30))).unwrap();
    let p = policy();
    // Interleaved halves, one redelivered to the other instance (a rebalance overlap).
    a.ingest(&[event("f", "3", 3, FlowStatus::Running, 3)], &p, 0, None)
        .unwrap();
    b.ingest(
        &[
            event("f", "1", 1, FlowStatus::Running, 1),
            event("f", "3", 3, FlowStatus::Running, 3),
        ],
        &p,
        0,
        None,
    )
    .unwrap();
    let out = a
        .ingest(&[event("f", "9", 9, FlowStatus::Completed, 9)], &p, 0, None)
        .unwrap();
    assert_eq!(out.stored, 1);
    for s in [&a as &dyn StateStore, &b] {
        assert_eq!(
            events_of(s, "f", 1),
            vec![
                r#"{"id":"1","seq":1}"#,
                r#"{"id":"3","seq":3}"#,
                r#"{"id":"9","seq":9}"#
            ]
        );
        let meta = s.live_flow("t", "f").unwrap().unwrap();
        assert_eq!((meta.part, meta.event_count), (1, 3));
        assert_eq!(meta.status, FlowStatus::Completed);
    }
    // Holds are one record: placed through one, seen by the other at once.
    let hold = flow_archiver::state::Hold {
        tenant: "t".into(),
        flow_id: "f".into(),
        reason: "case 7".into(),
        actor: "legal".into(),
        at_ms: 1,
    };
    a.set_hold("t", "f", Some(&hold)).unwrap();
    assert_eq!(b.holds().unwrap(), vec![hold]);
}

/// Due flows are claimed: two instances never get the same flow, and a seal from
/// stale reads is refused.
#[test]
fn postgres_due_flows_are_claimed_by_one_instance() {
    let dir = tempfile::tempdir().unwrap();
    let url = database_for(dir.path());
    let a = PostgresStore::open(&pg_config(&url, Duration::from_secs(30))).unwrap();
    let b = PostgresStore::open(&pg_config(&url, Duration::from_secs(30))).unwrap();
    let p = policy();
    let batch: Vec<_> = (0..20)
        .map(|i| event(&format!("f{i:02}"), "1", 1, FlowStatus::Completed, 0))
        .collect();
    a.ingest(&batch, &p, 0, None).unwrap();
    let got_a = a.due_flows(i64::MAX / 2, 12).unwrap();
    let got_b = b.due_flows(i64::MAX / 2, 100).unwrap();
    assert_eq!((got_a.len(), got_b.len()), (12, 8));
    assert!(got_a
        .iter()
        .all(|m| got_b.iter().all(|n| n.flow_id != m.flow_id)));
    // Both seal the same flow from the same read: one intent wins.
    let one = intent_for(&a, "ia", &["f00"]);
    let mut other = one.clone();
    other.id = "ib".into();
    assert!(a.seal(one).unwrap().is_some());
    assert!(b.seal(other).unwrap().is_none(), "sealed once only");

    // Rows that moved after the claim: a late event (the claimed meta is stale, so
    // that part is not sealed) and a table rewrite (the meta is still current, so it
    // is sealed all the same), beside a row that stayed where the claim left it.
    let claimed = |flow: &str| got_a.iter().find(|m| m.flow_id == flow).unwrap().clone();
    let (late, moved, stayed) = (claimed("f01"), claimed("f02"), claimed("f03"));
    b.ingest(
        &[event("f01", "2", 2, FlowStatus::Completed, 1)],
        &p,
        0,
        None,
    )
    .unwrap();
    let pg = crate::support::shared_pg();
    let where_f02 = "SELECT ctid FROM flows WHERE flow_id = 'f02'";
    let before = pg.psql(&db_name(&url), where_f02);
    pg.psql(&db_name(&url), "VACUUM FULL flows");
    assert_ne!(pg.psql(&db_name(&url), where_f02), before, "the row moved");
    let mut intent = intent_for(&a, "ic", &["f03"]);
    intent.parts = [late, moved, stayed]
        .into_iter()
        .map(|meta| SealedPart {
            meta,
            archive_status: FlowStatus::Completed,
            purge_at_ms: 0,
        })
        .collect();
    let sealed = a.seal(intent).unwrap().expect("sealed");
    let flows: Vec<&str> = sealed
        .parts
        .iter()
        .map(|p| p.meta.flow_id.as_str())
        .collect();
    assert_eq!(flows, vec!["f02", "f03"]);
    assert_eq!(a.live_flow("t", "f01").unwrap().unwrap().event_count, 2);
    assert!(a.live_flow("t", "f02").unwrap().is_none());
}

/// An instance that stops renewing its lease is fenced off its intent: another takes
/// it over at its recorded stage, and the late one can no longer record, publish or
/// delete anything.
#[test]
fn postgres_intents_of_a_dead_instance_are_taken_over_and_the_late_one_is_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let url = database_for(dir.path());
    let lease = Duration::from_secs(3);
    let a = PostgresStore::open(&pg_config(&url, lease)).unwrap();
    let b = PostgresStore::open(&pg_config(&url, lease)).unwrap();
    let p = policy();
    a.ingest(&[event("f", "1", 1, FlowStatus::Completed, 0)], &p, 0, None)
        .unwrap();
    a.seal(intent_for(&a, "i1", &["f"])).unwrap().unwrap();
    let proof = VerifiedObject {
        object_sha256: "ab".into(),
        object_size: 1,
    };
    a.record_upload("i1", &proof).unwrap();
    assert!(
        b.claim_intents().unwrap().is_empty(),
        "a live owner's intent is not taken"
    );
    // `a` stalls: it stops renewing. Its heartbeat is stopped by pausing it the only
    // way a test can, by taking its lease away in the database.
    crate::support::shared_pg().psql(
        url.rsplit('/').next().unwrap().split('?').next().unwrap(),
        "UPDATE intents SET lease_until = now() - interval '1 second'",
    );
    let taken = b.claim_intents().unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(
        taken[0].stage,
        IntentStage::Verified(proof.clone()),
        "resumed at its stage"
    );
    for refused in [
        a.record_upload("i1", &proof).unwrap_err(),
        a.confirm_claim("i1").unwrap_err(),
        a.complete("i1").unwrap_err(),
    ] {
        assert!(matches!(refused, StateError::Fenced(_)), "{refused}");
    }
    assert_eq!(
        events_of(&b, "f", 1).len(),
        1,
        "the late one deleted nothing"
    );
    b.confirm_claim("i1").unwrap();
    b.complete("i1").unwrap();
    assert!(events_of(&a, "f", 1).is_empty());
    assert!(b.intents().unwrap().is_empty());
}

/// Purges and erasures in progress resume like archivals: the owner's own at its next
/// pass, another instance's once its lease has expired, never while it is alive.
#[test]
fn postgres_purges_and_erasures_of_a_dead_instance_are_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let url = database_for(dir.path());
    let lease = Duration::from_secs(3);
    let a = PostgresStore::open(&pg_config(&url, lease)).unwrap();
    let b = PostgresStore::open(&pg_config(&url, lease)).unwrap();
    let purge = PurgeIntent {
        object_key: "flows/t/o1.zst".into(),
        object_uri: "file:///archive/flows/t/o1.zst".into(),
        segment_id: "o1".into(),
        reason: "retention".into(),
        actor: None,
        at_ms: 1,
        parts: vec![("t".into(), "f".into(), 1)],
    };
    let erase = EraseIntent {
        tenant: "t".into(),
        flow_id: "g".into(),
        old_key: "flows/t/o2.zst".into(),
        old_uri: "file:///archive/flows/t/o2.zst".into(),
        old_segment_id: "o2".into(),
        rewrite: None,
        erased_parts: vec![1],
        reason: "request 7".into(),
        actor: "admin".into(),
        at_ms: 2,
    };
    a.begin_purge(&purge).unwrap();
    a.begin_erase(&erase).unwrap();
    assert!(
        b.purge_intents().unwrap().is_empty(),
        "a live owner's purge"
    );
    assert!(
        b.erase_intents().unwrap().is_empty(),
        "a live owner's erasure"
    );
    assert_eq!(a.purge_intents().unwrap(), vec![purge.clone()], "its own");
    assert_eq!(a.erase_intents().unwrap(), vec![erase.clone()], "its own");

    crate::support::shared_pg().psql(
        url.rsplit('/').next().unwrap().split('?').next().unwrap(),
        "UPDATE purge_intents SET lease_until = now() - interval '1 second';
         UPDATE erase_intents SET lease_until = now() - interval '1 second'",
    );
    assert_eq!(b.purge_intents().unwrap(), vec![purge.clone()]);
    assert_eq!(b.erase_intents().unwrap(), vec![erase.clone()]);
    assert!(a.purge_intents().unwrap().is_empty(), "now b's");
    b.finish_purge(&purge.object_key).unwrap();
    b.finish_erase(&erase.old_key).unwrap();
    assert!(b.purge_intents().unwrap().is_empty());
    assert!(b.erase_intents().unwrap().is_empty());
}

/// Three instances starting at once on an empty database: the migrations run once.
#[test]
fn postgres_migrations_apply_once_when_instances_start_together() {
    let dir = tempfile::tempdir().unwrap();
    let url = database_for(dir.path());
    let starts: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                PostgresStore::open(&pg_config(&url, Duration::from_secs(30))).map(|s| s.status())
            })
        })
        .collect();
    for s in starts {
        let status = s.join().unwrap().unwrap().unwrap();
        assert_eq!(status.version, status.known);
    }
    let db = url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        crate::support::shared_pg().psql(&db, "SELECT count(*) FROM flow_archiver_migrations"),
        crate::support::shared_pg().psql(&db, "SELECT max(version) FROM flow_archiver_migrations"),
        "each migration once"
    );
}

/// The database name in a `database_for` URL.
fn db_name(url: &str) -> String {
    let path = url.rsplit('/').next().unwrap();
    path.split('?').next().unwrap().to_string()
}

/// A database written by schema version 1 (one row per event in `events`) is
/// migrated at open, and its flows read back and archive as they were.
#[test]
fn postgres_a_version_1_database_is_migrated_with_its_events() {
    let pg = crate::support::shared_pg();
    let p = policy();
    // The rows version 1 would have written: metas from a current store, events one
    // per row (single-event batches write exactly that).
    let source = tempfile::tempdir().unwrap();
    let source_db = db_name(&database_for(source.path()));
    let s = PostgresStore::open(&pg_config(
        &database_for(source.path()),
        Duration::from_secs(30),
    ))
    .unwrap();
    for (seq, id) in [(2, "b"), (1, "a"), (3, "c")] {
        let status = if seq == 3 {
            FlowStatus::Completed
        } else {
            FlowStatus::Running
        };
        s.ingest(&[event("old", id, seq, status, seq as i64)], &p, 0, None)
            .unwrap();
    }
    drop(s);
    let rows = |sql: &str| -> Vec<String> {
        pg.psql(&source_db, sql)
            .lines()
            .map(str::to_string)
            .collect()
    };
    let flows = rows(
        "SELECT format('(%L, %L, %s, %L::bytea, %s)', tenant, flow_id, part,
                       '\\x' || encode(meta, 'hex'), coalesce(deadline_ms::text, 'NULL'))
         FROM flows",
    );
    let events = rows(
        "SELECT format('(%L, %L, %s, %L::bytea, %L::bytea)', tenant, flow_id, part,
                       '\\x' || encode(ord, 'hex'), '\\x' || encode(raw, 'hex'))
         FROM event_runs",
    );
    assert_eq!(events.len(), 3, "single-event rows");
    let dedupe = rows("SELECT format('(%L::bytea)', '\\x' || encode(key, 'hex')) FROM dedupe");

    let old = tempfile::tempdir().unwrap();
    let url = database_for(old.path());
    let db = db_name(&url);
    pg.psql(&db, include_str!("../../migrations/0001_initial.sql"));
    pg.psql(
        &db,
        &format!(
            "CREATE TABLE flow_archiver_migrations (version integer PRIMARY KEY, name text NOT NULL,
                                                    applied_at timestamptz NOT NULL DEFAULT now());
             INSERT INTO flow_archiver_migrations (version, name) VALUES (1, 'initial');
             INSERT INTO flows (tenant, flow_id, part, meta, deadline_ms) VALUES {};
             INSERT INTO events (tenant, flow_id, part, ord, raw) VALUES {};
             INSERT INTO dedupe (key) VALUES {};",
            flows.join(", "),
            events.join(", "),
            dedupe.join(", ")
        ),
    );

    let s = PostgresStore::open(&pg_config(&url, Duration::from_secs(30))).unwrap();
    assert_eq!(s.status().unwrap().version, 2);
    assert_eq!(
        events_of(&s, "old", 1),
        vec![
            r#"{"id":"a","seq":1}"#,
            r#"{"id":"b","seq":2}"#,
            r#"{"id":"c","seq":3}"#
        ]
    );
    // New events join the old rows' part, deduplicated against the old keys.
    let out = s
        .ingest(
            &[
                event("old", "a", 1, FlowStatus::Running, 1),
                event("old", "d", 4, FlowStatus::Completed, 4),
                event("old", "e", 5, FlowStatus::Completed, 5),
            ],
            &p,
            0,
            None,
        )
        .unwrap();
    assert_eq!((out.stored, out.duplicates), (2, 1));
    assert_eq!(events_of(&s, "old", 1).len(), 5);
    assert_eq!(s.stats().unwrap().stored_events, 5);
    archive_now(&s, "i-old", &["old"]);
    assert_eq!(s.stats().unwrap().stored_events, 0);
    // The old table name is gone: a binary of version 1 fails instead of misreading.
    assert!(pg.try_psql(&db, "SELECT count(*) FROM events").is_err());
}

/// A damaged row of events is an error that names the flow part, never a wrong
/// history: the count disagrees with the frames, or the frames are cut.
#[test]
fn postgres_a_damaged_event_run_is_an_error_naming_the_flow_part() {
    let pg = crate::support::shared_pg();
    let dir = tempfile::tempdir().unwrap();
    let url = database_for(dir.path());
    let db = db_name(&url);
    let s = PostgresStore::open(&pg_config(&url, Duration::from_secs(30))).unwrap();
    let p = policy();
    let batch: Vec<FlowEvent> = (1..=3)
        .map(|i| event("dmg", &i.to_string(), i, FlowStatus::Running, i as i64))
        .collect();
    s.ingest(&batch, &p, 0, None).unwrap();
    assert_eq!(pg.psql(&db, "SELECT n FROM event_runs"), "3");
    for damage in [
        "UPDATE event_runs SET n = 4",
        "UPDATE event_runs SET n = 3, raw = substring(raw from 1 for length(raw) - 2)",
        "UPDATE event_runs SET raw = '\\xffffffff00'::bytea",
        "UPDATE event_runs SET n = 0",
    ] {
        pg.psql(&db, damage);
        let mut sink = |_: &[u8]| Ok(());
        let err = s.for_each_event("t", "dmg", 1, &mut sink).unwrap_err();
        assert!(
            matches!(err, StateError::Corrupt { .. }) && err.to_string().contains("t/dmg part 1"),
            "{damage}: {err}"
        );
        let reader = s.event_reader().unwrap();
        let meta = reader.live_flow("t", "dmg").unwrap().unwrap();
        let err = reader.read_ahead(&[&meta]).unwrap_err();
        assert!(err.to_string().contains("t/dmg part 1"), "{damage}: {err}");
    }
}

/// Instances ingesting events of the same flows at the same moment: every event is
/// stored once, whichever transaction waits for which.
#[test]
fn postgres_concurrent_ingest_of_the_same_flows_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = database_for(dir.path());
    let stores: Vec<_> = (0..3)
        .map(|_| {
            std::sync::Arc::new(
                PostgresStore::open(&pg_config(&url, Duration::from_secs(30))).unwrap(),
            )
        })
        .collect();
    let threads: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let s = s.clone();
            std::thread::spawn(move || {
                let p = policy();
                for round in 0..20u64 {
                    // Each instance gets every third event of every flow, plus a
                    // redelivery of another instance's event.
                    let batch: Vec<_> = (0..50)
                        .flat_map(|f| {
                            let seq = round * 3 + i as u64;
                            let other = round * 3 + (i as u64 + 1) % 3;
                            [
                                event(
                                    &format!("f{f}"),
                                    &seq.to_string(),
                                    seq,
                                    FlowStatus::Running,
                                    0,
                                ),
                                event(
                                    &format!("f{f}"),
                                    &other.to_string(),
                                    other,
                                    FlowStatus::Running,
                                    0,
                                ),
                            ]
                        })
                        .collect();
                    s.ingest(&batch, &p, 0, None).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for f in 0..50 {
        let events = events_of(&*stores[0], &format!("f{f}"), 1);
        assert_eq!(events.len(), 60, "f{f}: {events:?}");
        let meta = stores[0].live_flow("t", &format!("f{f}")).unwrap().unwrap();
        assert_eq!(meta.event_count, 60);
    }
}
