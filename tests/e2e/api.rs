//! The index and the HTTP API end to end, with the archive on a real S3 server and an
//! independent HTTP client (Python's standard library):
//! - an archived flow reads back through the API with the same events, in order, as
//!   were ingested; a live flow reads the same way with `"archived": false`;
//! - tenant tokens never read another tenant, whatever the id looks like;
//! - listing pages in a stable order without gaps or repeats, with filters;
//! - the index rebuilt from the records and from the manifests equals the original;
//! - one flipped byte in S3 → that flow is a 5xx, its segment neighbours still read,
//!   and `verify` names it.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::*;
use serde_json::Value;

const BUCKET: &str = "flow-archive";
const ADMIN: &str = "admin-token-0123456789abcdef";
const T0_TOKEN: &str = "tenant0-token-0123456789abcd";

fn env_for(s3: &S3Server) -> Env {
    let config = format!(
        "[archive]\nbucket = \"{BUCKET}\"\nendpoint = \"{}\"\nsegment_max_flows = 4\nframe_target_bytes = 1500\n\
         [api]\nadmin_token = \"{ADMIN}\"\n[api.tenant_tokens]\ntenant-0 = \"{T0_TOKEN}\"\n",
        s3.endpoint
    );
    let mut env = Env::new(&config);
    env.vars = vec![
        ("AWS_ACCESS_KEY_ID".into(), s3.access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY".into(), s3.secret_key.clone()),
        ("AWS_DEFAULT_REGION".into(), "us-east-1".into()),
    ];
    env
}

/// A flow's (tenant, flow id) and its event ids in order.
type Flow = ((String, String), Vec<String>);

/// The input lines and the flows they hold.
fn workload() -> (String, Vec<Flow>) {
    let mut lines = Vec::new();
    let mut flows = Vec::new();
    for f in 0..14 {
        let (tenant, flow) = (format!("tenant-{}", f % 2), format!("flow-{f:02}"));
        let mut ids = Vec::new();
        for seq in 1..=3 + f % 3 {
            let last = seq == 3 + f % 3;
            let kind = match (last, f % 5) {
                (true, 0) => "failed",
                (true, _) => "completed",
                _ => "step",
            };
            let id = format!("{flow}-{seq}");
            lines.push(ce(
                &tenant,
                &flow,
                &id,
                seq as u64,
                kind,
                "2026-01-01T00:00:00Z",
            ));
            ids.push(id);
        }
        flows.push(((tenant, flow), ids));
    }
    lines.push(ce(
        "tenant-0",
        "live-1",
        "l1",
        1,
        "started",
        "2026-01-01T00:00:00Z",
    ));
    (lines.join("\n") + "\n", flows)
}

fn list_all(base: &str, query: &str, limit: usize) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{}/archive/flows?limit={limit}{query}", base);
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let (status, body) = http_get(&url, ADMIN);
        assert_eq!(status, 200, "{body}");
        items.extend(body["items"].as_array().unwrap().iter().cloned());
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return items,
        }
    }
}

