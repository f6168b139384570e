//! The deploy files name only metrics that exist: every `flow_archiver_*` name in the
//! Prometheus rules and the Grafana dashboard is scraped from a real `serve` process.

use std::collections::BTreeSet;

use crate::support::*;
use serde_json::Value;

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

/// `docker-compose.yml` is valid for every profile (Debian's docker-compose parses it
/// without a daemon), every service starts after what it needs, and every archiver
/// service's mounted configuration passes `config check` with the environment the
/// compose file gives it.
#[test]
fn compose_file_is_valid_and_its_archiver_configs_check() {
    let root = env!("CARGO_MANIFEST_DIR");
    let env = Env::new("");
    let render = |token: Option<&str>| {
        let mut c = std::process::Command::new("docker-compose");
        c.args([
            "--profile",
            "kafka",
            "--profile",
            "nats",
            "--profile",
            "scale",
            "config",
        ])
        .current_dir(root)
        .env_remove("FLOW_ARCHIVER_ADMIN_TOKEN");
        if let Some(token) = token {
            c.env("FLOW_ARCHIVER_ADMIN_TOKEN", token);
        }
        c.output()
            .expect("docker-compose (Debian package) is installed by scripts/test.sh")
    };
    // No admin token ships with the stack: without one, compose says how to make it.
    let refused = render(None);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "rendered without a token");
    assert!(
        said.contains("FLOW_ARCHIVER_ADMIN_TOKEN") && said.contains("openssl rand"),
        "{said}"
    );
    let out = render(Some("generated-token-0123456789abcdef"));
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
        "postgres",
        "archiver-scale",
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
        deps("archiver-scale")["postgres"]["condition"],
        "service_healthy"
    );
    assert_eq!(services["archiver-scale"]["deploy"]["replicas"], 3);
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
    assert_eq!(
        checked, 5,
        "two single-node archivers, the replicated one and two API services"
    );
}

