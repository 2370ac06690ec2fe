//! SIGHUP reloads what can change while serving and never stops the server: a renewed
//! TLS certificate is served from the next connection, a broken renewal leaves the
//! current certificate in place, and the log says what was reloaded.

mod common;

use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{self_signed, start_tls, Server};
use rustls_pki_types::CertificateDer;

fn hangup(server: &Server) {
    let status = std::process::Command::new("kill").args(["-HUP", &server.child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

/// True when the server on `port` completes a TLS handshake with a client trusting
/// only `ca`.
fn served_by(port: u16, ca: &CertificateDer<'static>) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while conn.is_handshaking() {
        if conn.complete_io(&mut sock).is_err() {
            return false;
        }
    }
    true
}

/// Waits (bounded) until `stderr` of `server` holds `needle` `times` times.
fn wait_for_log(server: &Server, needle: &str, times: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = server.stderr();
        if log.matches(needle).count() >= times || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sighup_serves_a_renewed_certificate_and_keeps_the_old_one_when_the_renewal_is_broken() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut server, _, first) = start_tls(tmp.path());
    assert!(served_by(server.port, &first));

    // Renewal: new files in place, then SIGHUP (what certbot's deploy hook does).
    let (_, _, renewed) = self_signed(tmp.path());
    assert!(!served_by(server.port, &renewed), "not before the reload");
    hangup(&server);
    let log = wait_for_log(&server, "SIGHUP: settings reloaded", 1);
    assert!(log.contains("tls certificate and key"), "the log says what was reloaded:\n{log}");
    assert!(served_by(server.port, &renewed), "the renewed certificate from the next connection on");
    assert!(!served_by(server.port, &first));

    // A half-written renewal: the certificate served so far stays.
    std::fs::write(tmp.path().join("cert.pem"), "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    hangup(&server);
    let log = wait_for_log(&server, "TLS files not reloaded", 1);
    assert!(log.contains("TLS files not reloaded"), "{log}");
    assert!(served_by(server.port, &renewed));

    // Never a stop: the process is alive and still answers after both signals.
    assert!(server.child.try_wait().unwrap().is_none(), "SIGHUP must not end the server");
    assert_eq!(common::https(server.port, &renewed, "GET", "/healthz", &[], b"").status, 200);
    server.kill9();
}

#[test]
fn sighup_reloads_the_log_filter_from_the_config_file_and_names_what_needs_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("onetrip.toml");
    std::fs::write(&config, "log = \"warn\"\n").unwrap();
    let server = Server::start_in(&tmp.path().join("data"), &["--config", config.to_str().unwrap()]).unwrap();
    std::fs::write(&config, "log = \"info\"\ntoken_ttl_secs = 300\n").unwrap();
    hangup(&server);
    let log = wait_for_log(&server, "SIGHUP: settings reloaded", 1);
    // The line itself is INFO/WARN: it shows because the filter it announces is on.
    assert!(log.contains("reloaded=log"), "{log}");
    assert!(log.contains("needs_restart=token_ttl_secs"), "{log}");
    // A config file that no longer loads changes nothing and stops nothing.
    std::fs::write(&config, "log = \"info\"\nno_such_setting = 1\n").unwrap();
    hangup(&server);
    let log = wait_for_log(&server, "the settings do not load", 1);
    assert!(log.contains("the settings do not load; nothing was changed"), "{log}");
    assert_eq!(server.get("/healthz").status, 200);
}
