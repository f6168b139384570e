//! Retention and idle timers through the `Clock` seam, on the real embedded store:
//! nothing is archived one second early, everything once due; a new event resets the
//! idle timer; an event after archival opens part 2; overrides and `abandoned` apply;
//! a sweep gives back the journal files it emptied.

use std::sync::Arc;
use std::time::Duration;

use crate::support::ce;
use flow_archiver::config::{Config, Retention, RetentionOverride, Selector};
use flow_archiver::pipeline::Pipeline;
use flow_archiver::policy::ManualClock;
use flow_archiver::read;

const T0: &str = "2026-05-01T00:00:00Z";
const T0_MS: i64 = 1_777_593_600_000;
const MIN: i64 = 60_000;

fn config(dir: &std::path::Path) -> Config {
    let mut c = Config::rooted_at(dir);
    let r = &mut c.retention;
    r.completed = Retention::After(Duration::from_secs(600));
    r.failed = Retention::After(Duration::from_secs(1800));
    c
}

struct Harness {
    dir: tempfile::TempDir,
    clock: ManualClock,
    pipeline: Pipeline,
    inputs: u32,
}

impl Harness {
    async fn new(edit: impl FnOnce(&mut Config)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        edit(&mut cfg);
        let clock = ManualClock::new(T0_MS);
        let pipeline = Pipeline::open(cfg, Arc::new(clock.clone())).await.unwrap();
        Harness {
            dir,
            clock,
            pipeline,
            inputs: 0,
        }
    }

    async fn ingest(&mut self, lines: &[String]) {
        self.inputs += 1;
        let path = self.dir.path().join(format!("in-{}.jsonl", self.inputs));
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let totals = self
            .pipeline
            .ingest_input(path.to_str().unwrap(), &mut |_| {})
            .await
            .unwrap();
        assert_eq!(totals.dead_lettered, 0, "{totals:?}");
    }

    /// Sweeps at `T0 + offset_ms` and returns the archived (tenant/flow part N, status) pairs.
    async fn sweep_at(&self, offset_ms: i64) -> Vec<String> {
        let before = self.archived().len();
        let report = self
            .pipeline
            .sweep(T0_MS + offset_ms, &mut |_| {})
            .await
            .unwrap();
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        self.archived()[before..].to_vec()
    }

    fn archived(&self) -> Vec<String> {
        crate::support::read_jsonl(&self.dir.path().join("archived.jsonl"))
            .iter()
            .map(|r| {
                let d = &r["data"];
                format!(
                    "{}/{} part {} {}",
                    d["tenant"].as_str().unwrap(),
                    d["flow_id"].as_str().unwrap(),
                    d["part"],
                    d["status"].as_str().unwrap()
                )
            })
            .collect()
    }
}

fn at(offset_ms: i64) -> String {
    flow_archiver::time::rfc3339_ms(T0_MS + offset_ms)
}

#[tokio::test]
async fn nothing_is_archived_one_second_early_and_everything_once_due() {
    let mut h = Harness::new(|_| {}).await;
    h.clock.set(T0_MS + 5 * MIN);
    h.ingest(&[
        ce("t", "done", "a1", 1, "started", T0),
        ce("t", "done", "a2", 2, "completed", T0),
        ce("t", "broken", "b1", 1, "failed", T0),
        ce("t", "busy", "c1", 1, "started", T0),
    ])
    .await;
    assert_eq!(h.sweep_at(10 * MIN - 1000).await, Vec::<String>::new());
    assert_eq!(h.sweep_at(10 * MIN).await, vec!["t/done part 1 completed"]);
    assert_eq!(h.sweep_at(30 * MIN - 1000).await, Vec::<String>::new());
    assert_eq!(h.sweep_at(30 * MIN).await, vec!["t/broken part 1 failed"]);
    assert_eq!(
        h.sweep_at(1000 * MIN).await,
        Vec::<String>::new(),
        "running flows wait (abandoned is off)"
    );
    let _ = &h.dir;
}

#[tokio::test]
async fn a_new_event_resets_the_idle_timer() {
    let mut h = Harness::new(|_| {}).await;
    h.clock.set(T0_MS);
    h.ingest(&[ce("t", "f", "1", 1, "completed", T0)]).await;
    // A late step (out of order by sequence) arrives 8 minutes later.
    h.clock.set(T0_MS + 8 * MIN);
    h.ingest(&[ce("t", "f", "0", 0, "step", &at(8 * MIN))])
        .await;
    assert_eq!(
        h.sweep_at(10 * MIN).await,
        Vec::<String>::new(),
        "timer restarted at the later event"
    );
    assert_eq!(
        h.sweep_at(18 * MIN).await,
        vec!["t/f part 1 completed"],
        "status comes from the highest sequence, not the last arrival"
    );
}

