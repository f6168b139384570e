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
//! On the ground floor (it imports nothing from the crate) so that any stage may
//! mark its steps without importing the pipeline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

pub const ENV: &str = "FLOW_ARCHIVER_FAILPOINT";

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
    if let Some((n, at)) = setting() {
        if n == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *at {
            eprintln!("failpoint {name}: killing the process");
            // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}
