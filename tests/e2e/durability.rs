//! Power-loss safety of the files that hold history. A power cut cannot be provoked on
//! this machine (SIGKILL keeps the page cache, see `crash.rs`), so these tests read the
//! real binary's durability system calls with `strace` and check their order: an
//! archive object and its directory entry are on disk before its `flow.archived` is
//! published (and so before the live state goes), and a new state file's and journal
//! file's directory entries are on disk before any event is written into them.

use std::path::Path;
use std::process::Command;

use crate::support::*;

const NOW: &str = "2026-06-01T00:00:00Z";

/// Runs `flow-archiver ARGS` under strace; returns the traced calls, one per line.
fn traced(env: &Env, args: &[&str]) -> Vec<String> {
    let inner = env.command(args);
    let log = env.path().join(format!("strace-{}.txt", args[0]));
    let mut cmd = Command::new(find_tool("strace"));
    cmd.args(["-f", "-qq", "-y", "-o"])
        .arg(&log)
        .args(["-e", "trace=fsync,fdatasync,rename,renameat,renameat2"])
        .arg(inner.get_program())
        .args(inner.get_args())
        .current_dir(env.path());
    for (key, value) in inner.get_envs() {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    let out = cmd.output().expect("run strace");
    assert!(out.status.success(), "{}", describe(args, env.path(), &out));
    std::fs::read_to_string(&log)
        .expect("strace log")
        .lines()
        .map(str::to_string)
        .collect()
}

/// Index of the first call at or after `from` that is `syscall` on a descriptor whose
/// path (as `strace -y` prints it) satisfies `path`.
fn find(calls: &[String], from: usize, syscall: &str, path: impl Fn(&str) -> bool) -> usize {
    calls
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, line)| {
            line.split_once(' ')
                .map(|(_, call)| call.trim_start())
                .and_then(|call| call.strip_prefix(&format!("{syscall}(")))
                .and_then(|rest| rest.split_once('<'))
                .and_then(|(_, rest)| rest.split_once('>'))
                .is_some_and(|(p, _)| path(p))
        })
        .map(|(i, _)| i)
        .unwrap_or_else(|| {
            panic!(
                "no {syscall} on the expected path after call {from}:\n{}",
                calls.join("\n")
            )
        })
}

fn env_with_terminal_flows() -> Env {
    let env = Env::new("[archive]\nsegment_max_flows = 4\n");
    let mut lines = Vec::new();
    for f in 0..3 {
        let flow = format!("flow-{f}");
        lines.push(ce(
            "t0",
            &flow,
            &format!("{flow}-1"),
            1,
            "step",
            "2026-01-01T00:00:00Z",
        ));
        lines.push(ce(
            "t0",
            &flow,
            &format!("{flow}-2"),
            2,
            "completed",
            "2026-01-01T00:00:01Z",
        ));
    }
    env.write("events.jsonl", (lines.join("\n") + "\n").as_bytes());
    env
}

#[test]
fn new_state_and_journal_files_are_named_durably_before_events_are_written() {
    let env = env_with_terminal_flows();
    let calls = traced(&env, &["ingest", "events.jsonl"]);
    let journal_dir = std::fs::canonicalize(env.path().join("data/state/journal")).unwrap();
    let journal_dir = journal_dir.to_str().unwrap();
    let dir_synced = find(&calls, 0, "fsync", |p| p == journal_dir);
    let first_batch = find(&calls, 0, "fdatasync", |p| {
        p.starts_with(journal_dir) && p.ends_with(".log")
    });
    assert!(
        dir_synced < first_batch,
        "journal directory fsync (call {dir_synced}) before the first batch (call {first_batch})"
    );
    // The directory naming the new state file and the journal directory.
    let state_dir = std::fs::canonicalize(env.path().join("data/state")).unwrap();
    let state_dir = state_dir.to_str().unwrap();
    let state_named = find(&calls, 0, "fsync", |p| p == state_dir);
    assert!(
        state_named < first_batch,
        "state directory fsync (call {state_named}) before the first batch (call {first_batch})"
    );
}

#[test]
fn an_archive_object_and_its_name_are_durable_before_flow_archived_is_published() {
    let env = env_with_terminal_flows();
    env.ok(&["ingest", "events.jsonl"]);
    let calls = traced(&env, &["sweep", "--now", NOW]);

    let records = env.archived();
    assert_eq!(records.len(), 3, "every terminal flow archived");
    let uri = records[0]["data"]["object_uri"].as_str().unwrap();
    let object = uri.strip_prefix("file://").expect("a directory store");
    let object_dir = Path::new(object).parent().unwrap().to_str().unwrap();
    let published = std::fs::canonicalize(env.path().join("data/events/archived.jsonl")).unwrap();
    let published = published.to_str().unwrap();

    // The object store writes a staging file, fsyncs it, renames it into place and
    // fsyncs the directory.
    let contents = find(&calls, 0, "fsync", |p| p.starts_with(object));
    let renamed = calls
        .iter()
        .enumerate()
        .skip(contents)
        .find(|(_, l)| l.contains("rename") && l.contains(&format!(", \"{object}\"")))
        .map(|(i, _)| i)
        .unwrap_or_else(|| panic!("no rename onto {object}:\n{}", calls.join("\n")));
    let name = find(&calls, renamed, "fsync", |p| p == object_dir);
    let publish = find(&calls, 0, "fdatasync", |p| p == published);
    assert!(
        contents < renamed && renamed < name && name < publish,
        "object fsync {contents}, rename {renamed}, directory fsync {name}, publish {publish}:\n{}",
        calls.join("\n")
    );
}
