//! The packaging in `deploy/` is checked against the real program: the example config
//! loads as it is, every setting it documents is real and spelled right (and none the
//! config file accepts is missing), and the systemd unit passes `systemd-analyze verify`.

mod common;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::BIN;
use onetrip_server::config::{FileConfig, OtpFileConfig, SmtpFileConfig, WebhookFileConfig};
use serde::de::DeserializeOwned;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(file)
}

/// `onetrip serve --config FILE --check` with no ONETRIP_* setting of the caller's
/// environment, only `env`: the file alone decides.
fn check_config(file: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--check", "--config"]).arg(file);
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("ONETRIP_") || n == "PGPASSWORD") {
        cmd.env_remove(name);
    }
    cmd.envs(env.iter().copied()).output().expect("run onetrip")
}

/// The example with every `#setting = value` and `#[table]` line made live. Prose
/// comments start with `# ` and stay comments.
fn uncommented(example: &str) -> String {
    example
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase() || c == '[') => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The field names `T` accepts, as serde's `deny_unknown_fields` lists them when it
/// refuses an unknown one: the list comes from the config code, not from this test.
fn accepted_fields<T: DeserializeOwned + std::fmt::Debug>() -> Vec<String> {
    let e = toml::from_str::<T>("zz_not_a_setting = 1\n").expect_err("an unknown field is refused").to_string();
    // "expected `a`", "expected `a` or `b`", "expected one of `a`, `b`, …".
    let list = e.split("zz_not_a_setting`, expected").nth(1).unwrap_or_else(|| panic!("no field list in {e:?}"));
    let fields: Vec<String> = list.split('`').skip(1).step_by(2).map(str::to_owned).collect();
    assert!(!fields.is_empty(), "no fields in {e:?}");
    fields
}

fn assert_ok(out: &Output, what: &str) {
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what}: {:?}\nstdout: {stdout}\nstderr: {stderr}", out.status);
    assert!(stdout.contains("settings OK"), "{what}: {stdout}");
}

#[test]
fn the_example_config_loads_as_it_is() {
    assert_ok(&check_config(&deploy("onetrip.example.toml"), &[]), "the example as shipped");
}

#[test]
fn serve_check_refuses_a_config_with_a_misspelled_setting() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typo.toml");
    std::fs::write(&file, "token_ttl_sec = 900\n").unwrap();
    let out = check_config(&file, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("token_ttl_sec"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("settings OK"));
}

#[test]
fn every_setting_of_the_example_config_is_real_and_none_is_missing() {
    let example = std::fs::read_to_string(deploy("onetrip.example.toml")).unwrap();
    let live = uncommented(&example);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("uncommented.toml");
    std::fs::write(&file, &live).unwrap();
    // The secrets the uncommented SMTP user and webhook need, as the environment gives them.
    let secrets =
        [("ONETRIP_SMTP_PASSWORD", "smtp-password-for-test"), ("ONETRIP_WEBHOOK_SECRET", "0123456789abcdef0123")];
    assert_ok(&check_config(&file, &secrets), "the example with every setting uncommented");

    let table: toml::Table = toml::from_str(&live).unwrap();
    let keys = |t: &toml::Table| t.keys().cloned().collect::<Vec<_>>();
    let otp = table["otp"].as_table().expect("[otp]");
    for (section, documented, accepted) in [
        ("top level", keys(&table), accepted_fields::<FileConfig>()),
        ("[otp]", keys(otp), accepted_fields::<OtpFileConfig>()),
        ("[otp.smtp]", keys(otp["smtp"].as_table().expect("[otp.smtp]")), accepted_fields::<SmtpFileConfig>()),
        (
            "[otp.webhook]",
            keys(otp["webhook"].as_table().expect("[otp.webhook]")),
            accepted_fields::<WebhookFileConfig>(),
        ),
    ] {
        let missing: Vec<_> = accepted.iter().filter(|f| !documented.contains(f)).collect();
        assert!(missing.is_empty(), "{section}: the example does not document {missing:?}");
    }
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        return support::missing_tool("systemd-analyze", "apt-get install systemd");
    };
    assert!(version.status.success());
    let unit = std::fs::read_to_string(deploy("onetrip.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/onetrip serve --config /etc/onetrip/onetrip.toml"), "{unit}");
    // verify refuses an ExecStart= binary that does not exist: point it at the one built.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("onetrip.service");
    std::fs::write(&path, unit.replace("/usr/bin/onetrip", BIN)).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().expect("systemd-analyze");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{:?}: {said}", out.status);
    // Unknown or mistyped settings are only warnings (exit 0): none may name our unit.
    let ours: Vec<&str> = said.lines().filter(|l| l.contains("onetrip.service")).collect();
    assert!(ours.is_empty(), "systemd-analyze verify warns about the unit:\n{}", ours.join("\n"));
}

/// `haproxy -c` on the shipped `deploy/haproxy.cfg` and on the harness's generated form
/// of it (the one the HAProxy tests run).
#[test]
fn the_haproxy_config_passes_haproxy_check() {
    if !support::haproxy::available() {
        return;
    }
    let out = Command::new("haproxy").arg("-c").arg("-f").arg(deploy("haproxy.cfg")).output().expect("haproxy -c");
    assert!(
        out.status.success(),
        "haproxy -c: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let backends = ["127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap()];
    let generated =
        support::haproxy::config_for(&backends, "127.0.0.1:3".parse().unwrap(), "retries 0", &dir.path().join("s"));
    assert!(generated.contains("server onetrip2 127.0.0.1:2") && !generated.contains("7421"), "{generated}");
    let file = dir.path().join("haproxy.cfg");
    std::fs::write(&file, generated).unwrap();
    let out = Command::new("haproxy").arg("-c").arg("-f").arg(&file).output().expect("haproxy -c");
    assert!(
        out.status.success(),
        "generated: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The shipped HAProxy config takes a draining replica out before its listener closes:
/// fall x inter plus one check timeout is below the default drain time.
#[test]
fn the_haproxy_health_checks_notice_a_drain_in_time() {
    let cfg = std::fs::read_to_string(deploy("haproxy.cfg")).unwrap();
    // The value after `key` on the (uncommented) line that starts with `prefix`.
    let value = |prefix: &str, key: &str| -> String {
        let line = cfg
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line in haproxy.cfg"));
        let mut words = line.split_whitespace().skip_while(|w| *w != key);
        words.nth(1).unwrap_or_else(|| panic!("`{key}` has no value in `{line}`")).to_owned()
    };
    let ms = |v: String| -> u64 {
        match v.strip_suffix("ms") {
            Some(n) => n.parse().unwrap(),
            None => v.trim_end_matches('s').parse::<u64>().unwrap() * 1000,
        }
    };
    let inter = ms(value("default-server", "inter"));
    let fall = value("default-server", "fall").parse::<u64>().unwrap();
    let check = ms(value("timeout check", "check"));
    let drain_ms = onetrip_server::config::DEFAULT_DRAIN_SECS * 1000;
    assert!(
        fall * inter + check < drain_ms,
        "fall {fall} x inter {inter} ms + check {check} ms vs drain {drain_ms} ms"
    );
    for needed in [
        "send-proxy-v2",
        "check-send-proxy",
        "option httpchk GET /healthz",
        "http-check expect status 200",
        "balance roundrobin",
    ] {
        assert!(cfg.contains(needed), "haproxy.cfg lacks {needed}");
    }
}
