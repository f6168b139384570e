//! The deploy files name only metrics that exist: every `flow_archiver_*` name in the
//! Prometheus rules and the Grafana dashboard is scraped from a real `serve` process.

mod support;

use std::collections::BTreeSet;

use serde_json::Value;
use support::*;

fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("flow_archiver_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn rules_and_dashboard_use_only_served_metrics() {
    let env = Env::new("");
    let (_api, base) = serve_api(&env);
    let scraped = scrape_metrics(&base);
    let mut served: BTreeSet<String> = BTreeSet::new();
    for key in scraped["samples"].as_object().unwrap().keys() {
        served.insert(key.split('{').next().unwrap().to_string());
    }
    for family in scraped["families"].as_object().unwrap().keys() {
        served.insert(family.clone());
    }
    let root = env!("CARGO_MANIFEST_DIR");
    for file in [
        "deploy/prometheus/flow-archiver-rules.yaml",
        "deploy/grafana/flow-archiver-dashboard.json",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let named = metric_names(&text);
        assert!(!named.is_empty(), "{file} names no metric");
        let missing: Vec<&String> = named.iter().filter(|n| !served.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "{file} names metrics that are not served: {missing:?}\nserved: {served:?}"
        );
    }
    // The dashboard is valid JSON with panels.
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{root}/deploy/grafana/flow-archiver-dashboard.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert!(dash["panels"].as_array().unwrap().len() >= 6);
}
