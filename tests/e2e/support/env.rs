//! The real binary in a temporary working directory: [`Env`] runs commands there and
//! reads what they wrote; [`Running`] is a background process, killed on drop so that
//! no test leaves one behind. Failure messages carry the command, its directory and
//! its output.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_flow-archiver");

/// A working directory with a config file; every command runs inside it.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub vars: Vec<(String, String)>,
}

impl Env {
    pub fn new(config: &str) -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("flow-archiver.toml"), config).expect("write config");
        Env {
            dir,
            vars: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args).current_dir(self.path());
        // Hermetic: nothing from the developer's environment changes the config.
        for (k, _) in std::env::vars() {
            if k.starts_with("FLOW_ARCHIVER")
                || k.starts_with("ARCHIVE_")
                || k.starts_with("AWS_")
                || k.starts_with("OTEL_")
                || k == "FLOW_RETENTION_DAYS"
                || k == "DATABASE_URL"
            {
                cmd.env_remove(k);
            }
        }
        cmd.env("RUST_LOG", "warn");
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run flow-archiver")
    }

    /// Runs and asserts success, returning stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{}",
            describe(args, self.path(), &out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn write(&self, name: &str, content: &[u8]) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, content).expect("write input");
        p
    }

    /// The published `flow.archived` records.
    pub fn archived(&self) -> Vec<Value> {
        read_jsonl(&self.path().join("data/events/archived.jsonl"))
    }

    pub fn dead_letters(&self) -> Vec<Value> {
        read_jsonl(&self.path().join("data/dead-letter.jsonl"))
    }

    /// The published records of one kind (`archived`, `purged`, `hold`).
    pub fn records_of(&self, kind: &str) -> Vec<Value> {
        self.archived()
            .into_iter()
            .filter(|r| r["type"] == format!("io.flowarchiver.flow.{kind}"))
            .collect()
    }

    pub fn spawn(&self, args: &[&str]) -> Running {
        self.spawn_env(&[], args)
    }

    /// Like [`Env::spawn`], with extra environment variables.
    /// Runs `args` with `vars` and the failpoint `point` (`NAME:N`), and asserts that
    /// the process died by SIGKILL exactly there.
    pub fn run_killed_at(&self, vars: &[(String, String)], args: &[&str], point: &str) {
        let log = self
            .path()
            .join(format!("kill-{}.log", point.replace(':', "-")));
        let mut vars = vars.to_vec();
        vars.push(("FLOW_ARCHIVER_FAILPOINT".into(), point.into()));
        vars.push((
            "FLOW_ARCHIVER_FAILPOINT_LOG".into(),
            log.display().to_string(),
        ));
        let run = self.spawn_env(&vars, args);
        // Generous: a last hit waits for every segment's broker acks, and CI runs the
        // broker suites side by side on two cores.
        let Some((status, stderr)) = run.wait_up_to(Duration::from_secs(180)) else {
            let reached = steps_reached(&log);
            panic!(
                "flow-archiver {} never reached {point} in 180 s; steps reached: {reached:?}",
                args.join(" ")
            );
        };
        assert_killed_at(status, &log, point, &stderr);
    }

    pub fn spawn_env(&self, vars: &[(String, String)], args: &[&str]) -> Running {
        let stderr = self.path().join(format!("stderr-{}.log", free_port()));
        let file = std::fs::File::create(&stderr).expect("stderr file");
        let child = self
            .command(args)
            .envs(vars.iter().cloned())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn flow-archiver");
        Running {
            child: Some(child),
            stderr,
            args: args.join(" "),
        }
    }
}

pub fn describe(args: &[&str], dir: &Path, out: &Output) -> String {
    format!(
        "flow-archiver {} (in {}) exited with {:?}\n--- stdout\n{}\n--- stderr\n{}",
        args.join(" "),
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn read_jsonl(path: &Path) -> Vec<Value> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("bad JSON line in {}: {e}: {l}", path.display()))
        })
        .collect()
}

/// Every file below `dir`, recursively, sorted; none when `dir` does not exist.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let p = entry.expect("directory entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A background `flow-archiver` process; killed on drop so that no test leaves one
/// behind, whatever it asserted.
pub struct Running {
    child: Option<Child>,
    stderr: PathBuf,
    args: String,
}

