//! The HTTP API as its users see it: requests through the Python client, responses
//! checked against `schemas/openapi.yaml`, metrics parsed by Prometheus's own client.

use std::time::Duration;

use serde_json::Value;

use super::clients::python;
use super::env::{eventually, free_port, Env, Running};

/// GET through `tests/py/http_get.py` (Python's standard library): (status, JSON body).
pub fn http_get(url: &str, token: &str) -> (u16, Value) {
    let v: Value =
        serde_json::from_str(&python("http_get.py", &[url, token])).expect("http_get.py JSON");
    (v["status"].as_u64().unwrap_or(0) as u16, v["body"].clone())
}

/// Any method, with an optional JSON body, through the same client.
pub fn http_request(method: &str, url: &str, token: &str, body: Option<&str>) -> (u16, Value) {
    let mut args = vec![url, token, method];
    args.extend(body);
    let v: Value = serde_json::from_str(&python("http_get.py", &args)).expect("http_get.py JSON");
    (v["status"].as_u64().unwrap_or(0) as u16, v["body"].clone())
}

/// Every case's status must be documented in schemas/openapi.yaml for its path, and
/// its body must validate against the documented schema (checked in Python with
/// PyYAML and jsonschema, sharing nothing with the server). Cases are GETs: (spec path,
/// URL, token).
pub fn check_openapi(env: &Env, base: &str, cases: &[(&str, String, &str)]) {
    let cases: Vec<Value> = cases
        .iter()
        .map(|(path, url, token)| serde_json::json!({"path": path, "url": url, "token": token}))
        .collect();
    check_openapi_cases(env, base, &cases);
}

/// As [`check_openapi`], with any method and body: `{"path", "url", "token",
/// "method", "body"}` per case.
pub fn check_openapi_cases(env: &Env, base: &str, cases: &[Value]) {
    let file = env.write(
        "openapi-cases.json",
        serde_json::to_string(&cases).unwrap().as_bytes(),
    );
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/openapi.yaml");
    // Fails (with the mismatches) when a response differs from the spec.
    python("openapi_check.py", &[spec, base, file.to_str().unwrap()]);
}

/// One GraphQL request to `{base}/graphql` through `tests/py/graphql.py` (Python
/// `requests`): (HTTP status, body).
pub fn graphql(base: &str, token: &str, query: &str, variables: Value) -> (u16, Value) {
    let url = format!("{base}/graphql");
    let vars = variables.to_string();
    let v: Value = serde_json::from_str(&python("graphql.py", &[&url, token, query, &vars]))
        .expect("graphql.py JSON");
    (v["status"].as_u64().unwrap_or(0) as u16, v["body"].clone())
}

/// Scrapes `{base}/metrics` and parses it with Python's official client (OpenMetrics
/// parser): `{"families": {name: type}, "samples": {"name{k=v}": value}}`.
pub fn scrape_metrics(base: &str) -> Value {
    serde_json::from_str(&python("metrics_check.py", &[&format!("{base}/metrics")]))
        .expect("metrics_check.py JSON")
}

/// `serve` on a free loopback port; killed with the returned guard.
pub fn serve_api(env: &Env) -> (Running, String) {
    let port = free_port();
    let run = env.spawn(&["serve", "--listen", &format!("127.0.0.1:{port}")]);
    eventually(Duration::from_secs(20), "the API to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    (run, format!("http://127.0.0.1:{port}"))
}

/// The `flow_archiver_consumer_lag_messages` sample, read with a raw HTTP/1.0 GET (fast
/// enough to poll while ingest runs).
pub fn lag_of(port: u16) -> Option<i64> {
    metric_of(port, "flow_archiver_consumer_lag_messages")
}

/// The value of an unlabelled metric served at `/metrics` on `port`.
pub fn metric_of(port: u16, name: &str) -> Option<i64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}
