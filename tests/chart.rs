//! The Helm chart: the static files parse; values.schema.json embeds the schema
//! `fanfare schema` generates and refuses typos; the chart renders with Helm v4's own
//! engine and lints clean (helm-python-sdk: no `helm` binary is needed); what it
//! renders (ConfigMap, pod, ServiceAccount) is checked, the configuration with
//! fanfare's own validation; every metric the dashboard and the alerts use exists.

use std::path::{Path, PathBuf};

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/fanfare")
}

fn yaml(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn static_files_parse() {
    let c = yaml(&chart().join("Chart.yaml"));
    assert_eq!(c["name"], "fanfare");
    assert_eq!(c["apiVersion"], "v2");
    assert!(
        c.get("dependencies").is_none(),
        "no dependency: helm install works on the directory as it is"
    );
    yaml(&chart().join("values.yaml"));
    json(&chart().join("values.schema.json"));
    let d = json(&chart().join("dashboards/fanfare.json"));
    assert!(d["panels"].as_array().unwrap().len() >= 8);
}

#[test]
fn values_validate_against_the_schema() {
    let schema = json(&chart().join("values.schema.json"));
    let values = yaml(&chart().join("values.yaml"));
    let validator = jsonschema::validator_for(&schema).expect("a valid schema");
    let errors: Vec<String> = validator
        .iter_errors(&values)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // And the schema catches mistakes.
    let mut bad = values.clone();
    bad["fanfare"]["port"] = serde_json::json!(0);
    bad["fanfare"]["config"]["lisen"] = serde_json::json!("x");
    bad["fanfare"]["config"]["shutdown"]["grace"] = serde_json::json!("25 seconds");
    assert_eq!(validator.iter_errors(&bad).count(), 3);
    // Typos anywhere in the configuration, as fanfare itself would refuse them.
    for (pointer, key) in [
        ("/fanfare/config/routes/0", "transprots"),
        ("/fanfare/config/log", "levle"),
    ] {
        let mut typo = values.clone();
        let obj = typo.pointer_mut(pointer).unwrap().as_object_mut().unwrap();
        obj.insert(key.into(), serde_json::json!("x"));
        let errors: Vec<String> = validator
            .iter_errors(&typo)
            .map(|e| e.to_string())
            .collect();
        assert_eq!(errors.len(), 1, "{key}: {errors:?}");
        assert!(errors[0].contains(key), "{errors:?}");
    }
    // What Helm adds, and what a pod commonly needs, is allowed.
    let mut extra = values.clone();
    extra["global"] = serde_json::json!({ "imageRegistry": "registry.example" });
    extra["imagePullSecrets"] = serde_json::json!([{ "name": "regcred" }]);
    extra["serviceAccount"] = serde_json::json!({ "create": true, "name": "shop" });
    extra["podAnnotations"] = serde_json::json!({ "a": "b" });
    extra["podLabels"] = serde_json::json!({ "team": "web" });
    let errors: Vec<String> = validator
        .iter_errors(&extra)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn the_chart_schema_embeds_the_schema_fanfare_generates() {
    let schema = json(&chart().join("values.schema.json"));
    let generated = fanfare::config::schema::embeddable();
    assert!(
        schema["properties"]["fanfare"]["properties"]["config"] == generated,
        "values.schema.json is out of date: run `cargo run -- schema --chart charts/fanfare/values.schema.json`"
    );
    // And every example configuration in the repository passes it.
    let validator =
        jsonschema::validator_for(&schema["properties"]["fanfare"]["properties"]["config"])
            .unwrap();
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config")).unwrap() {
        let path = entry.unwrap().path();
        let config = yaml(&path);
        let errors: Vec<String> = validator
            .iter_errors(&config)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
    }
}

#[test]
fn the_configmap_config_passes_check_config() {
    let values = yaml(&chart().join("values.yaml"));
    let r = render(&serde_json::json!({}));
    let cm = &docs(&r, "configmap.yaml")[0];
    let rendered = cm["data"]["fanfare.yaml"].as_str().unwrap();
    let parsed =
        fanfare::config::Config::parse(rendered).unwrap_or_else(|e| panic!("{e:?}\n{rendered}"));
    // The addresses follow the ports the chart exposes: they cannot disagree.
    assert_eq!(
        parsed.listen.0.port() as u64,
        values["fanfare"]["port"].as_u64().unwrap()
    );
    assert_eq!(
        parsed.admin.listen.0.port() as u64,
        values["fanfare"]["adminPort"].as_u64().unwrap()
    );
    assert_eq!(
        parsed.upstream.port as u64,
        values["app"]["port"].as_u64().unwrap()
    );
    // NATS is the release's own "<release>-nats", not a fixed name.
    assert_eq!(parsed.nats.unwrap().url, "nats://shop-nats:4222");
    // Kubernetes' grace covers preStop and fanfare's own grace.
    let pre_stop = values["fanfare"]["preStopSeconds"].as_u64().unwrap();
    assert!(parsed.shutdown.drain_window() < parsed.shutdown.grace.0);
    assert!(
        pre_stop + parsed.shutdown.grace.0.as_secs() + 5 <= 60,
        "fits a usual rollout"
    );
}

#[test]
fn dashboards_and_alerts_use_real_metrics() {
    let metrics = fanfare::metrics::Metrics::new(prometheus::Registry::new()).unwrap();
    let exposed = String::from_utf8(metrics.render()).unwrap();
    let mut used = String::new();
    used.push_str(&std::fs::read_to_string(chart().join("dashboards/fanfare.json")).unwrap());
    used.push_str(&std::fs::read_to_string(chart().join("templates/prometheusrule.yaml")).unwrap());
    let mut names: Vec<&str> = used
        .match_indices("fanfare_")
        .map(|(i, _)| {
            let rest = &used[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        let base = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            exposed.contains(&format!("# TYPE {base} ")),
            "{name} is used by the dashboard or alerts but fanfare does not export it"
        );
    }
}

// === Rendered by Helm itself ===

/// Renders the chart with Helm v4's engine (helm-python-sdk, which `scripts/test`
/// installs into target/test-venv) and returns each manifest by template path.
fn render(values: &serde_json::Value) -> std::collections::BTreeMap<String, String> {
    let python = std::env::var("FANFARE_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "FANFARE_TEST_PYTHON is not set: run the suite with scripts/test, which installs \
             helm-python-sdk into target/test-venv, or point it at a python that has it"
        )
    });
    let script = "import json, sys, helm_python as h\n\
                  c = h.Chart.load(sys.argv[1])\n\
                  print(json.dumps(c.render(json.loads(sys.stdin.read()), name='shop', namespace='web')))\n";
    let mut child = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(chart())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python}: {e}"));
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(values.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "helm render failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The documents of a rendered template (empty when it rendered nothing).
fn docs(
    rendered: &std::collections::BTreeMap<String, String>,
    template: &str,
) -> Vec<serde_json::Value> {
    let text = &rendered[&format!("fanfare/templates/{template}")];
    text.split("\n---")
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .map(|d| serde_saphyr::from_str(d).unwrap_or_else(|e| panic!("{template}: {e}\n{d}")))
        .collect()
}

#[test]
fn rendered_the_admin_port_stays_off_the_app_service() {
    let r = render(&serde_json::json!({}));
    let service = &docs(&r, "service.yaml")[0];
    let ports: Vec<&str> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(ports, ["http"], "only the public port on the app's Service");
    let metrics = &docs(&r, "metrics-service.yaml")[0];
    assert_eq!(metrics["metadata"]["name"], "shop-fanfare-metrics");
    assert_eq!(metrics["spec"]["ports"][0]["name"], "admin");
    assert!(docs(&r, "networkpolicy.yaml").is_empty(), "off by default");
    // The rendered configuration is valid, and without a token /publish is off.
    let cm = &docs(&r, "configmap.yaml")[0];
    let text = cm["data"]["fanfare.yaml"].as_str().unwrap();
    let config = fanfare::config::Config::parse(text).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    assert!(config.admin.publish_token.is_none());
    assert!(!config.admin.listen.0.ip().is_loopback());
}

#[test]
fn rendered_publish_token_and_network_policy() {
    let r = render(&serde_json::json!({
        "fanfare": { "publishToken": { "secretName": "publish", "key": "token" } },
        "networkPolicy": { "enabled": true },
        "serviceMonitor": { "enabled": true },
    }));
    let deployment = &docs(&r, "deployment.yaml")[0];
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    let fanfare = containers.iter().find(|c| c["name"] == "fanfare").unwrap();
    let env = fanfare["env"].as_array().unwrap();
    let token = env
        .iter()
        .find(|e| e["name"] == "FANFARE_PUBLISH_TOKEN")
        .expect("the token comes from the Secret");
    assert_eq!(token["valueFrom"]["secretKeyRef"]["name"], "publish");
    let cm = &docs(&r, "configmap.yaml")[0];
    let text = cm["data"]["fanfare.yaml"].as_str().unwrap();
    assert!(
        text.contains("publish_token: ${FANFARE_PUBLISH_TOKEN}"),
        "{text}"
    );
    let policy = &docs(&r, "networkpolicy.yaml")[0];
    let ingress = policy["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress[0]["ports"][0]["port"], "http");
    assert!(ingress[0].get("from").is_none(), "the public port is open");
    assert_eq!(ingress[1]["ports"][0]["port"], "admin");
    assert!(
        !ingress[1]["from"].as_array().unwrap().is_empty(),
        "admin only from listed peers"
    );
    let monitor = &docs(&r, "servicemonitor.yaml")[0];
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"], "metrics",
        "the ServiceMonitor scrapes the metrics Service, not the app's"
    );
}

#[test]
fn rendered_pods_carry_the_apps_prestop_and_the_pod_settings() {
    let r = render(&serde_json::json!({
        "global": { "imageRegistry": "registry.example" },
        "imagePullSecrets": [{ "name": "regcred" }],
        "serviceAccount": { "create": true },
        "podAnnotations": { "example.com/owner": "web" },
        "podLabels": { "team": "web" },
    }));
    let pod = &docs(&r, "deployment.yaml")[0]["spec"]["template"];
    let app = pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "app")
        .unwrap();
    // preStopSeconds (5) + grace (25): the app outlives fanfare's drain.
    assert_eq!(app["lifecycle"]["preStop"]["sleep"]["seconds"], 30);
    assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 35);
    assert_eq!(pod["spec"]["imagePullSecrets"][0]["name"], "regcred");
    assert_eq!(pod["spec"]["serviceAccountName"], "shop-fanfare");
    assert_eq!(pod["metadata"]["labels"]["team"], "web");
    assert_eq!(pod["metadata"]["annotations"]["example.com/owner"], "web");
    let sa = &docs(&r, "serviceaccount.yaml")[0];
    assert_eq!(sa["metadata"]["name"], "shop-fanfare");
}

