//! TLS listener: handshakes work over HTTPS, and bearer tokens (no PoP) are accepted
//! only there.

mod common;

use common::*;
use onetrip_protocol::handshake::ClientRequest;
use onetrip_protocol::Outcome;

#[test]
fn bearer_tokens_work_on_tls_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert_path, key_path, ca) = self_signed(tmp.path());
    let dir = tmp.path().join("data");
    let server =
        Server::start_in(&dir, &["--tls-cert", cert_path.to_str().unwrap(), "--tls-key", key_path.to_str().unwrap()])
            .unwrap();
    let (key, _) = create_key(&dir, &["--name", "tls", "--audience", "app"]);
    let (resource, _) = create_key(&dir, &["--name", "app-server", "--audience", "app", "--scope", "introspect"]);

    let doc =
        onetrip_protocol::ServerKeyDocument::parse(&https(server.port, &ca, "GET", "/v1/server-key", &[], b"").body)
            .unwrap();
    doc.check_pin(&server.fingerprint).unwrap();
    let token_over_tls = |key, request: &ClientRequest| {
        let client =
            onetrip_protocol::ClientHandshake::new(onetrip_protocol::DefaultBackend::default(), key, &doc, now())
                .unwrap();
        let mut req = [0u8; onetrip_protocol::REQUEST_LEN];
        let pending = client.start(request, now(), &mut rand_core::OsRng, &mut req).unwrap();
        let resp = https(server.port, &ca, "POST", "/v1/auth", &[], &req);
        let Outcome::Granted(grant) = pending.finish(&resp.body).unwrap() else { panic!("no token over TLS") };
        format!("Bearer {}", &*grant.token.to_base64())
    };
    let app_token = token_over_tls(&key, &ClientRequest::default());
    let own = ClientRequest { audience: "onetrip", scopes: "introspect", second_factor: None };
    let resource_token = token_over_tls(&resource, &own);

    let r = https(server.port, &ca, "GET", "/v1/whoami", &[("authorization", &resource_token)], b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["pop_verified"], false);
    let intro = serde_json::json!({ "token": app_token.trim_start_matches("Bearer ") }).to_string();
    let r = https(server.port, &ca, "POST", "/v1/introspect", &[("authorization", &resource_token)], intro.as_bytes());
    assert_eq!((r.json()["active"].as_bool(), r.json()["audience"].as_str()), (Some(true), Some("app")));
    // The app's own token is not a credential for the server's API.
    let r = https(server.port, &ca, "POST", "/v1/introspect", &[("authorization", &app_token)], intro.as_bytes());
    assert_eq!(r.status, 401);
    // Plain HTTP to a TLS port does not get an answer it could leak a token into.
    let plain = std::panic::catch_unwind(|| http(server.port, "GET", "/healthz", &[], b""));
    assert!(plain.is_err() || plain.unwrap().status != 200);
}
