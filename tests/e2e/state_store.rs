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
    ArchiveIntent, EmbeddedStore, EraseIntent, IntentStage, PostgresStore, PurgeIntent, SealedPart,
    StateError, StateStore, VerifiedObject,
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
        "1"
    );
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
