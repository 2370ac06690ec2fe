//! The monitoring files in `deploy/` against the real server: every metric the
//! Grafana dashboard and the Prometheus alerts use is one `/metrics` exports, the
//! state gauges say what the server holds, and the alert rules pass `promtool check
//! rules` and their unit tests (`deploy/prometheus-alerts.test.yml`).

mod common;
mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{now, Server};

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(file)
}

/// The metric names a text mentions (`onetrip_…`, `process_…`).
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
        .filter(|t| t.starts_with("onetrip_") || t.starts_with("process_"))
        .map(str::to_owned)
        .collect()
}

/// The families `/metrics` declares, with a histogram's series names.
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
        names.insert(name.to_owned());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

#[test]
fn every_metric_the_dashboard_and_alerts_use_is_exported_and_the_gauges_are_true() {
    let server = Server::start(&["--replay-cache-capacity", "12345"]);
    let text = String::from_utf8(server.get("/metrics").body).expect("utf-8");
    let have = exported(&text);
    for file in ["grafana-dashboard.json", "prometheus-alerts.yml", "prometheus-alerts.test.yml"] {
        let used = metric_names(&std::fs::read_to_string(deploy(file)).expect("deploy file"));
        assert!(!used.is_empty(), "{file} names no metric");
        let missing: Vec<_> = used.difference(&have).collect();
        assert!(missing.is_empty(), "{file} uses metrics /metrics does not export: {missing:?}");
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana-dashboard.json")).unwrap()).expect("JSON");
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() >= 10));

    assert_eq!(server.metric("onetrip_replay_cache_capacity"), 12345);
    let expiry = server.metric("onetrip_handshake_key_expiry_timestamp_seconds");
    assert!(expiry > now() + 86_400 && expiry < now() + 400 * 86_400, "the newest handshake key expires at {expiry}");
    assert_eq!(server.metric("onetrip_store_up"), 1);
    // Start-up read the store through the ports: those calls are counted, none failed.
    assert!(server.metric("onetrip_store_operations_total{op=\"server_secrets\"}") >= 1);
    assert_eq!(server.metric("onetrip_store_errors_total{op=\"server_secrets\"}"), 0);
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let check =
        std::process::Command::new("promtool").arg("check").arg("rules").arg(deploy("prometheus-alerts.yml")).output();
    let Ok(check) = check else {
        support::missing_tool("promtool", "apt-get install -y prometheus");
        return;
    };
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let test = std::process::Command::new("promtool")
        .arg("test")
        .arg("rules")
        .arg(deploy("prometheus-alerts.test.yml"))
        .output()
        .expect("promtool runs");
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
}
