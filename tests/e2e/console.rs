//! The web console and GraphQL end to end, against a real `serve` over archived and
//! live flows:
//! - a real browser (Debian's chromium, headless, through chromedriver) signs in,
//!   searches, opens a flow, reads its events in order, places a hold and finds it
//!   under Holds; a tenant token cannot open another tenant's flow; event data that
//!   looks like markup stays text; screenshots are saved;
//! - an independent GraphQL client (Python `requests`) runs every query documented in
//!   docs/graphql.md, and checks tenant scoping, mutation permissions, paging against
//!   REST, the depth and cost limits, bad input and turning introspection off;
//! - the checked-in `schemas/schema.graphql` is what the server serves;
//! - the console's assets are embedded, small, self-contained and cached.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::browser::Browser;
use crate::support::*;

const ADMIN: &str = "admin-token-0123456789abcdef";
const T0: &str = "tenant0-token-0123456789abcd";
const T1: &str = "tenant1-token-0123456789abcd";

fn console_env(extra: &str) -> Env {
    Env::new(&format!(
        "[api]\nadmin_token = \"{ADMIN}\"\n{extra}\n[api.tenant_tokens]\ntenant-0 = \"{T0}\"\ntenant-1 = \"{T1}\"\n"
    ))
}

/// A live event whose data looks like markup and script.
const HOSTILE: &str = r#"{"specversion":"1.0","id":"live-x-1","source":"/engine","type":"io.test.flow.started","subject":"live-ü-1","tenant":"tenant-0","sequence":"0001","time":"2026-05-31T23:59:00Z","data":{"note":"<img src=x onerror=\"window.pwned=1\"><script>window.pwned=2</script>","labels":{"team":"../../etc"}}}"#;

/// Archived flows `order-0NN` (tenant-0) and `order-1NN` (tenant-1), events shuffled
/// in the input; live flows; and `order-001` reopened with a live part 2. Returns
/// the event ids of `order-003` in flow order.
fn populate(env: &Env) -> Vec<String> {
    let mut lines = Vec::new();
    let mut order_003 = Vec::new();
    for (tenant, numbers) in [("tenant-0", 1..=12), ("tenant-1", 101..=104)] {
        for n in numbers {
            let flow = format!("order-{n:03}");
            let last = if n % 4 == 0 { "failed" } else { "completed" };
            let mut events = Vec::new();
            for seq in 1..=5u64 {
                let kind = if seq == 5 { last } else { "step" };
                let id = format!("{flow}-{seq}");
                let time = format!("2026-01-01T00:00:{:02}Z", seq * 7);
                events.push(ce(tenant, &flow, &id, seq, kind, &time));
                if flow == "order-003" {
                    order_003.push(id);
                }
            }
            // Out of order: the flow's order comes from its sequence numbers.
            events.reverse();
            events.swap(0, 2);
            lines.extend(events);
        }
    }
    lines.push(ce(
        "tenant-0",
        "live-1",
        "live-1-1",
        1,
        "started",
        "2026-05-31T23:59:00Z",
    ));
    lines.push(ce(
        "tenant-1",
        "live-2",
        "live-2-1",
        1,
        "started",
        "2026-05-31T23:59:00Z",
    ));
    lines.push(HOSTILE.to_string());
    env.write("events.jsonl", (lines.join("\n") + "\n").as_bytes());
    env.ok(&["ingest", "events.jsonl"]);
    env.ok(&["sweep", "--now", "2026-06-01T00:00:00Z"]);
    let reopen = ce(
        "tenant-0",
        "order-001",
        "order-001-6",
        6,
        "step",
        "2026-05-31T23:59:30Z",
    );
    env.write("reopen.jsonl", (reopen + "\n").as_bytes());
    env.ok(&["ingest", "reopen.jsonl"]);
    order_003
}

