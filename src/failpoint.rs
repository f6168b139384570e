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
//! `NAME:N:pause` stops the process (SIGSTOP) there instead, after logging
//! `paused NAME:N`: a test can then take a server down under a process that is
//! known to be at that step, and let it run on (SIGCONT) into the outage.
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

/// The armed failpoint: its step, the hit it fires at, and whether it pauses.
struct Setting {
    name: String,
    at: u64,
    pause: bool,
}

fn setting() -> &'static Option<Setting> {
    static SETTING: OnceLock<Option<Setting>> = OnceLock::new();
    SETTING.get_or_init(|| {
        let v = std::env::var(ENV).ok()?;
        let mut fields = v.splitn(3, ':');
        let name = fields.next()?.to_string();
        let at = fields.next().and_then(|n| n.parse().ok()).unwrap_or(1);
        let pause = fields.next() == Some("pause");
        Some(Setting { name, at, pause })
    })
}

/// Whether the named failpoint is set (whatever its count).
pub fn armed(name: &str) -> bool {
    matches!(setting(), Some(s) if s.name == name)
}

/// Kills (or pauses) the process if the named failpoint is set and this is its N-th hit.
pub fn hit(name: &str) {
    static HITS: AtomicU64 = AtomicU64::new(0);
    note(name, false);
    let Some(s) = setting() else { return };
    if s.name != name || HITS.fetch_add(1, Ordering::SeqCst) + 1 != s.at {
        return;
    }
    let (verb, signal) = if s.pause {
        ("paused", libc::SIGSTOP)
    } else {
        ("killed", libc::SIGKILL)
    };
    note(&format!("{verb} {name}:{}", s.at), true);
    eprintln!("failpoint {name}: {verb} the process");
    // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
    unsafe {
        libc::kill(libc::getpid(), signal);
    }
}
