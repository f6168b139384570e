//! PostgreSQL from Debian's `postgresql` package, never the system service: a cluster
//! in a temporary directory owned by `postgres`, on a free loopback port, stopped on
//! drop. `initdb` runs once per test process; each server starts from a copy of that
//! template, so a server costs one `pg_ctl start`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::support::env::free_port;

/// The directory of `initdb` and `pg_ctl` (the highest installed version).
fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed; run `bash .ci/run` once (it installs it)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions
        .pop()
        .expect("no PostgreSQL version under /usr/lib/postgresql")
}

fn as_postgres(program: &Path) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(program);
    c
}

fn run(mut c: Command, what: &str) {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A temp dir the `postgres` user can enter, holding `data` owned by it.
fn owned_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    run(
        {
            let mut c = Command::new("chmod");
            c.arg("755").arg(dir.path());
            c
        },
        "chmod",
    );
    dir
}

/// The cluster every server copies (user `archiver`, trust auth), made by `initdb`
/// once and kept under the target directory for later runs.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let bin = bin_dir();
        let version = bin
            .parent()
            .and_then(|v| v.file_name())
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default();
        let kept = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("pg-template-{version}"));
        if kept.join("data/PG_VERSION").exists() {
            return kept;
        }
        let dir = owned_dir();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("template dir");
        let mut chown = Command::new("chown");
        chown.arg("postgres:postgres").arg(&data);
        run(chown, "chown");
        let mut c = as_postgres(&bin.join("initdb"));
        c.arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "archiver", "--no-sync", "-E", "UTF8"]);
        run(c, "initdb");
        // Another test process may be doing the same: copy aside, then rename.
        let aside = kept.with_extension(std::process::id().to_string());
        std::fs::create_dir_all(&aside).expect("template dir");
        let mut cp = Command::new("cp");
        cp.arg("-a").arg(&data).arg(aside.join("data"));
        run(cp, "keep the template cluster");
        if std::fs::rename(&aside, &kept).is_err() {
            let _ = std::fs::remove_dir_all(&aside);
        }
        kept
    })
}

/// A running PostgreSQL; `restart` keeps its port and data.
pub struct PgServer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    running: bool,
    /// With TLS on: the CA that signed the server's certificate (for 127.0.0.1).
    pub tls_ca: Option<PathBuf>,
}

impl PgServer {
    pub fn start() -> PgServer {
        Self::start_with(false)
    }

    /// A server that accepts TLS connections only, with a certificate for
    /// `127.0.0.1` (and no other name) signed by a CA of its own ([`PgServer::tls_ca`]).
    pub fn start_with_tls() -> PgServer {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> PgServer {
        let dir = owned_dir();
        let data = dir.path().join("data");
        run(
            {
                let mut c = Command::new("cp");
                c.arg("-a").arg(template().join("data")).arg(&data);
                c
            },
            "copy the template cluster",
        );
        let mut server = PgServer {
            dir,
            port: free_port(),
            running: false,
            tls_ca: None,
        };
        if tls {
            server.tls_ca = Some(server.make_certificates());
        }
        server.launch();
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Writes `ca.pem` beside the cluster and `server.{crt,key}` into it (owned by
    /// `postgres`, key mode 0600 as the server demands), and makes TCP connections
    /// `hostssl` only; returns the CA's path.
    fn make_certificates(&self) -> PathBuf {
        let dir = self.dir.path();
        crate::support::test_certificates(dir);
        for file in ["server.crt", "server.key"] {
            let target = self.data().join(file);
            std::fs::copy(dir.join(file), &target).expect("certificate into the cluster");
            let mut chown = Command::new("chown");
            chown.arg("postgres:postgres").arg(&target);
            run(chown, "chown");
        }
        let mut chmod = Command::new("chmod");
        chmod.arg("600").arg(self.data().join("server.key"));
        run(chmod, "chmod");
        // TCP clients must use TLS.
        let hba = self.data().join("pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).expect("pg_hba.conf");
        let rules: String = rules
            .lines()
            .map(|l| match l.strip_prefix("host ") {
                Some(rest) => format!("hostssl {rest}\n"),
                None => format!("{l}\n"),
            })
            .collect();
        std::fs::write(&hba, rules).expect("pg_hba.conf");
        dir.join("ca.pem")
    }

    fn launch(&mut self) {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200",
            self.port,
            self.data().display()
        );
        if self.tls_ca.is_some() {
            options.push_str(" -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key");
        }
        let mut c = as_postgres(&bin_dir().join("pg_ctl"));
        c.arg("-D")
            .arg(self.data())
            .args(["-o", &options, "-l"])
            .arg(self.data().join("server.log"))
            .args(["-w", "-t", "60", "start"]);
        run(c, "pg_ctl start");
        self.running = true;
    }

    /// Stops the server (fast shutdown: clients are disconnected).
    pub fn stop(&mut self) {
        if self.running {
            let mut c = as_postgres(&bin_dir().join("pg_ctl"));
            c.arg("-D")
                .arg(self.data())
                .args(["-m", "fast", "-w", "stop"]);
            run(c, "pg_ctl stop");
            self.running = false;
        }
    }

    pub fn restart(&mut self, down_for: std::time::Duration) {
        self.stop();
        std::thread::sleep(down_for);
        self.launch();
    }

    /// The URL of database `db` (created by [`PgServer::create_database`]).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://archiver@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// Creates database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        self.url(name)
    }

    /// Runs SQL through `psql` (an independent client) and returns its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql)
            .unwrap_or_else(|e| panic!("psql {sql}: {e}"))
    }

    /// [`PgServer::psql`], or why it failed (the server is restarting, say).
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let port = self.port.to_string();
        let out = Command::new(bin_dir().join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args(["-p", &port, "-U", "archiver", "-d", db, "-c", sql])
            .output()
            .map_err(|e| e.to_string())?;
        match out.status.success() {
            true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
            false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.running {
            let mut c = as_postgres(&bin_dir().join("pg_ctl"));
            c.arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "stop"]);
            let _ = c.output();
        }
    }
}

/// One server for the whole test process, for suites that only need a database each
/// (the conformance suite). Stopped when the process exits.
pub fn shared_pg() -> &'static PgServer {
    static SHARED: OnceLock<PgServer> = OnceLock::new();
    extern "C" fn stop_shared() {
        if let Some(server) = SHARED.get() {
            let mut c = as_postgres(&bin_dir().join("pg_ctl"));
            c.arg("-D")
                .arg(server.data())
                .args(["-m", "immediate", "-w", "stop"]);
            let _ = c.output();
            let _ = std::fs::remove_dir_all(server.dir.path());
        }
    }
    SHARED.get_or_init(|| {
        let server = PgServer::start();
        // SAFETY: registers a plain function to run at process exit.
        unsafe {
            libc::atexit(stop_shared);
        }
        server
    })
}

/// A database on the shared server named after `key` (the same key, the same
/// database: a store "reopened" from the same directory finds its data).
pub fn database_for(key: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    let name = format!("t{:016x}", h.finish());
    let server = shared_pg();
    let exists = server.psql(
        "postgres",
        &format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"),
    );
    if exists.is_empty() {
        server.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
    }
    server.url(&name)
}
