//! TLS listener: handshakes work over HTTPS, and bearer tokens (no PoP) are accepted
//! only there.

mod common;

use std::io::Write;
use std::sync::Arc;

use common::*;
use onetrip_protocol::handshake::ClientRequest;
use onetrip_protocol::Outcome;

fn https(
    port: u16,
    ca: &rustls_pki_types::CertificateDer<'static>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    tls.write_all(head.as_bytes()).unwrap();
    tls.write_all(body).unwrap();
    read_response(&mut tls)
}

#[test]
fn bearer_tokens_work_on_tls_only() {
    let tmp = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = tmp.path().join("cert.pem");
    let key_path = tmp.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let ca = cert.cert.der().clone();
    let dir = tmp.path().join("data");
    let server =
        Server::start_in(&dir, &["--tls-cert", cert_path.to_str().unwrap(), "--tls-key", key_path.to_str().unwrap()])
            .unwrap();
    let (key, _) = create_key(&dir, &["--name", "tls"]);

    let doc =
        onetrip_protocol::ServerKeyDocument::parse(&https(server.port, &ca, "GET", "/v1/server-key", &[], b"").body)
            .unwrap();
    doc.check_pin(&server.fingerprint).unwrap();
    let client =
        onetrip_protocol::ClientHandshake::new(onetrip_protocol::DefaultBackend::default(), &key, &doc, now()).unwrap();
    let mut req = [0u8; onetrip_protocol::REQUEST_LEN];
    let pending = client.start(&ClientRequest::default(), now(), &mut rand_core::OsRng, &mut req).unwrap();
    let resp = https(server.port, &ca, "POST", "/v1/auth", &[], &req);
    let Outcome::Granted(grant) = pending.finish(&resp.body).unwrap() else { panic!("no token over TLS") };

    let bearer = format!("Bearer {}", &*grant.token.to_base64());
    let r = https(server.port, &ca, "GET", "/v1/whoami", &[("authorization", &bearer)], b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["pop_verified"], false);
    let intro = serde_json::json!({ "token": &*grant.token.to_base64() }).to_string();
    let r = https(server.port, &ca, "POST", "/v1/introspect", &[], intro.as_bytes());
    assert_eq!(r.json()["active"], true);
    // Plain HTTP to a TLS port does not get an answer it could leak a token into.
    let plain = std::panic::catch_unwind(|| http(server.port, "GET", "/healthz", &[], b""));
    assert!(plain.is_err() || plain.unwrap().status != 200);
}
