//! What the benchmarks measure besides wall time: peak memory, CPU time (this process's
//! and the whole machine's, so a broker on the same cores is accounted for) and
//! percentiles.

fn own_usage() -> Option<libc::rusage> {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    (unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0).then_some(usage)
}

/// Peak resident set size of this process, in bytes.
pub fn peak_rss_bytes() -> u64 {
    own_usage().map_or(0, |u| u.ru_maxrss as u64 * 1024)
}

/// CPU time (user + system) this process has used so far, over all its threads, in
/// seconds: steadier than wall-clock rates on a shared machine.
pub fn cpu_seconds() -> f64 {
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    own_usage().map_or(0.0, |u| secs(u.ru_utime) + secs(u.ru_stime))
}

/// CPU time all processes on this machine have spent busy so far (user, nice, system,
/// interrupts, steal; from `/proc/stat`), in seconds; `None` where there is no
/// `/proc/stat`. Less [`cpu_seconds`] over the same interval, it is what other
/// processes used — a broker on the same machine, in the benchmarks.
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let busy = busy_ticks(stat.lines().next()?)?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| busy as f64 / hz as f64)
}

/// Busy ticks of the `cpu` summary line of `/proc/stat`: every field but idle and
/// iowait (fields 4 and 5), and not guest time, which user time already counts.
fn busy_ticks(line: &str) -> Option<u64> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let ticks: Vec<u64> = fields.map(|f| f.parse().ok()).collect::<Option<_>>()?;
    let field = |i: usize| ticks.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal guest guest_nice
    Some(field(0) + field(1) + field(2) + field(5) + field(6) + field(7))
}

/// The p-th percentile (0–100) of `values` (sorted in place).
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    values[rank.min(values.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_ticks_leave_out_idle_iowait_and_guest_time() {
        let line = "cpu  100 2 30 5000 40 6 7 8 90 1";
        assert_eq!(busy_ticks(line), Some(100 + 2 + 30 + 6 + 7 + 8));
        // Older kernels have fewer fields.
        assert_eq!(busy_ticks("cpu 1 2 3 4"), Some(6));
        assert_eq!(busy_ticks("cpu0 1 2 3 4"), None);
        assert_eq!(busy_ticks("cpu 1 x 3 4"), None);
    }

    #[test]
    fn machine_busy_time_moves_forward() {
        let Some(before) = machine_busy_seconds() else {
            return; // no /proc/stat here
        };
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(50) {
            std::hint::black_box(0u64);
        }
        let after = machine_busy_seconds().unwrap_or(0.0);
        assert!(after >= before, "{before} -> {after}");
    }
}
