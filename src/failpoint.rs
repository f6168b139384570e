//! Crash hooks for tests: `FLOW_ARCHIVER_FAILPOINT=NAME` (or `NAME:N` for the N-th
//! time the step is reached) makes the process SIGKILL itself at that step of the
//! commit protocol, exactly as an external `kill -9` landing there would.
//!
//! Steps: `before-ack` (a batch is durable, not yet acknowledged upstream),
//! `after-ingest` (durable and acknowledged), `after-intent` (flows sealed),
//! `after-upload` (object written, not yet verified), `after-verify` (verified and
//! recorded), `mid-publish` (half of a segment's records written), `after-publish`
//! (records durable, state not yet deleted); purge: `after-purge-delete`; erasure:
//! `after-erase-intent`, `after-erase-upload`, `after-erase-relocate`,
//! `after-erase-delete`. The steps are those of the commit protocols in
//! `docs/design.md`.
//!
//! Compaction of the event journal: `mid-compaction` (moved events appended to the
//! active file, their new pointers not committed), `after-compaction` (committed, the
//! emptied files not yet deleted).
//!
//! With `FLOW_ARCHIVER_FAILPOINT_LOG=FILE`, every step reached appends its name to
//! FILE, and a firing failpoint appends `killed NAME:N` and syncs it before the kill:
//! tests learn how often each step is reached and prove where a kill landed.
//!
//! On the ground floor (it imports nothing from the crate) so that any stage may
//! mark its steps without importing the pipeline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

pub const ENV: &str = "FLOW_ARCHIVER_FAILPOINT";
pub const LOG_ENV: &str = "FLOW_ARCHIVER_FAILPOINT_LOG";

fn log() -> Option<&'static std::sync::Mutex<std::fs::File>> {
    static LOG: OnceLock<Option<std::sync::Mutex<std::fs::File>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let path = std::env::var_os(LOG_ENV)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok()?;
        Some(std::sync::Mutex::new(file))
    })
    .as_ref()
}

fn note(line: &str, sync: bool) {
    use std::io::Write;
    if let Some(file) = log() {
        let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(file, "{line}");
        if sync {
            let _ = file.sync_all();
        }
    }
}

fn setting() -> &'static Option<(String, u64)> {
    static SETTING: OnceLock<Option<(String, u64)>> = OnceLock::new();
    SETTING.get_or_init(|| {
        let v = std::env::var(ENV).ok()?;
        match v.split_once(':') {
            Some((name, n)) => Some((name.to_string(), n.parse().unwrap_or(1))),
            None => Some((v, 1)),
        }
    })
}

/// Whether the named failpoint is set (whatever its count).
pub fn armed(name: &str) -> bool {
    matches!(setting(), Some((n, _)) if n == name)
}

/// Kills the process if the named failpoint is set and this is its N-th hit.
pub fn hit(name: &str) {
    static HITS: AtomicU64 = AtomicU64::new(0);
    note(name, false);
    if let Some((n, at)) = setting() {
        if n == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *at {
            note(&format!("killed {name}:{at}"), true);
            eprintln!("failpoint {name}: killing the process");
            // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}
