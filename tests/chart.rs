//! The Helm chart, checked without `helm` (it cannot be installed here): the static
//! files parse, values.yaml validates against values.schema.json, the configuration the
//! ConfigMap renders passes fanfare's own validation, and every metric the dashboard
//! and the alerts use exists.

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
    assert_eq!(c["dependencies"][0]["condition"], "nats.enabled");
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
}

#[test]
fn the_configmap_config_passes_check_config() {
    let template = std::fs::read_to_string(chart().join("templates/_helpers.tpl")).unwrap();
    assert!(
        template.contains("toYaml .Values.fanfare.config"),
        "the ConfigMap renders fanfare.config as is"
    );
    let values = yaml(&chart().join("values.yaml"));
    let config = &values["fanfare"]["config"];
    let rendered = serde_saphyr::to_string(config).unwrap();
    let parsed =
        fanfare::config::Config::parse(&rendered).unwrap_or_else(|e| panic!("{e:?}\n{rendered}"));
    // The ports the chart exposes are the ones fanfare listens on.
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
