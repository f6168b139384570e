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

/// The Argo Events wiring agrees with the archiver configuration shipped beside it:
/// the config passes `config check`, the sensors wrap the Workflow under the key the
/// config's `input.mapping.root` names, and they publish where the archiver reads.
#[test]
fn argo_wiring_matches_its_archiver_config() {
    let root = env!("CARGO_MANIFEST_DIR");
    let config_path = format!("{root}/deploy/argo/flow-archiver.toml");
    let env = Env::new("");
    env.ok(&["--config", &config_path, "config", "check"]);
    let config: toml::Value =
        toml::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    assert_eq!(config["input"]["format"].as_str(), Some("argo"));
    let wrap = config["input"]["mapping"]["root"].as_str().unwrap();
    let topics: Vec<&str> = config["kafka"]["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();

    let yaml = |name: &str| -> Vec<Value> {
        let docs = python("yaml_to_json.py", &[&format!("{root}/deploy/argo/{name}")]);
        serde_json::from_str(&docs).unwrap()
    };
    let sources = yaml("eventsource.yaml");
    let source = sources.iter().find(|d| d["kind"] == "EventSource").unwrap();
    let watched = &source["spec"]["resource"]["workflows"];
    assert_eq!(watched["group"], "argoproj.io");
    assert_eq!(watched["resource"], "workflows");
    for (file, kind) in [("sensor-kafka.yaml", "kafka"), ("sensor-nats.yaml", "nats")] {
        let sensor = &yaml(file)[0];
        assert_eq!(sensor["kind"], "Sensor");
        let dep = &sensor["spec"]["dependencies"][0];
        assert_eq!(dep["eventSourceName"], source["metadata"]["name"]);
        assert!(watched.is_object() && dep["eventName"] == "workflows");
        let trigger = &sensor["spec"]["triggers"][0]["template"][kind];
        let payload = &trigger["payload"][0];
        assert_eq!(
            payload["src"]["dataKey"], "body",
            "{file}: the whole object"
        );
        assert_eq!(
            format!("/{}", payload["dest"].as_str().unwrap()),
            wrap,
            "{file}: wrapped where input.mapping.root looks"
        );
        match kind {
            "kafka" => assert!(topics.contains(&trigger["topic"].as_str().unwrap())),
            _ => assert!(trigger["subject"]
                .as_str()
                .unwrap()
                .starts_with("flows.events.")),
        }
    }
}

/// `docker-compose.yml` is valid for both profiles (Debian's docker-compose parses it
/// without a daemon), every service starts after what it needs, and every archiver
/// service's mounted configuration passes `config check` with the environment the
/// compose file gives it.
#[test]
fn compose_file_is_valid_and_its_archiver_configs_check() {
    let root = env!("CARGO_MANIFEST_DIR");
    let env = Env::new("");
    let out = std::process::Command::new("docker-compose")
        .args(["--profile", "kafka", "--profile", "nats", "config"])
        .current_dir(root)
        .env_remove("FLOW_ARCHIVER_ADMIN_TOKEN")
        .output()
        .expect("docker-compose (Debian package) is installed by scripts/test.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = env.write("compose.yaml", &out.stdout);
    let docs: Vec<Value> =
        serde_json::from_str(&python("yaml_to_json.py", &[rendered.to_str().unwrap()])).unwrap();
    let services = docs[0]["services"].as_object().unwrap();
    for name in [
        "kafka",
        "kafka-topics",
        "nats",
        "minio",
        "minio-init",
        "otel-collector",
        "jaeger",
        "prometheus",
        "grafana",
        "archiver-kafka",
        "archiver-nats",
        "api-kafka",
        "api-nats",
    ] {
        assert!(services.contains_key(name), "service {name}");
    }
    // Ordered start: brokers healthy, topics and bucket created, before the archiver.
    let deps = |s: &str| services[s]["depends_on"].clone();
    assert_eq!(
        deps("archiver-kafka")["kafka-topics"]["condition"],
        "service_completed_successfully"
    );
    assert_eq!(
        deps("archiver-kafka")["minio-init"]["condition"],
        "service_completed_successfully"
    );
    assert_eq!(
        deps("archiver-nats")["nats"]["condition"],
        "service_healthy"
    );
    assert_eq!(deps("minio-init")["minio"]["condition"], "service_healthy");
    assert_eq!(
        deps("kafka-topics")["kafka"]["condition"],
        "service_healthy"
    );

    let mut checked = 0;
    for (name, service) in services {
        if service["image"] != "flow-archiver:dev" {
            continue;
        }
        assert_eq!(service["read_only"], true, "{name}");
        assert_eq!(service["cap_drop"][0], "ALL", "{name}");
        let command: Vec<&str> = service["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        let config_in_container =
            command[command.iter().position(|c| *c == "--config").unwrap() + 1];
        // Long syntax ({source, target}) or short ("source:target[:mode]").
        let mounts: Vec<(String, String)> = service["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| match v.as_str() {
                Some(short) => {
                    let mut parts = short.split(':');
                    let source = parts.next().unwrap_or_default().to_string();
                    (source, parts.next().unwrap_or_default().to_string())
                }
                None => (
                    v["source"].as_str().unwrap_or_default().to_string(),
                    v["target"].as_str().unwrap_or_default().to_string(),
                ),
            })
            .collect();
        let host_config = mounts
            .iter()
            .find(|(_, target)| target == config_in_container)
            .map(|(source, _)| source.clone())
            .unwrap_or_else(|| panic!("{name}: {config_in_container} is not mounted"));
        let mut check = env.command(&["--config", &host_config, "config", "check"]);
        for (k, v) in service["environment"].as_object().unwrap() {
            if !k.starts_with("OTEL_") {
                check.env(k, v.as_str().unwrap());
            }
        }
        let out = check.output().unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            describe(&["config", "check"], env.path(), &out)
        );
        checked += 1;
    }
    assert_eq!(checked, 4, "two archivers and two API services");
}
