//! The state commands on PostgreSQL (`state migrate`, `state status`), the database
//! URL from `DATABASE_URL`, and TLS to the database: `verify-full` with the server's
//! CA works, without it fails at once with an error that says why.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

const POSTGRES: &str = "[state]\nbackend = \"postgres\"\n";

/// `url` with a password in it (trust auth ignores it): the one thing never printed.
fn with_password(url: &str) -> String {
    url.replacen(
        "postgres://archiver@",
        "postgres://archiver:pw-never-shown@",
        1,
    )
}

#[test]
fn state_migrate_and_status_work_from_database_url() {
    let pg = shared_pg();
    // Retention long enough that the ingested flow stays live to be counted.
    let mut env = Env::new(&format!("{POSTGRES}[retention]\ncompleted = \"3650d\"\n"));
    let url = with_password(&pg.create_database("state_cli_migrate"));
    env.vars.push(("DATABASE_URL".into(), url));

    let before = env.ok(&["state", "status"]);
    assert!(before.contains("schema version    0"), "{before}");
    assert!(!before.contains("pw-never-shown"), "{before}");
    assert!(before.contains("archiver:***@"), "{before}");

    let first = env.ok(&["state", "migrate"]);
    assert!(first.contains("applied migration(s) [1, 2]"), "{first}");
    let again = env.ok(&["state", "migrate"]);
    assert!(again.contains("nothing to apply"), "{again}");

    // Events ingested through the shared store show in the counts.
    let lines: Vec<String> = (1..=3)
        .map(|seq| {
            let kind = if seq == 3 { "completed" } else { "step" };
            ce(
                "acme",
                "cli-1",
                &format!("e-{seq}"),
                seq,
                kind,
                "2026-01-01T00:00:00Z",
            )
        })
        .collect();
    env.write("events.jsonl", (lines.join("\n") + "\n").as_bytes());
    let (status, stderr) = env
        .spawn(&["run", "--source", "file:events.jsonl", "--until-idle", "1s"])
        .wait(Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
    let json: Value = serde_json::from_str(&env.ok(&["state", "status", "--json"])).unwrap();
    assert_eq!(json["version"], 2, "{json}");
    assert_eq!(json["known"], 2, "{json}");
    assert_eq!(json["stats"]["live_flows"], 1, "{json}");
    assert_eq!(json["stats"]["stored_events"], 3, "{json}");
    assert!(!json.to_string().contains("pw-never-shown"), "{json}");
}

#[test]
fn a_database_url_that_is_not_postgres_is_refused_naming_the_key() {
    let mut env = Env::new(POSTGRES);
    let out = env.run(&["state", "status"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("state.url") && stderr.contains("DATABASE_URL"),
        "{stderr}"
    );
    env.vars
        .push(("DATABASE_URL".into(), "mysql://root@db/flows".into()));
    let out = env.run(&["run"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("state.url") && stderr.contains("postgres://"),
        "{stderr}"
    );
}

#[test]
fn tls_to_the_database_verifies_the_server_certificate() {
    let pg = PgServer::start_with_tls();
    let ca = pg.tls_ca.clone().expect("the server's CA");
    let base = pg.url("postgres").replace("?sslmode=disable", "");
    let run = |url: String, ca_file: Option<&std::path::Path>| {
        let config = match ca_file {
            Some(ca) => format!("{POSTGRES}tls_ca_file = {:?}\n", ca.display().to_string()),
            None => POSTGRES.to_string(),
        };
        let mut env = Env::new(&config);
        env.vars.push(("DATABASE_URL".into(), url));
        let started = Instant::now();
        let out = env.run(&["state", "status"]);
        (out, started.elapsed())
    };

    // verify-full against 127.0.0.1 with the CA: the certificate and host match.
    let (out, _) = run(format!("{base}?sslmode=verify-full"), Some(&ca));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The server takes TLS only, so a plain connection is refused (and not retried).
    let (out, took) = run(format!("{base}?sslmode=disable"), None);
    assert!(!out.status.success(), "the server accepts TLS only");
    assert!(took < Duration::from_secs(20), "{took:?}");

    // require: encrypted, the certificate is not checked (libpq's meaning).
    let (out, _) = run(format!("{base}?sslmode=require"), None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // verify-full with only the system's roots: refused at once, saying why.
    let (out, took) = run(format!("{base}?sslmode=verify-full"), None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.to_lowercase().contains("certificate"),
        "the error names the certificate: {stderr}"
    );
    assert!(
        took < Duration::from_secs(20),
        "a certificate error is not retried as an outage ({took:?})"
    );

    // verify-full by a name the certificate does not carry; verify-ca accepts it.
    let by_name = base.replace("127.0.0.1", "localhost");
    let (out, took) = run(format!("{by_name}?sslmode=verify-full"), Some(&ca));
    assert!(
        !out.status.success(),
        "the certificate names 127.0.0.1 only"
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
    let (out, _) = run(format!("{by_name}?sslmode=verify-ca"), Some(&ca));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