#[test]
fn rendered_addresses_that_disagree_with_the_ports_are_refused() {
    let python = std::env::var("FANFARE_TEST_PYTHON").expect("FANFARE_TEST_PYTHON");
    let script = "import json, sys, helm_python as h\n\
                  c = h.Chart.load(sys.argv[1])\n\
                  try:\n    c.render(json.loads(sys.argv[2]), name='shop', namespace='web')\n    print('rendered')\n\
                  except Exception as e:\n    print(e)\n";
    for (values, needle) in [
        (
            serde_json::json!({ "fanfare": { "config": { "listen": "0.0.0.0:9999" } } }),
            "disagrees with fanfare.port",
        ),
        (
            serde_json::json!({ "fanfare": { "config": { "admin": { "listen": "0.0.0.0:1" } } } }),
            "disagrees with fanfare.adminPort",
        ),
        (
            serde_json::json!({ "nats": { "embedded": true } }),
            "needs replicaCount: 1",
        ),
    ] {
        let out = std::process::Command::new(&python)
            .args(["-c", script])
            .arg(chart())
            .arg(values.to_string())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(needle), "{values}: {text}");
    }
    // Embedded NATS with one replica renders no nats key: the embedded broker.
    let r = render(&serde_json::json!({ "nats": { "embedded": true }, "replicaCount": 1 }));
    let cm = &docs(&r, "configmap.yaml")[0];
    let config =
        fanfare::config::Config::parse(cm["data"]["fanfare.yaml"].as_str().unwrap()).unwrap();
    assert!(config.nats.is_none());
}

#[test]
fn the_chart_lints_clean_and_has_no_dependency_to_build() {
    let python = std::env::var("FANFARE_TEST_PYTHON").expect("FANFARE_TEST_PYTHON");
    let out = std::process::Command::new(&python)
        .args(["-c", "import json, sys, helm_python as h\nprint(json.dumps(h.lint(sys.argv[1], strict=True)))"])
        .arg(chart())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
}