/// Every manifest under `deploy/k8s/` validates offline against the Kubernetes schemas
/// (PyPI `kubernetes-validate`, strict: unknown fields fail), and a manifest with an
/// invalid field is caught; the Prometheus Operator objects match the rules file and
/// the Service; no Secret is committed and credentials come from Secret references; the
/// pod is hardened; each overlay's configuration passes `config check`. With `kubectl`
/// present the rendered overlays are validated too.
#[test]
fn kubernetes_manifests_validate_offline() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s");
    let (kustomizations, manifests): (Vec<_>, Vec<_>) = files_under(&root)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .partition(|p| p.file_name().unwrap() == "kustomization.yaml");
    assert!(manifests.len() >= 5, "{manifests:?}");
    let validate = |files: &[std::path::PathBuf]| {
        std::process::Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict", "-k", "1.30.0"])
            .args(files)
            .output()
            .expect("kubernetes-validate (PyPI) is installed by scripts/test.sh")
    };
    let out = validate(&manifests);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // An invalid field fails: the validator is not waving things through.
    let env = Env::new("");
    let statefulset = std::fs::read_to_string(root.join("base/statefulset.yaml")).unwrap();
    let broken = env.write(
        "broken.yaml",
        statefulset
            .replace(
                "readOnlyRootFilesystem: true",
                "readOnlyRootFilesytem: true",
            )
            .as_bytes(),
    );
    let out = validate(&[broken]);
    assert!(!out.status.success(), "a misspelt field must fail");
    assert!(String::from_utf8_lossy(&out.stdout).contains("readOnlyRootFilesytem"));

    let docs = |p: &std::path::Path| -> Vec<Value> {
        serde_json::from_str(&python("yaml_to_json.py", &[p.to_str().unwrap()])).unwrap()
    };
    let all: Vec<Value> = manifests.iter().flat_map(|p| docs(p)).collect();
    let kind = |k: &str| all.iter().find(|d| d["kind"] == k).unwrap().clone();
    assert!(
        all.iter().all(|d| d["kind"] != "Secret"),
        "no Secret is committed"
    );

    // Hardened pods (the StatefulSet's and the CronJob's), credentials from Secrets only.
    let sts = kind("StatefulSet");
    let cron = kind("CronJob");
    assert_eq!(
        cron["spec"]["concurrencyPolicy"], "Forbid",
        "one writer per store"
    );
    let command = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
        [0]
    .as_str()
    .unwrap()
    .to_string();
    for step in ["run --until-idle", "sweep", "purge"] {
        assert!(command.contains(step), "the CronJob runs {step}: {command}");
    }
    // The postgres overlay's Deployment: interchangeable replicas, no volume of its own.
    let deployment = kind("Deployment");
    assert_eq!(deployment["spec"]["replicas"], 3);
    let replica = &deployment["spec"]["template"]["spec"];
    assert!(
        replica["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "DATABASE_URL" && v["valueFrom"]["secretKeyRef"].is_object()),
        "the database URL (with its password) comes from a Secret"
    );
    assert_eq!(
        deployment["spec"]["selector"], sts["spec"]["selector"],
        "the Service selects the replicas as it does the StatefulSet's pod"
    );
    for pod in [
        &sts["spec"]["template"]["spec"],
        &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        replica,
    ] {
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        let container = &pod["containers"][0];
        let sc = &container["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"][0], "ALL");
        for var in container["env"].as_array().unwrap() {
            let name = var["name"].as_str().unwrap();
            if ["KEY", "SECRET", "TOKEN", "PASSWORD", "USER"]
                .iter()
                .any(|s| name.contains(s))
            {
                assert!(
                    var["valueFrom"]["secretKeyRef"].is_object(),
                    "{name} from a Secret"
                );
                assert!(var.get("value").is_none(), "{name} has no literal value");
            }
        }
    }
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"], "state",
        "the state store is on a PVC"
    );

    // Prometheus Operator objects: the rules file's groups; the Service's port.
    let rules = docs(&root.join("../prometheus/flow-archiver-rules.yaml"));
    assert_eq!(kind("PrometheusRule")["spec"], rules[0]);
    let monitor = kind("ServiceMonitor");
    let service = all
        .iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "flow-archiver")
        .unwrap();
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        let labelled = service["metadata"]["labels"][k] == *v
            || (k == "app.kubernetes.io/name" && v == "flow-archiver");
        assert!(labelled, "the ServiceMonitor selects the Service ({k})");
    }
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        service["spec"]["ports"][0]["name"]
    );

    // Every kustomization names files that exist; every config it ships checks.
    for k in &kustomizations {
        let dir = k.parent().unwrap();
        let doc = &docs(k)[0];
        for r in doc["resources"].as_array().into_iter().flatten() {
            assert!(
                dir.join(r.as_str().unwrap()).exists(),
                "{}: {r}",
                k.display()
            );
        }
        for generator in doc["configMapGenerator"].as_array().into_iter().flatten() {
            for f in generator["files"].as_array().into_iter().flatten() {
                let file = dir.join(f.as_str().unwrap());
                assert!(file.exists(), "{}", file.display());
                let out = env
                    .command(&["--config", file.to_str().unwrap(), "config", "check"])
                    .env(
                        "FLOW_ARCHIVER__API__ADMIN_TOKEN",
                        "a-secret-from-kubernetes",
                    )
                    .env(
                        "DATABASE_URL",
                        "postgres://archiver:from-a-secret@db:5432/flows",
                    )
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    describe(&["config", "check"], env.path(), &out)
                );
            }
        }
    }

    if std::process::Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        for overlay in ["kafka", "nats", "postgres"] {
            let out = std::process::Command::new("kubectl")
                .args([
                    "kustomize",
                    root.join("overlays").join(overlay).to_str().unwrap(),
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let rendered = env.write(&format!("{}.yaml", overlay.replace('/', "-")), &out.stdout);
            let out = validate(&[rendered]);
            assert!(
                out.status.success(),
                "{overlay}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
}