impl Running {
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM, then waits (up to 60 s) for a clean exit; returns stderr.
    pub fn stop(mut self) -> String {
        let mut child = self.child.take().expect("running");
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let status = wait_timeout(&mut child, Duration::from_secs(60));
        let stderr = self.stderr();
        assert!(
            status.is_some_and(|s| s.success()),
            "flow-archiver {} did not stop cleanly ({status:?}):\n{stderr}",
            self.args
        );
        stderr
    }

    /// Waits until a `NAME:N:pause` failpoint stopped the process at `point`: its log
    /// says so, and the kernel shows the process stopped.
    pub fn wait_paused_at(&self, log: &Path, point: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let line = format!("paused {point}");
        eventually(Duration::from_secs(60), &line, || {
            let logged = std::fs::read_to_string(log).is_ok_and(|t| t.lines().any(|l| l == line));
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The state is the field after the parenthesised command name.
            let stopped = stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T'));
            (logged && stopped).then_some(())
        });
    }

    /// SIGCONT: a paused process runs on.
    pub fn resume(&self) {
        let pid = self.child.as_ref().expect("running").id();
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(pid as i32, libc::SIGCONT);
        }
    }

    /// Waits for the process to end by itself; `None` (and the process killed) if it
    /// did not within `limit`.
    pub fn wait_up_to(mut self, limit: Duration) -> Option<(std::process::ExitStatus, String)> {
        let mut child = self.child.take().expect("running");
        let status = wait_timeout(&mut child, limit)?;
        Some((status, self.stderr()))
    }

    /// Waits for the process to end by itself (a failpoint kill); returns its status.
    pub fn wait(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        let status = wait_timeout(&mut child, limit);
        let stderr = self.stderr();
        match status {
            Some(s) => (s, stderr),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "flow-archiver {} did not exit within {limit:?}:\n{stderr}",
                    self.args
                )
            }
        }
    }
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `check` every 200 ms until it returns `Some`, or panics with `what` after `limit`.
pub fn eventually<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Finds an installed tool on PATH or in ~/.cargo/bin.
pub fn find_tool(name: &str) -> PathBuf {
    let cargo_bin = std::env::var("HOME")
        .map(|h| PathBuf::from(h).join(".cargo/bin").join(name))
        .ok();
    if let Some(p) = cargo_bin.filter(|p| p.exists()) {
        return p;
    }
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.exists() {
                return p;
            }
        }
    }
    panic!("{name} is not installed; run `bash .ci/run` once (it installs the test servers)");
}

/// How often each step is named in a failpoint log (`FLOW_ARCHIVER_FAILPOINT_LOG`).
pub fn steps_reached(log: &Path) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        *counts.entry(line.to_string()).or_insert(0) += 1;
    }
    counts
}

/// The hits of `step` a kill matrix tries: its first, middle and last in `counts`
/// (from a clean run's [`steps_reached`]). `mid-publish` fires only when armed and is
/// reached once per segment published, so it is counted as `after-publish`.
pub fn first_middle_last(
    counts: &std::collections::BTreeMap<String, usize>,
    step: &str,
) -> Vec<usize> {
    let counted = match step {
        "mid-publish" => "after-publish",
        step => step,
    };
    let n = *counts
        .get(counted)
        .unwrap_or_else(|| panic!("{counted} is never reached: {counts:?}"));
    let mut hits = vec![1, n.div_ceil(2), n];
    hits.dedup();
    eprintln!("kill at {step}: hits {hits:?} of {n}");
    hits
}

/// Asserts that a process died by SIGKILL at failpoint `point` (`NAME:N`): the line
/// the failpoint writes to its log (`FLOW_ARCHIVER_FAILPOINT_LOG`) before the kill
/// proves where it landed, so an unrelated crash cannot pass for it.
pub fn assert_killed_at(status: std::process::ExitStatus, log: &Path, point: &str, output: &str) {
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "{point} must kill the process ({status:?}): {output}"
    );
    // Other tasks may log a step between that line and the signal's delivery.
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let kills: Vec<&str> = text.lines().filter(|l| l.starts_with("killed ")).collect();
    assert_eq!(
        kills,
        [format!("killed {point}")],
        "the kill landed at {point}"
    );
}