#[tokio::test]
async fn an_event_after_archival_opens_part_two() {
    let mut h = Harness::new(|_| {}).await;
    h.ingest(&[ce("t", "f", "1", 1, "completed", T0)]).await;
    assert_eq!(h.sweep_at(10 * MIN).await, vec!["t/f part 1 completed"]);
    // A late event (and a redelivered duplicate of an archived one).
    h.clock.set(T0_MS + 20 * MIN);
    h.ingest(&[
        ce("t", "f", "2", 2, "completed", &at(20 * MIN)),
        ce("t", "f", "1", 1, "completed", T0),
    ])
    .await;
    assert_eq!(h.sweep_at(29 * MIN).await, Vec::<String>::new());
    assert_eq!(h.sweep_at(30 * MIN).await, vec!["t/f part 2 completed"]);
    assert_eq!(h.archived().len(), 2, "part 1 is never rewritten");
}

#[tokio::test]
async fn overrides_match_first_and_abandoned_archives_idle_running_flows() {
    let mut h = Harness::new(|c| {
        c.retention.abandoned = Retention::After(Duration::from_secs(3600));
        c.retention.overrides = vec![
            RetentionOverride {
                selector: Selector {
                    labels: [("team".to_string(), "t1".to_string())].into(),
                    ..Default::default()
                },
                retention: Some(Retention::After(Duration::ZERO)),
                archive_for: Some(Duration::from_secs(5 * 365 * 86_400)),
                storage_class: None,
            },
            RetentionOverride {
                selector: Selector {
                    tenant: Some("slow".into()),
                    ..Default::default()
                },
                retention: Some(Retention::Off),
                archive_for: None,
                storage_class: None,
            },
        ];
    })
    .await;
    h.ingest(&[
        // ce() labels events with team t{seq % 3}: sequence 1 → team t1 (override 1).
        ce("t", "secure", "s1", 1, "completed", T0),
        ce("slow", "kept", "k2", 2, "completed", T0),
        ce("t", "idle", "i2", 2, "started", T0),
    ])
    .await;
    assert_eq!(
        h.sweep_at(0).await,
        vec!["t/secure part 1 completed"],
        "retention 0s archives at once"
    );
    assert_eq!(h.sweep_at(60 * MIN - 1000).await, Vec::<String>::new());
    assert_eq!(h.sweep_at(60 * MIN).await, vec!["t/idle part 1 abandoned"]);
    assert_eq!(
        h.sweep_at(10_000 * MIN).await,
        Vec::<String>::new(),
        "retention off for tenant slow"
    );
    // archive_for of the first override sets purge_at five years out.
    let rec = &crate::support::read_jsonl(&h.dir.path().join("archived.jsonl"))[0]["data"];
    let purge_in_days =
        (rec["purge_at"].as_i64().unwrap() - rec["archived_at"].as_i64().unwrap()) / 86_400_000_000;
    assert_eq!(purge_in_days, 5 * 365);
}

#[tokio::test]
async fn a_changed_policy_recomputes_deadlines_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    {
        let p = Pipeline::open(config(dir.path()), Arc::new(clock.clone()))
            .await
            .unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, ce("t", "f", "1", 1, "completed", T0) + "\n").unwrap();
        p.ingest_input(path.to_str().unwrap(), &mut |_| {})
            .await
            .unwrap();
    }
    let mut cfg = config(dir.path());
    cfg.retention.completed = Retention::After(Duration::from_secs(60));
    let p = Pipeline::open(cfg, Arc::new(clock)).await.unwrap();
    let report = p.sweep(T0_MS + MIN, &mut |_| {}).await.unwrap();
    assert_eq!(report.flow_parts, 1, "due under the new 60s retention");
}

/// A running flow with an event in every journal file pins them all; once a sweep has
/// archived the finished flows around it, the sweep's compaction moves its few events
/// and gives the files back, while segments are still being archived beside it.
#[tokio::test]
async fn a_sweep_gives_back_the_journal_files_it_emptied() {
    let mut h = Harness::new(|c| {
        c.state.journal_file_bytes = 4096;
        // Many small segments, so that some are in flight when compaction starts.
        c.archive.segment_max_flows = 3;
    })
    .await;
    for batch in 0..12u64 {
        // ~5 KB per batch: each one starts a new journal file.
        let mut lines: Vec<String> = (0..8)
            .flat_map(|f| {
                let flow = format!("done-{batch}-{f}");
                [
                    ce("t", &flow, &format!("{flow}-1"), 1, "started", T0),
                    ce("t", &flow, &format!("{flow}-2"), 2, "step", T0),
                    ce("t", &flow, &format!("{flow}-3"), 3, "completed", T0),
                ]
            })
            .collect();
        lines.push(ce(
            "t",
            "pin",
            &format!("pin-{batch}"),
            batch + 1,
            "step",
            T0,
        ));
        h.ingest(&lines).await;
    }
    let journal = h.dir.path().join("state/journal");
    let files = || std::fs::read_dir(&journal).unwrap().count();
    assert!(files() >= 12, "one file per batch: {}", files());

    let archived = h.sweep_at(10 * MIN).await;
    assert_eq!(archived.len(), 96, "every finished flow once: {archived:?}");
    assert!(
        files() <= 2,
        "only the active file (and the one the moved events started) is left: {}",
        files()
    );
    let pin = read::live_flow(h.pipeline.store(), "t", "pin")
        .await
        .unwrap()
        .expect("the running flow is live");
    let ids: Vec<&str> = pin["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..12).map(|b| format!("pin-{b}")).collect();
    assert_eq!(
        ids, expected,
        "the moved events read back whole and in order"
    );
}