/// The data of a request that must succeed.
fn data(base: &str, token: &str, query: &str, variables: Value) -> Value {
    let (status, body) = graphql(base, token, query, variables);
    assert_eq!(status, 200, "{body}");
    assert!(body.get("errors").is_none(), "{query}\n{body}");
    body["data"].clone()
}

/// The `extensions.code` of a request's first error.
fn error_code(base: &str, token: &str, query: &str, variables: Value) -> String {
    let (status, body) = graphql(base, token, query, variables);
    assert_eq!(status, 200, "{body}");
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code for {query}: {body}"))
        .to_string()
}

/// The ```graphql blocks of docs/graphql.md, each with the ```json block right after
/// it as its variables.
fn documented_queries() -> Vec<(String, Value)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/graphql.md"))
        .expect("docs/graphql.md");
    let mut blocks: Vec<(String, String)> = Vec::new();
    let mut rest = doc.as_str();
    while let Some(start) = rest.find("```") {
        let after = &rest[start + 3..];
        let (lang, body) = after.split_once('\n').unwrap_or((after, ""));
        let end = body.find("```").expect("a closed code block");
        blocks.push((lang.trim().to_string(), body[..end].to_string()));
        rest = &body[end + 3..];
    }
    let mut queries = Vec::new();
    for (i, (lang, body)) in blocks.iter().enumerate() {
        if lang != "graphql" {
            continue;
        }
        let vars = match blocks.get(i + 1) {
            Some((l, v)) if l == "json" => serde_json::from_str(v).expect("variables JSON"),
            _ => json!({}),
        };
        queries.push((body.clone(), vars));
    }
    queries
}

