use super::*;
use crate::config::Config;
use crate::flow::FlowStatus;
use crate::state::test_support::{
    archive_now, default_policy, event as test_event, events_of, open_store, seal_now,
};
use crate::state::SealedPart;

/// A meta record written before inline indexes is postcard alone, and its flow's
/// events and dedupe keys are individual entries: it keeps deduplicating against
/// them, and new events join in order.
#[test]
fn meta_records_of_an_older_layout_keep_their_dedupe_keys_and_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), Config::default().state.journal_file_bytes);
    let policy = default_policy();
    let event = |id: &str, seq: &str| FlowEvent {
        sequence: Some(crate::flow::Sequence::Number(seq.into())),
        ..test_event("f", id, format!(r#"{{"id":"{id}"}}"#))
    };
    store
        .ingest(&[event("old", "5")], &policy, 0, None)
        .unwrap();
    // Rewrite it in the older layout: meta alone, an individual event entry and an
    // individual dedupe key.
    let fkey = flow_key("t", "f");
    let txn = store.write().unwrap();
    {
        let mut flows = txn.open_table(FLOWS).unwrap();
        let record = MetaRecord::decode(
            flows
                .get(meta_key(&fkey).as_slice())
                .unwrap()
                .unwrap()
                .value(),
        )
        .unwrap();
        let (order, pointer) = record.run.events[0].clone();
        let mut ekey = part_prefix(&fkey, 1);
        ekey.extend_from_slice(&order);
        flows
            .insert(ekey.as_slice(), pointer.encode().as_slice())
            .unwrap();
        flows
            .insert(dedupe_key(&fkey, "s", "old").as_slice(), [].as_slice())
            .unwrap();
        flows
            .insert(
                meta_key(&fkey).as_slice(),
                encode("flow meta", &record.meta).unwrap().as_slice(),
            )
            .unwrap();
    }
    txn.commit().unwrap();

    let out = store
        .ingest(
            &[event("old", "5"), event("first", "1"), event("last", "9")],
            &policy,
            0,
            None,
        )
        .unwrap();
    assert_eq!((out.stored, out.duplicates), (2, 1));
    assert_eq!(
        events_of(&store, "f", 1),
        [r#"{"id":"first"}"#, r#"{"id":"old"}"#, r#"{"id":"last"}"#]
    );
    let erased = store.erase_live("t", "f").unwrap();
    assert_eq!(erased.events, 3);
}

/// A store written before the journal holds event bytes inline in `flows`; they
/// are read, archived and deleted like journal events.
#[test]
fn inline_events_of_an_older_store_are_read_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), Config::default().state.journal_file_bytes);
    let policy = default_policy();
    let event = FlowEvent {
        status: FlowStatus::Completed,
        event_type: "flow.completed".into(),
        ..test_event("f", "1", r#"{"new":1}"#.to_string())
    };
    store.ingest(&[event], &policy, 0, None).unwrap();
    // The layout of an older store: an event before the new one, bytes inline.
    let fkey = flow_key("t", "f");
    let mut key = part_prefix(&fkey, 1);
    key.extend_from_slice(&order_key(
        Some(&crate::flow::Sequence::Number("0".into())),
        0,
    ));
    let txn = store.write().unwrap();
    txn.open_table(FLOWS)
        .unwrap()
        .insert(key.as_slice(), br#"{"old":0}"#.as_slice())
        .unwrap();
    txn.commit().unwrap();

    assert_eq!(events_of(&store, "f", 1), [r#"{"old":0}"#, r#"{"new":1}"#]);

    archive_now(&store, "i", &["f"]);
    assert_eq!(events_of(&store, "f", 1).len(), 0);
}

/// Seal compares the stored meta's bytes with the given meta's: any field that
/// differs, however small, leaves the flow unsealed; the same meta seals it.
#[test]
fn seal_takes_a_flow_only_with_the_meta_it_was_given() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), Config::default().state.journal_file_bytes);
    let event = FlowEvent {
        labels: [("team", "a"), ("zone", "ü✓")].into_iter().collect(),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        ..test_event("f", "1", "{}".to_string())
    };
    store.ingest(&[event], &default_policy(), 0, None).unwrap();
    let meta = store.live_flow("t", "f").unwrap().expect("live");
    let intent = |meta: FlowMeta| ArchiveIntent {
        id: "i".into(),
        tenant: "t".into(),
        object_key: "k".into(),
        archived_at_ms: 0,
        compression: crate::config::Compression::Zstd,
        zstd_level: 3,
        parts: vec![SealedPart {
            meta,
            archive_status: FlowStatus::Abandoned,
            purge_at_ms: 0,
        }],
        stage: IntentStage::Pending,
    };
    let changes: [fn(&mut FlowMeta); 5] = [
        |m| m.labels.merge(&[("team", "b")].into_iter().collect()),
        |m| m.labels.merge(&[("a", "")].into_iter().collect()),
        |m| m.traceparent = None,
        |m| m.event_count += 1,
        |m| m.deadline_ms = Some(m.deadline_ms.unwrap_or(0) + 1),
    ];
    for change in changes {
        let mut other = meta.clone();
        change(&mut other);
        assert!(store.seal(intent(other)).unwrap().is_none());
    }
    assert!(store.live_flow("t", "f").unwrap().is_some(), "still live");
    let sealed = store.seal(intent(meta.clone())).unwrap().expect("sealed");
    assert_eq!(sealed.parts[0].meta, meta);
    assert!(store.live_flow("t", "f").unwrap().is_none());
}