#[test]
fn archived_and_live_flows_read_the_same_way_with_tenant_isolation() {
    let s3 = S3Server::start(BUCKET);
    let env = env_for(&s3);
    let (input, flows) = workload();
    env.write("events.jsonl", input.as_bytes());
    env.ok(&["ingest", "events.jsonl"]);
    env.ok(&["sweep", "--now", "2026-06-01T00:00:00Z"]);
    let (_api, base) = serve_api(&env);

    for ((tenant, flow), ids) in &flows {
        let (status, body) = http_get(&format!("{}/flows/{tenant}/{flow}", base), ADMIN);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["archived"], true);
        let got: Vec<&str> = body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect();
        assert_eq!(got, ids.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(body["parts"][0]["object_uri"]
            .as_str()
            .unwrap()
            .starts_with("s3://"));
    }
    let (status, live) = http_get(&format!("{}/flows/tenant-0/live-1", base), T0_TOKEN);
    assert_eq!(status, 200, "{live}");
    assert_eq!(live["archived"], false);
    assert_eq!(live["events"][0]["id"], "l1");

    // Isolation and bad ids.
    assert_eq!(
        http_get(&format!("{}/flows/tenant-1/flow-01", base), T0_TOKEN).0,
        403
    );
    assert_eq!(
        http_get(&format!("{}/flows/tenant-0/flow-00", base), T0_TOKEN).0,
        200
    );
    assert_eq!(
        http_get(&format!("{}/flows/tenant-0/flow-00", base), "").0,
        401
    );
    assert_eq!(
        http_get(&format!("{}/flows/tenant-0/flow-00", base), "wrong-token").0,
        401
    );
    assert_eq!(
        http_get(&format!("{}/flows/tenant-0/..%2Ftenant-1", base), T0_TOKEN).0,
        400
    );
    assert_eq!(
        http_get(&format!("{}/flows/..%2Ftenant-1/flow-01", base), T0_TOKEN).0,
        400
    );
    assert_eq!(
        http_get(&format!("{}/flows/tenant-0/no-such-flow", base), ADMIN).0,
        404
    );
    // With no archiver running, `serve` owns the state store as the CLI does: it
    // places and releases holds (on the live flow, so no archived part changes).
    let hold_url = format!("{}/flows/tenant-0/live-1/hold", base);
    let (status, body) = http_request("PUT", &hold_url, T0_TOKEN, Some(r#"{"reason":"case 1"}"#));
    assert_eq!(status, 403, "{body}");
    let (status, body) = http_request("PUT", &hold_url, ADMIN, Some(r#"{"reason":"case 1"}"#));
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_request("DELETE", &hold_url, ADMIN, None);
    assert_eq!(status, 200, "{body}");
    let (status, page) = http_get(&format!("{}/archive/flows?tenant=tenant-1", base), T0_TOKEN);
    assert_eq!(status, 403, "{page}");
    let (_, own) = http_get(&format!("{}/archive/flows", base), T0_TOKEN);
    assert!(own["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["tenant"] == "tenant-0"));
    let (_, stats) = http_get(&format!("{}/archive/stats", base), T0_TOKEN);
    assert_eq!(stats["flow_parts"], 7, "{stats}");

    // Listing: stable, gap-free pages; filters.
    let all = list_all(&base, "", 3);
    assert_eq!(all.len(), flows.len());
    let keys: BTreeSet<String> = all
        .iter()
        .map(|i| {
            format!(
                "{}/{}",
                i["tenant"].as_str().unwrap(),
                i["flow_id"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(keys.len(), flows.len(), "no repeats");
    assert_eq!(
        list_all(&base, "", 100)
            .iter()
            .map(|i| i["flow_id"].clone())
            .collect::<Vec<_>>(),
        all.iter().map(|i| i["flow_id"].clone()).collect::<Vec<_>>(),
        "same order whatever the page size"
    );
    let failed = list_all(&base, "&status=failed", 2);
    assert_eq!(
        failed.len(),
        flows.iter().enumerate().filter(|(f, _)| f % 5 == 0).count()
    );
    let team = list_all(&base, "&label=team:t1&tenant=tenant-0", 2);
    assert!(
        !team.is_empty()
            && team
                .iter()
                .all(|i| i["labels"]["team"] == "t1" && i["tenant"] == "tenant-0")
    );
    assert_eq!(
        http_get(&format!("{}/archive/flows?cursor=garbage", base), ADMIN).0,
        400
    );
    let (status, stats) = http_get(&format!("{}/archive/stats", base), ADMIN);
    assert_eq!(status, 200);
    assert_eq!(stats["flow_parts"], flows.len());
    assert_eq!(http_get(&format!("{}/healthz", base), "").0, 200);
    assert_eq!(http_get(&format!("{}/readyz", base), "").0, 200);

    let flow = "/flows/{tenant}/{flow_id}";
    let list = "/archive/flows";
    check_openapi(
        &env,
        &base,
        &[
            (flow, "/flows/tenant-0/flow-00".into(), ADMIN),
            ("/holds", "/holds".into(), ADMIN),
            ("/holds", "/holds".into(), T0_TOKEN),
            (flow, "/flows/tenant-0/live-1".into(), T0_TOKEN),
            (flow, "/flows/tenant-0/..%2Fx".into(), ADMIN),
            (flow, "/flows/tenant-0/flow-00".into(), ""),
            (flow, "/flows/tenant-1/flow-01".into(), T0_TOKEN),
            (flow, "/flows/tenant-0/nope".into(), ADMIN),
            (list, "/archive/flows?limit=2&label=team:t1".into(), ADMIN),
            (list, "/archive/flows?cursor=garbage".into(), ADMIN),
            (list, "/archive/flows?tenant=tenant-1".into(), T0_TOKEN),
            ("/archive/stats", "/archive/stats".into(), T0_TOKEN),
            ("/healthz", "/healthz".into(), ""),
            ("/readyz", "/readyz".into(), ""),
        ],
    );
}

#[test]
fn rebuilt_indexes_equal_the_original_and_damage_is_an_error_for_its_frame_only() {
    let s3 = S3Server::start(BUCKET);
    let env = env_for(&s3);
    let (input, flows) = workload();
    env.write("events.jsonl", input.as_bytes());
    env.ok(&["ingest", "events.jsonl"]);
    env.ok(&["sweep", "--now", "2026-06-01T00:00:00Z"]);
    env.ok(&["index"]);
    let original = env.ok(&["list", "--json", "--limit", "1000"]);
    env.ok(&["index", "rebuild"]);
    assert_eq!(
        env.ok(&["list", "--json", "--limit", "1000"]),
        original,
        "rebuilt from the records"
    );
    env.ok(&["index", "rebuild", "--from-archive"]);
    assert_eq!(
        env.ok(&["list", "--json", "--limit", "1000"]),
        original,
        "rebuilt from the manifests"
    );

    // Flip one byte inside one flow's frame, in the bucket itself.
    let page: Value = serde_json::from_str(&original).unwrap();
    let victim = &page["items"][0];
    let key = victim["object_key"].as_str().unwrap();
    let path = s3.root.path().join(BUCKET).join(key);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = victim["offset"].as_u64().unwrap() as usize + 10;
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let (_api, base) = serve_api(&env);
    let (tenant, flow) = (
        victim["tenant"].as_str().unwrap(),
        victim["flow_id"].as_str().unwrap(),
    );
    let (status, body) = http_get(&format!("{}/flows/{tenant}/{flow}", base), ADMIN);
    assert!(status >= 500, "damaged flow: {status} {body}");
    assert!(
        body["error"].as_str().unwrap().contains("frame_sha256"),
        "{body}"
    );
    // Its neighbours in other frames of the same object still read back; those packed
    // into the damaged frame (flow-archive/v2) fail the same way, never with wrong data.
    let neighbours: Vec<&Value> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["object_key"] == victim["object_key"] && i["flow_id"] != victim["flow_id"])
        .collect();
    assert!(
        neighbours.iter().any(|n| n["offset"] != victim["offset"]),
        "the object has other frames (archive.frame_target_bytes = 1500)"
    );
    for n in neighbours {
        let url = format!(
            "{}/flows/{}/{}",
            base,
            n["tenant"].as_str().unwrap(),
            n["flow_id"].as_str().unwrap()
        );
        let (status, body) = http_get(&url, ADMIN);
        match n["offset"] == victim["offset"] {
            true => assert!(status >= 500, "same frame: {status} {body}"),
            false => assert_eq!(status, 200, "{body}"),
        }
    }
    let out = env.run(&["verify"]);
    assert!(!out.status.success());
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains(flow), "verify names the flow: {report}");
    let _ = flows;
}

#[test]
fn run_serves_prometheus_metrics_that_parse_and_add_up() {
    let port = free_port();
    let env = Env::new(&format!(
        "[api]\nlisten = \"127.0.0.1:{port}\"\n[retention]\ncompleted = \"1s\"\nfailed = \"1s\"\n[scheduler]\ninterval = \"200ms\"\n"
    ));
    let (input, flows) = workload();
    let bad = "{not json\n";
    env.write("events.jsonl", format!("{input}{bad}").as_bytes());
    let lines = input.lines().count() as f64;
    let run = env.spawn(&["run", "--source", "file:events.jsonl"]);
    let base = format!("http://127.0.0.1:{port}");
    eventually(Duration::from_secs(20), "the API to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let metrics = eventually(
        Duration::from_secs(30),
        "every terminal flow archived",
        || {
            let m = scrape_metrics(&base);
            (m["samples"]["flow_archiver_flow_parts_archived_total"].as_f64()
                == Some(flows.len() as f64))
            .then_some(m)
        },
    );
    let s = &metrics["samples"];
    assert_eq!(s["flow_archiver_records_read_total"], lines + 1.0);
    assert_eq!(s["flow_archiver_events_ingested_total"], lines);
    assert_eq!(
        s["flow_archiver_records_dead_lettered_total{reason=malformed_json}"],
        1.0
    );
    assert_eq!(
        s["flow_archiver_expiry_to_archived_seconds_count"],
        flows.len() as f64
    );
    assert!(
        s["flow_archiver_segment_upload_seconds_count"]
            .as_f64()
            .unwrap()
            >= 1.0
    );
    assert!(
        s["flow_archiver_archived_raw_bytes_total"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert_eq!(
        s["flow_archiver_failures_total{stage=storage}"], 0.0,
        "pre-initialised"
    );
    assert!(
        s["flow_archiver_last_archive_success_timestamp_seconds"]
            .as_f64()
            .unwrap()
            > 1.7e9
    );
    let f = &metrics["families"];
    assert_eq!(f["flow_archiver_segment_upload_seconds"], "histogram");
    assert_eq!(f["flow_archiver_flows_tracked"], "gauge");
    // The one running flow stays tracked.
    eventually(Duration::from_secs(10), "flows_tracked to settle", || {
        (scrape_metrics(&base)["samples"]["flow_archiver_flows_tracked"].as_f64() == Some(1.0))
            .then_some(())
    });
    run.stop();
}

/// GET through the same Python client, trusting only `ca` for HTTPS; `None` when the
/// request fails below HTTP (no TLS, refused, reset).
fn https_get(url: &str, token: &str, ca: &std::path::Path) -> Option<(u16, Value)> {
    let out = std::process::Command::new("python3")
        .arg(format!(
            "{}/tests/py/http_get.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args([url, token])
        .env("SSL_CERT_FILE", ca)
        .output()
        .expect("python3");
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some((v["status"].as_u64()? as u16, v["body"].clone()))
}

/// With `api.tls_cert_file` and `api.tls_key_file` the API speaks HTTPS only, to a
/// client that trusts nothing but the test CA. Beyond loopback, plain HTTP (bearer
/// tokens in clear) is refused at start, naming the key and the fix, unless
/// `api.insecure_plaintext` says a proxy in front terminates TLS.
#[test]
fn the_api_serves_tls_and_refuses_plain_http_beyond_loopback() {
    let certs = tempfile::tempdir().unwrap();
    let ca = test_certificates(certs.path());
    let api = format!("[api]\nadmin_token = \"{ADMIN}\"\n");

    let plain = Env::new(&api);
    let port = free_port();
    let out = plain.run(&["serve", "--listen", &format!("0.0.0.0:{port}")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("api.listen") && stderr.contains("api.tls_cert_file"),
        "{stderr}"
    );

    let tls = Env::new(&format!(
        "{api}tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        certs.path().join("server.crt").display(),
        certs.path().join("server.key").display()
    ));
    let port = free_port();
    let _served = tls.spawn(&["serve", "--listen", &format!("0.0.0.0:{port}")]);
    eventually(Duration::from_secs(20), "the TLS API to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let base = format!("https://127.0.0.1:{port}");
    let (status, body) = https_get(&format!("{base}/healthz"), "", &ca).expect("HTTPS");
    assert_eq!(status, 200, "{body}");
    let (status, body) = https_get(&format!("{base}/flows/acme/none"), ADMIN, &ca).unwrap();
    assert_eq!(status, 404, "{body}");
    let (status, _) = https_get(&format!("{base}/flows/acme/none"), "wrong-token", &ca).unwrap();
    assert_eq!(status, 401);
    // Plain HTTP to the TLS port gets no HTTP answer, and a client that does not trust
    // the CA refuses the server.
    assert!(https_get(&format!("http://127.0.0.1:{port}/healthz"), "", &ca).is_none());
    let elsewhere = certs.path().join("server.crt");
    assert!(https_get(&format!("{base}/healthz"), "", &elsewhere).is_none());

    let proxied = Env::new(&format!("{api}insecure_plaintext = true\n"));
    let port = free_port();
    let _served = proxied.spawn(&["serve", "--listen", &format!("0.0.0.0:{port}")]);
    eventually(Duration::from_secs(20), "the plain API to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let (status, _) = http_get(&format!("http://127.0.0.1:{port}/healthz"), "");
    assert_eq!(status, 200);
}

/// A token past `api.rate_limit_per_token` gets 429 naming the setting; another
/// token's budget is its own.
#[test]
fn a_token_past_its_rate_limit_gets_429_and_others_are_unaffected() {
    let env = Env::new(&format!(
        "[api]\nadmin_token = \"{ADMIN}\"\nrate_limit_per_token = 2\n\
         [api.tenant_tokens]\ntenant-0 = \"{T0_TOKEN}\"\n"
    ));
    let (_api, base) = serve_api(&env);
    // Six requests from one process, milliseconds apart: the burst of two passes.
    let script = r#"
import json, sys, urllib.request, urllib.error
out = []
for token in sys.argv[2:]:
    request = urllib.request.Request(sys.argv[1], headers={"Authorization": "Bearer " + token})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            out.append([r.status, r.read().decode()])
    except urllib.error.HTTPError as e:
        out.append([e.code, e.read().decode()])
print(json.dumps(out))
"#;
    let url = format!("{base}/flows/tenant-0/none");
    let mut args = vec!["-c", script, &url];
    args.extend([ADMIN; 6]);
    args.push(T0_TOKEN);
    let out = std::process::Command::new("python3")
        .args(&args)
        .output()
        .unwrap();
    let answers: Vec<(u16, String)> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(&statuses[..2], &[404, 404], "{answers:?}");
    let limited: Vec<&(u16, String)> = answers[..6].iter().filter(|a| a.0 == 429).collect();
    assert!(!limited.is_empty(), "{answers:?}");
    assert!(
        limited[0].1.contains("api.rate_limit_per_token"),
        "{answers:?}"
    );
    assert_eq!(
        statuses[6], 404,
        "the tenant token has its own budget: {answers:?}"
    );
}