#[test]
fn graphql_serves_the_documented_queries_scoped_and_limited() {
    let env = console_env("");
    populate(&env);
    let (api, base) = serve_api(&env);

    let documented = documented_queries();
    assert!(documented.len() >= 7, "{documented:?}");
    for (query, vars) in &documented {
        data(&base, ADMIN, query, vars.clone());
    }

    // Who asks.
    let me = data(
        &base,
        T0,
        "{ viewer { role tenant canAct seesLiveFlows } }",
        json!({}),
    );
    assert_eq!(
        me["viewer"],
        json!({"role": "tenant", "tenant": "tenant-0", "canAct": false, "seesLiveFlows": true})
    );
    let me = data(&base, ADMIN, "{ viewer { role canAct } }", json!({}));
    assert_eq!(me["viewer"], json!({"role": "admin", "canAct": true}));

    // A flow across parts: archived part 1 and live part 2, events in flow order.
    let flow_q = "query($t: String!, $f: String!) { flow(tenant: $t, flowId: $f) { live archived status parts { part state } events(first: 3) { total nextCursor items { position part id } } } }";
    let flow = &data(
        &base,
        T0,
        flow_q,
        json!({"t": "tenant-0", "f": "order-001"}),
    )["flow"];
    assert_eq!(
        flow["parts"],
        json!([{"part": 1, "state": "ARCHIVED"}, {"part": 2, "state": "LIVE"}])
    );
    assert_eq!(
        (flow["live"].clone(), flow["archived"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(flow["events"]["total"], 6);
    let ids: Vec<&str> = flow["events"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["order-001-1", "order-001-2", "order-001-3"]);
    let next = flow["events"]["nextCursor"].as_str().unwrap().to_string();
    let page_q = "query($t: String!, $f: String!, $a: String) { flow(tenant: $t, flowId: $f) { events(first: 10, after: $a) { nextCursor items { part id } } } }";
    let rest = &data(
        &base,
        T0,
        page_q,
        json!({"t": "tenant-0", "f": "order-001", "a": next}),
    )["flow"]["events"];
    assert_eq!(
        rest["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["order-001-4", "order-001-5", "order-001-6"]
    );
    assert_eq!(rest["items"][2]["part"], 2);
    assert_eq!(rest["nextCursor"], Value::Null);
    assert_eq!(
        error_code(
            &base,
            T0,
            page_q,
            json!({"t": "tenant-0", "f": "order-001", "a": "99"})
        ),
        "BAD_REQUEST"
    );
    let none = data(
        &base,
        ADMIN,
        flow_q,
        json!({"t": "tenant-0", "f": "no-such-flow"}),
    );
    assert_eq!(none["flow"], Value::Null);

    // Tenant isolation, whatever the query.
    for (query, vars) in [
        (flow_q, json!({"t": "tenant-1", "f": "order-101"})),
        (
            "query($t: String!, $f: String!) { verifyFlow(tenant: $t, flowId: $f) { ok } }",
            json!({"t": "tenant-1", "f": "order-101"}),
        ),
        ("{ stats(tenant: \"tenant-1\") { flowParts } }", json!({})),
        (
            "{ archivedFlows(filter: {tenant: \"tenant-1\"}) { edges { cursor } } }",
            json!({}),
        ),
        (
            "{ liveFlows(filter: {tenant: \"tenant-1\"}) { edges { cursor } } }",
            json!({}),
        ),
    ] {
        assert_eq!(error_code(&base, T0, query, vars), "FORBIDDEN", "{query}");
    }
    let own = data(&base, T1, "{ archivedFlows(first: 100) { edges { node { tenant } } } liveFlows { edges { node { tenant flowId } } } stats { flowParts liveFlows } }", json!({}));
    let tenants: Vec<&str> = own["archivedFlows"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, vec!["tenant-1"; 4]);
    assert_eq!(
        own["liveFlows"]["edges"],
        json!([{"node": {"tenant": "tenant-1", "flowId": "live-2"}}])
    );
    assert_eq!(own["stats"], json!({"flowParts": 4, "liveFlows": 1}));

    // Paging: the same pages and cursors as REST's listing.
    let list_q = "query($a: String) { archivedFlows(first: 5, after: $a) { edges { cursor node { tenant flowId part } } pageInfo { hasNextPage endCursor } } }";
    let mut after = Value::Null;
    let mut cursor_param = String::new();
    let mut seen = 0;
    loop {
        let page = data(&base, ADMIN, list_q, json!({"a": after}))["archivedFlows"].clone();
        let (status, rest) = http_get(
            &format!("{base}/archive/flows?limit=5{cursor_param}"),
            ADMIN,
        );
        assert_eq!(status, 200, "{rest}");
        let graph: Vec<(Value, Value)> = page["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["node"]["flowId"].clone(), e["node"]["part"].clone()))
            .collect();
        let listed: Vec<(Value, Value)> = rest["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["flow_id"].clone(), i["part"].clone()))
            .collect();
        assert_eq!(graph, listed);
        assert_eq!(page["pageInfo"]["endCursor"], rest["next_cursor"]);
        seen += graph.len();
        match page["pageInfo"]["endCursor"].as_str() {
            Some(c) => {
                cursor_param = format!("&cursor={c}");
                after = json!(c);
            }
            None => break,
        }
    }
    assert_eq!(seen, 16);
    let prefixed = data(&base, ADMIN, "{ archivedFlows(filter: {flowIdPrefix: \"order-01\", status: \"completed\"}) { edges { node { flowId } } } }", json!({}));
    let ids: Vec<&str> = prefixed["archivedFlows"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["flowId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["order-010", "order-011"]);
    // Labels: all must match; keys and values are taken whole.
    let labelled = "query($l: [LabelInput!]) { archivedFlows(filter: {labels: $l}) { edges { node { flowId } } } liveFlows(filter: {labels: $l}) { edges { node { flowId } } } }";
    let both = data(
        &base,
        ADMIN,
        labelled,
        json!({"l": [{"key": "team", "value": "t1"}]}),
    );
    assert_eq!(
        both["archivedFlows"]["edges"].as_array().unwrap().len(),
        16,
        "{both}"
    );
    assert!(
        both["liveFlows"]["edges"].as_array().unwrap().len() >= 2,
        "{both}"
    );
    let none = data(
        &base,
        ADMIN,
        labelled,
        json!({"l": [{"key": "team", "value": "t1"}, {"key": "team:t1", "value": ""}]}),
    );
    assert_eq!(none["archivedFlows"]["edges"], json!([]));
    assert_eq!(none["liveFlows"]["edges"], json!([]));
    let dots = data(
        &base,
        ADMIN,
        labelled,
        json!({"l": [{"key": "team", "value": "../../etc"}]}),
    );
    assert_eq!(
        dots["liveFlows"]["edges"],
        json!([{"node": {"flowId": "live-ü-1"}}])
    );
    // Prefixes are characters, not patterns.
    for prefix in ["%", "_", "order-0%", "*"] {
        let q = "query($p: String) { archivedFlows(filter: {flowIdPrefix: $p}) { edges { cursor } } liveFlows(filter: {flowIdPrefix: $p}) { edges { cursor } } }";
        let found = data(&base, ADMIN, q, json!({"p": prefix}));
        assert_eq!(found["archivedFlows"]["edges"], json!([]), "{prefix}");
        assert_eq!(found["liveFlows"]["edges"], json!([]), "{prefix}");
    }
    let unicode = data(
        &base,
        T0,
        "{ liveFlows(filter: {flowIdPrefix: \"live-ü\"}) { edges { node { flowId } } } }",
        json!({}),
    );
    assert_eq!(
        unicode["liveFlows"]["edges"],
        json!([{"node": {"flowId": "live-ü-1"}}])
    );
    let live = data(&base, ADMIN, "{ liveFlows(filter: {flowIdPrefix: \"live-\"}, first: 1) { edges { node { flowId } } pageInfo { hasNextPage endCursor } } }", json!({}));
    assert_eq!(live["liveFlows"]["pageInfo"]["hasNextPage"], true, "{live}");

    // Mutations: admin only; a tenant token is refused and nothing changes.
    let hold_q = "mutation($t: String!, $f: String!) { placeHold(tenant: $t, flowId: $f, reason: \"case 7\") { tenant flowId reason actor } }";
    let release_q = "mutation($t: String!, $f: String!) { releaseHold(tenant: $t, flowId: $f) }";
    let replay_q = "mutation($t: String!, $f: String!, $to: String!) { replayFlow(tenant: $t, flowId: $f, to: $to) { events } }";
    assert_eq!(
        error_code(
            &base,
            T0,
            hold_q,
            json!({"t": "tenant-0", "f": "order-002"})
        ),
        "FORBIDDEN"
    );
    assert_eq!(
        error_code(
            &base,
            T0,
            replay_q,
            json!({"t": "tenant-0", "f": "order-002", "to": "nats:x"})
        ),
        "FORBIDDEN"
    );
    assert_eq!(
        error_code(
            &base,
            ADMIN,
            replay_q,
            json!({"t": "tenant-0", "f": "order-002", "to": "stdout"})
        ),
        "BAD_REQUEST"
    );
    let held = data(
        &base,
        ADMIN,
        hold_q,
        json!({"t": "tenant-0", "f": "order-002"}),
    );
    assert_eq!(
        held["placeHold"],
        json!({"tenant": "tenant-0", "flowId": "order-002", "reason": "case 7", "actor": "api:admin"})
    );
    // Placed twice: still one hold.
    data(
        &base,
        ADMIN,
        hold_q,
        json!({"t": "tenant-0", "f": "order-002"}),
    );
    assert_eq!(
        data(&base, T0, "{ holds { flowId } }", json!({}))["holds"],
        json!([{"flowId": "order-002"}])
    );
    assert_eq!(
        data(&base, T1, "{ holds { flowId } }", json!({}))["holds"],
        json!([])
    );
    let (_, rest_holds) = http_get(&format!("{base}/holds"), ADMIN);
    assert_eq!(rest_holds[0]["flow_id"], "order-002", "{rest_holds}");
    assert_eq!(
        error_code(
            &base,
            T1,
            release_q,
            json!({"t": "tenant-0", "f": "order-002"})
        ),
        "FORBIDDEN"
    );
    assert_eq!(
        data(
            &base,
            ADMIN,
            release_q,
            json!({"t": "tenant-0", "f": "order-002"})
        )["releaseHold"],
        true
    );
    assert_eq!(
        error_code(
            &base,
            ADMIN,
            release_q,
            json!({"t": "tenant-0", "f": "order-002"})
        ),
        "NOT_FOUND"
    );
    let audit = data(
        &base,
        T0,
        "{ activity(last: 5) { action tenant flowId } }",
        json!({}),
    );
    assert_eq!(
        audit["activity"][0],
        json!({"action": "release", "tenant": "tenant-0", "flowId": "order-002"})
    );

    // The introspection query tools send fits the limits.
    let standard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/introspection.graphql"
    ))
    .unwrap();
    let schema = data(&base, ADMIN, &standard, json!({}));
    assert!(schema["__schema"]["types"].as_array().unwrap().len() > 20);

    // Depth and cost limits, refused before running.
    let mut deep = String::from("name");
    for _ in 0..16 {
        deep = format!("ofType {{ {deep} }}");
    }
    let (_, body) = graphql(
        &base,
        ADMIN,
        &format!("{{ __schema {{ types {{ fields {{ type {{ {deep} }} }} }} }} }}"),
        json!({}),
    );
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("too deep"),
        "{body}"
    );
    let costly = "{ archivedFlows(first: 1000) { edges { cursor node { tenant flowId part status archivedAt purgeAt firstEventTime lastEventTime eventCount rawBytes storedBytes objectUri held } } } }";
    let (_, body) = graphql(&base, ADMIN, costly, json!({}));
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("too complex"),
        "{body}"
    );
    assert_eq!(body["data"], Value::Null, "{body}");

    // Bad input: no or unknown token, malformed bodies, hostile ids, bad filters.
    assert_eq!(graphql(&base, "", "{ viewer { role } }", json!({})).0, 401);
    assert_eq!(
        graphql(
            &base,
            "not-a-token-0123456789",
            "{ viewer { role } }",
            json!({})
        )
        .0,
        401
    );
    let url = format!("{base}/graphql");
    for raw in ["", "not json", "{\"query\": 5}", "[1,2]"] {
        let v: Value =
            serde_json::from_str(&python("graphql.py", &[&url, ADMIN, "--raw", raw])).unwrap();
        assert_eq!(v["status"], 400, "{raw:?}: {v}");
    }
    let (_, body) = graphql(&base, ADMIN, "{ flow(", json!({}));
    assert!(body["errors"][0]["message"].is_string(), "{body}");
    // Oversized: refused by the body limit; deeply nested text: a parse error, and
    // the server stays up.
    let big = env.write(
        "big.json",
        format!(
            "{{\"query\": \"{{ viewer {{ role }} }}\", \"pad\": \"{}\"}}",
            "x".repeat(3 << 20)
        )
        .as_bytes(),
    );
    let v: Value = serde_json::from_str(&python(
        "graphql.py",
        &[&url, ADMIN, "--raw", &format!("@{}", big.display())],
    ))
    .unwrap();
    assert_eq!(v["status"], 413, "{}", v["status"]);
    let nested = format!("{}{}", "{ a ".repeat(20_000), "}".repeat(20_000));
    let deep = env.write(
        "deep.json",
        json!({ "query": nested }).to_string().as_bytes(),
    );
    let v: Value = serde_json::from_str(&python(
        "graphql.py",
        &[&url, ADMIN, "--raw", &format!("@{}", deep.display())],
    ))
    .unwrap();
    assert_eq!(v["status"], 200, "{v}");
    assert!(v["body"]["errors"][0]["message"].is_string(), "{v}");
    data(&base, ADMIN, "{ viewer { role } }", json!({}));
    for (t, f) in [
        ("tenant-0", "../tenant-1/order-101"),
        ("tenant-0", "a\u{202e}b"),
        ("..", "x"),
        ("tenant-0", ""),
    ] {
        assert_eq!(
            error_code(&base, ADMIN, flow_q, json!({"t": t, "f": f})),
            "BAD_REQUEST",
            "{t:?} {f:?}"
        );
    }
    for filter in [
        json!({"from": "yesterday"}),
        json!({"until": "2026-13-01T00:00:00Z"}),
    ] {
        let q = "query($f: FlowFilter) { archivedFlows(filter: $f) { edges { cursor } } }";
        assert_eq!(
            error_code(&base, ADMIN, q, json!({"f": filter})),
            "BAD_REQUEST"
        );
    }
    for q in [
        "{ archivedFlows(after: \"bm90IGEgY3Vyc29y\") { edges { cursor } } }",
        "{ liveFlows(after: \"%%\") { edges { cursor } } }",
    ] {
        assert_eq!(error_code(&base, ADMIN, q, json!({})), "BAD_REQUEST", "{q}");
    }
    api.stop();

    // Introspection off: the schema is not served, queries still are.
    let closed = console_env("graphql_introspection = false");
    let (api, base) = serve_api(&closed);
    let (_, body) = graphql(&base, ADMIN, "{ __schema { types { name } } }", json!({}));
    assert!(body.pointer("/data/__schema/types").is_none(), "{body}");
    let (_, body) = graphql(
        &base,
        ADMIN,
        "{ __type(name: \"Flow\") { fields { name } } }",
        json!({}),
    );
    assert!(body.pointer("/data/__type/fields").is_none(), "{body}");
    data(&base, ADMIN, "{ viewer { role } }", json!({}));
    api.stop();
}

#[test]
fn the_checked_in_graphql_schema_is_what_the_server_serves() {
    let env = Env::new("");
    let served = env.ok(&["graphql-schema"]);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/schema.graphql");
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        served == checked_in,
        "schemas/schema.graphql is out of date: run `cargo run -- graphql-schema > schemas/schema.graphql`"
    );
}

#[test]
fn console_assets_are_embedded_small_self_contained_and_cached() {
    let env = console_env("");
    let (api, base) = serve_api(&env);
    let port: u16 = base.rsplit(':').next().unwrap().parse().unwrap();
    let get = |path: &str, etag: Option<&str>| raw_get(port, path, etag);
    let (status, headers, page) = get("/ui", None);
    assert_eq!(status, 200, "{headers}");
    assert!(headers.contains("cache-control: no-cache"), "{headers}");
    assert!(
        headers.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{headers}"
    );
    let etag = headers
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(get("/ui", Some(&etag)).0, 304);
    let mut total = page.len();
    for asset in ["app.js", "app.css", "icon.svg"] {
        let at = page
            .find(&format!("/ui/assets/{asset}?v="))
            .unwrap_or_else(|| panic!("{asset} in {page}"));
        let url = page[at..].split('"').next().unwrap().to_string();
        let (status, headers, text) = get(&url, None);
        assert_eq!(status, 200, "{url}: {headers}");
        assert!(
            headers.contains("cache-control: public, max-age=31536000, immutable"),
            "{headers}"
        );
        total += text.len();
        // Offline: nothing is loaded from anywhere but this server.
        assert!(
            !text
                .replace("http://www.w3.org/2000/svg", "")
                .contains("http://")
                && !text.contains("https://"),
            "{asset} loads from elsewhere"
        );
    }
    assert!(total < 60_000, "the console is {total} bytes");
    assert_eq!(get("/ui/assets/..%2F..%2FCargo.toml", None).0, 404);
    assert_eq!(get("/ui/assets/app.js.map", None).0, 404);
    api.stop();
}

/// A plain HTTP/1.0 GET: (status, lower-cased headers, body).
fn raw_get(port: u16, path: &str, etag: Option<&str>) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let condition = etag
        .map(|t| format!("If-None-Match: {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: localhost\r\n{condition}\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_lowercase(), body.to_string())
}

#[test]
fn replay_through_graphql_sends_an_archived_flow_in_order_to_nats() {
    let nats = NatsServer::start();
    let env = Env::new(&format!(
        "[nats]\nservers = \"{}\"\n[api]\nadmin_token = \"{ADMIN}\"\n[api.tenant_tokens]\ntenant-0 = \"{T0}\"\n",
        nats.url()
    ));
    let order_003 = populate(&env);
    let (api, base) = serve_api(&env);
    nats_client(&["stream", &nats.url(), "REPLAY", "replay.>"]);
    let replay = "mutation($to: String!) { replayFlow(tenant: \"tenant-0\", flowId: \"order-003\", to: $to, actor: \"console\") { target events parts } }";
    assert_eq!(
        error_code(&base, T0, replay, json!({"to": "nats:replay.order-003"})),
        "FORBIDDEN"
    );
    assert_eq!(
        error_code(&base, ADMIN, replay, json!({"to": "nats:replay.*"})),
        "BAD_REQUEST"
    );
    let done = data(&base, ADMIN, replay, json!({"to": "nats:replay.order-003"}));
    assert_eq!(done["replayFlow"]["target"], "nats:replay.order-003");
    assert_eq!(done["replayFlow"]["events"], 5);
    let read = nats_client(&["read", &nats.url(), "REPLAY", "5", "--timeout", "20"]);
    let ids: Vec<String> = read
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["json"]["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids, order_003);
    // A live flow has nothing archived to replay.
    let live = "mutation { replayFlow(tenant: \"tenant-0\", flowId: \"live-1\", to: \"nats:replay.x\") { events } }";
    assert_eq!(error_code(&base, ADMIN, live, json!({})), "NOT_FOUND");
    let audit = data(
        &base,
        ADMIN,
        "{ activity(last: 1) { action actor flowId counts { name value } } }",
        json!({}),
    );
    assert_eq!(audit["activity"][0]["action"], "replay");
    assert_eq!(audit["activity"][0]["actor"], "api:console");
    api.stop();
}

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots")
}

#[test]
fn console_in_a_real_browser() {
    let env = console_env("");
    let order_003 = populate(&env);
    let (api, base) = serve_api(&env);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let b = Browser::start(1280, 1000).await;
        b.client.goto(&format!("{base}/ui")).await.unwrap();

        // Sign in: the overview shows the archive.
        b.find("#token").await.send_keys(ADMIN).await.unwrap();
        b.find("#sign-in").await.click().await.unwrap();
        b.find_text("#archived-parts", "16").await;
        b.find_text("#live-flows", "4").await;
        b.find_text("#activity", "archive").await;
        let url = b.client.current_url().await.unwrap();
        assert!(!url.as_str().contains(ADMIN), "{url}");
        b.screenshot(&screenshots().join("overview.png")).await;

        // Search, then open a flow from the results.
        b.find("a[data-nav=search]").await.click().await.unwrap();
        b.find("#search-flowIdPrefix").await.send_keys("order-00").await.unwrap();
        b.find("#search-submit").await.click().await.unwrap();
        b.find_text("#archived-results a.flow-link", "tenant-0/order-009").await;
        b.find_text("#live-results a.flow-link", "tenant-0/order-001").await;
        b.find_text("#archived-results a.flow-link", "tenant-0/order-003").await.click().await.unwrap();
        b.find_text("#flow-title", "tenant-0/order-003").await;
        b.find_text("#parts", "team=t1").await;

        // Its events, in flow order although they arrived shuffled; one expands to JSON.
        b.find("#timeline li").await;
        let mut shown = Vec::new();
        for e in b.client.find_all(fantoccini::Locator::Css("#timeline .event-id")).await.unwrap() {
            shown.push(e.text().await.unwrap());
        }
        assert_eq!(shown, order_003);
        b.find("#timeline li button.event").await.click().await.unwrap();
        let json = b.find_text("#timeline li pre", "\"id\": \"order-003-1\"").await;
        assert!(json.is_displayed().await.unwrap());
        b.find("#verify").await.click().await.unwrap();
        b.find_text(".result.ok", "All checksums match").await;
        b.screenshot(&screenshots().join("flow.png")).await;

        // A hold: on the page, and under Holds.
        b.find("#hold-reason").await.send_keys("case 42: keep for the audit").await.unwrap();
        b.find("#place-hold").await.click().await.unwrap();
        b.find_text("#hold-badge", "case 42").await;
        b.find("#release-hold").await;
        b.find("a[data-nav=holds]").await.click().await.unwrap();
        b.find_text("#holds", "tenant-0/order-003").await;
        b.find_text("#holds", "api:console").await;

        // Event data that looks like markup stays text.
        b.client.goto(&format!("{base}/ui#/flow/tenant-0/live-%C3%BC-1")).await.unwrap();
        b.find_text("#flow-title", "tenant-0/live-ü-1").await;
        b.find("#timeline li button.event").await.click().await.unwrap();
        b.find_text("#timeline li pre", "<img src=x").await;
        let injected = b.client.execute("return [document.querySelectorAll('main img, main script').length, window.pwned === undefined]", vec![]).await.unwrap();
        assert_eq!(injected, json!([0, true]));

        // A phone-sized window: nothing wider than the screen but scrolling tables.
        b.client.set_window_size(390, 844).await.unwrap();
        b.client.goto(&format!("{base}/ui#/flow/tenant-0/order-003")).await.unwrap();
        b.find_text("#flow-title", "tenant-0/order-003").await;
        let fits = b.client.execute("return document.documentElement.scrollWidth <= window.innerWidth + 1", vec![]).await.unwrap();
        assert_eq!(fits, json!(true));
        b.screenshot(&screenshots().join("flow-phone.png")).await;
        b.client.set_window_size(1280, 1000).await.unwrap();

        // A tenant token: its own tenant only.
        b.find("#sign-out").await.click().await.unwrap();
        b.find("#token").await.send_keys(T1).await.unwrap();
        b.find("#sign-in").await.click().await.unwrap();
        b.find_text("#who-text", "tenant tenant-1").await;
        b.find_text("#archived-parts", "4").await;
        b.client.goto(&format!("{base}/ui#/flow/tenant-0/order-003")).await.unwrap();
        b.find_text("#error", "reads tenant \"tenant-1\" only").await;
        assert!(!b.text("main").await.contains("order-003-1"));
        b.client.goto(&format!("{base}/ui#/search?all=1")).await.unwrap();
        b.find_text("#archived-results", "tenant-1/order-101").await;
        assert!(!b.text("#archived-results").await.contains("tenant-0"));
        assert!(!b.text("#live-results").await.contains("tenant-0"));
        // No admin actions for a tenant.
        b.client.goto(&format!("{base}/ui#/flow/tenant-1/order-101")).await.unwrap();
        b.find_text(".actions", "need the admin token").await;
        assert!(b.client.find(fantoccini::Locator::Css("#place-hold")).await.is_err());

        // A wrong token is refused at sign-in, with the reason.
        b.find("#sign-out").await.click().await.unwrap();
        b.find("#token").await.send_keys("wrong-token-0123456789").await.unwrap();
        b.find("#sign-in").await.click().await.unwrap();
        b.find_text(".login .error", "unknown token").await;
        b.close().await;
    });
    let (_, holds) = http_get(&format!("{base}/holds"), ADMIN);
    assert_eq!(holds[0]["flow_id"], "order-003", "{holds}");
    api.stop();
    eventually(Duration::from_secs(10), "chromium to exit", || {
        let out = std::process::Command::new("pgrep")
            .args(["-f", "chromedriver --port"])
            .output()
            .ok()?;
        out.stdout.is_empty().then_some(())
    });
}