/// A reader whose snapshot predates an erasure finds the bytes zeroed: that is
/// reported as an erasure, not corruption, and a fresh snapshot no longer has the
/// flow.
#[test]
fn a_snapshot_older_than_an_erasure_reads_erased_not_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), Config::default().state.journal_file_bytes);
    let events = [
        test_event("f", "1", r#"{"id":"1"}"#.to_string()),
        test_event("f", "2", r#"{"id":"2"}"#.to_string()),
    ];
    store.ingest(&events, &default_policy(), 0, None).unwrap();
    let before = store.event_reader().unwrap();
    store.erase_live("t", "f").unwrap();

    let meta = before.live_flow("t", "f").unwrap();
    assert_eq!(meta.map(|m| m.event_count), Some(2), "the snapshot's meta");
    let err = before
        .for_each_event("t", "f", 1, &mut |_| Ok(()))
        .unwrap_err();
    assert!(matches!(err, StateError::Erased { .. }), "{err}");
    assert!(err.to_string().contains("reads as zeros"), "{err}");

    let fresh = store.event_reader().unwrap();
    assert_eq!(fresh.live_flow("t", "f").unwrap(), None);
    assert_eq!(events_of(&store, "f", 1).len(), 0);
}

/// Compaction scans for pointer holders in a snapshot and moves them in later
/// transactions. A holder that appears in between (here: sealing moves a flow's
/// inline pointers from its meta record to a run entry) leaves its file unfreed
/// rather than dangling; the next pass frees it.
#[test]
fn a_holder_created_after_the_compaction_scan_keeps_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), 4096);
    let policy = default_policy();
    let mut done = Vec::new();
    // Three files, each with one event of the pinning flow and 150 of flows that
    // are then archived.
    for b in 0..3 {
        let mut batch = vec![test_event(
            "pin",
            &format!("p{b}"),
            format!(r#"{{"pin":{b}}}"#),
        )];
        for i in 0..150 {
            let flow = format!("d-{b}-{i}");
            batch.push(test_event(&flow, "1", format!(r#"{{"done":"{flow}"}}"#)));
            done.push(flow);
        }
        store.ingest(&batch, &policy, 0, None).unwrap();
    }
    let done: Vec<&str> = done.iter().map(String::as_str).collect();
    archive_now(&store, "i1", &done);

    let picked = store.mostly_dead_files().unwrap();
    assert!(!picked.is_empty(), "files pinned by one live event each");
    let ids: HashSet<u32> = picked.iter().map(|(id, _)| *id).collect();
    let keys = store.pointer_holders(&ids).unwrap();
    // Sealed, then displaced by an event of its next part: the sealed run moves
    // to a key the scan did not see.
    seal_now(&store, "i2", &["pin"]);
    let late = test_event("pin", "late", r#"{"pin":"late"}"#.into());
    store.ingest(&[late], &policy, 0, None).unwrap();

    let (freed, files, left) = store.compact_group(&keys, &picked).unwrap();
    assert_eq!(freed.files, 0, "{freed:?}");
    assert!(files.is_empty(), "{files:?}");
    let mut left = left;
    left.sort();
    let mut expected: Vec<u32> = ids.iter().copied().collect();
    expected.sort();
    assert_eq!(left, expected);
    let pinned = [r#"{"pin":0}"#, r#"{"pin":1}"#, r#"{"pin":2}"#];
    assert_eq!(events_of(&store, "pin", 1), pinned);

    // A fresh pass finds the run entry and frees every picked file.
    let c = store.compact().unwrap();
    assert_eq!(c.files as usize, ids.len(), "{c:?}");
    assert_eq!(events_of(&store, "pin", 1), pinned);
    store.complete("i2").unwrap();
    assert_eq!(events_of(&store, "pin", 2), [r#"{"pin":"late"}"#]);
    assert_eq!(store.stats().unwrap().stored_events, 1);
}

/// A reopen (after a write that met a full disk) succeeds with a read transaction
/// still open on the old handle; that transaction's next read fails as a retryable
/// error, and what was committed is there after.
#[test]
fn reopening_the_database_keeps_what_was_committed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), Config::default().state.journal_file_bytes);
    let policy = default_policy();
    let event = |id: &str| test_event("f", id, format!(r#"{{"id":"{id}"}}"#));
    store.ingest(&[event("e1")], &policy, 0, None).unwrap();
    let reader = store.read().unwrap();
    store.reopen(0).unwrap();
    let stale = reader.open_table(FLOWS).map_err(storage).unwrap_err();
    assert!(stale.is_disk_full(), "{stale}");
    drop(reader);
    store.ingest(&[event("e2")], &policy, 0, None).unwrap();
    assert_eq!(events_of(&store, "f", 1).len(), 2);
}

/// The keys under part `part` of `t/{flow}`: (chunk sizes, individual entries).
fn part_entries(store: &EmbeddedStore, flow: &str, part: u32) -> (Vec<usize>, usize) {
    let start = part_prefix(&flow_key("t", flow), part);
    let end = prefix_end(&start).unwrap();
    let txn = store.read().unwrap();
    let flows = txn.open_table(FLOWS).unwrap();
    let (mut chunks, mut individual) = (Vec::new(), 0);
    for entry in flows
        .range::<&[u8]>(start.as_slice()..end.as_slice())
        .unwrap()
    {
        let (k, v) = entry.unwrap();
        match k.value()[start.len()] {
            CHUNK_TAG => chunks.push(Run::decode(v.value()).unwrap().events.len()),
            RUN_TAG => {}
            _ => individual += 1,
        }
    }
    (chunks, individual)
}

fn sequenced(flow: &str, seq: u64) -> FlowEvent {
    FlowEvent {
        sequence: Some(crate::flow::Sequence::Number(seq.to_string().into())),
        ..test_event(flow, &format!("e{seq}"), format!(r#"{{"seq":{seq}}}"#))
    }
}

fn in_sequence(seqs: impl IntoIterator<Item = u64>) -> Vec<String> {
    seqs.into_iter()
        .map(|q| format!(r#"{{"seq":{q}}}"#))
        .collect()
}

/// 200 events of one part, shuffled and redelivered over batches of every size: the
/// 168 past the inline ones fill chunks of at most `CHUNK_EVENTS`, with no entry of
/// their own, and read back in sequence order while open, sealed and displaced; the
/// part's deletion leaves no key behind.
#[test]
fn events_past_the_inline_run_go_to_chunks_and_read_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), Config::default().state.journal_file_bytes);
    let policy = default_policy();
    // A fixed shuffle: 7 is coprime with 200.
    let seqs: Vec<u64> = (0..200).map(|i| (i * 7 % 200) + 1).collect();
    let mut at = 0;
    for size in [1, 2, 31, 1, 64, 3, 65, 33].into_iter().cycle() {
        if at >= seqs.len() {
            break;
        }
        let end = (at + size).min(seqs.len());
        let mut batch: Vec<FlowEvent> = seqs[at..end].iter().map(|&q| sequenced("f", q)).collect();
        batch.push(sequenced("f", seqs[at / 2])); // a redelivery
        let out = store.ingest(&batch, &policy, 0, None).unwrap();
        assert_eq!((out.stored as usize, out.duplicates), (end - at, 1));
        at = end;
    }
    let (chunks, individual) = part_entries(&store, "f", 1);
    assert_eq!(individual, 0);
    assert_eq!(chunks, [64, 64, 40], "168 events past the 32 inline ones");
    assert_eq!(events_of(&store, "f", 1), in_sequence(1..=200), "open");

    seal_now(&store, "i1", &["f"]);
    assert_eq!(events_of(&store, "f", 1), in_sequence(1..=200), "sealed");
    // An event of the next part moves part 1's inline run to its run key.
    store
        .ingest(&[sequenced("f", 500)], &policy, 0, None)
        .unwrap();
    assert_eq!(events_of(&store, "f", 1), in_sequence(1..=200), "displaced");
    assert_eq!(events_of(&store, "f", 2), in_sequence([500]));
    store.complete("i1").unwrap();
    assert_eq!(part_entries(&store, "f", 1), (vec![], 0));
    assert!(events_of(&store, "f", 1).is_empty());
    assert_eq!(store.stats().unwrap().stored_events, 1);
    let erased = store.erase_live("t", "f").unwrap();
    assert_eq!(erased.events, 1);
}

/// A part that a store of the previous layout left with individual entries past its
/// inline run keeps them after the upgrade: new events go to chunks, and reads merge
/// the inline run, the chunks and the individual entries by order.
#[test]
fn individual_entries_of_the_previous_layout_merge_with_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), Config::default().state.journal_file_bytes);
    let policy = default_policy();
    // Even sequences first: 32 inline, 18 in chunk 0.
    let evens: Vec<FlowEvent> = (1..=50).map(|i| sequenced("f", i * 2)).collect();
    store.ingest(&evens, &policy, 0, None).unwrap();
    // Rewrite chunk 0 as the previous layout kept it: one entry per event.
    let fkey = flow_key("t", "f");
    let txn = store.write().unwrap();
    {
        let mut flows = txn.open_table(FLOWS).unwrap();
        let ckey = chunk_key(&fkey, 1, 0);
        let run = Run::decode(flows.remove(ckey.as_slice()).unwrap().unwrap().value()).unwrap();
        assert_eq!(run.events.len(), 18);
        for (order, pointer) in run.events {
            let mut key = part_prefix(&fkey, 1);
            key.extend_from_slice(&order);
            flows
                .insert(key.as_slice(), pointer.encode().as_slice())
                .unwrap();
        }
    }
    txn.commit().unwrap();
    assert_eq!(part_entries(&store, "f", 1), (vec![], 18));
    // Odd sequences after the upgrade interleave with all three.
    let odds: Vec<FlowEvent> = (0..50).map(|i| sequenced("f", i * 2 + 1)).collect();
    store.ingest(&odds, &policy, 0, None).unwrap();
    assert_eq!(part_entries(&store, "f", 1), (vec![46, 4], 18));
    assert_eq!(events_of(&store, "f", 1), in_sequence(1..=100));
    let erased = store.erase_live("t", "f").unwrap();
    assert_eq!(erased.events, 100);
    assert_eq!(store.stats().unwrap().stored_events, 0);
}

/// A store last opened by a later layout is refused, not misread.
#[test]
fn a_store_of_a_later_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), Config::default().state.journal_file_bytes);
    let txn = store.write().unwrap();
    txn.open_table(SETTINGS)
        .unwrap()
        .insert(LAYOUT, (LAYOUT_VERSION + 1).to_be_bytes().as_slice())
        .unwrap();
    txn.commit().unwrap();
    drop(store);
    let mut config = Config::default().state;
    config.path = dir.path().to_path_buf();
    let err = EmbeddedStore::open(&config).unwrap_err();
    assert!(
        matches!(err, StateError::SchemaTooNew { found: 3, known: 2 }),
        "{err}"
    );
}
