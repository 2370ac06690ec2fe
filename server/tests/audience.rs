//! Audience confusion, as an attacker who runs a resource server would try it: the
//! audience key `onetrip audience-key db` prints must not open, mint or introspect
//! anything on the server's own API, and scopes reach only the audience they are for.

mod common;

use common::*;
use onetrip_protocol::api_key::KeyId;
use onetrip_protocol::handshake::ClientRequest;
use onetrip_protocol::token::{TOKEN_ID_LEN, TOKEN_KEY_ID_LEN};
use onetrip_protocol::{Claims, DefaultBackend, Outcome, Secret, TokenGrant, TokenVerifier};

/// The `<key_id>:<key>` lines that `onetrip audience-key` prints, as a verifier.
fn audience_verifier(server: &Server, audience: &str) -> TokenVerifier {
    let out = server.cli(&["audience-key", audience]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let keys: Vec<([u8; TOKEN_KEY_ID_LEN], Secret<32>)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let (id, key) = line.split_once(':').expect("audience-key prints <key_id>:<key>");
            let id: [u8; TOKEN_KEY_ID_LEN] = hex::decode(id).unwrap().try_into().unwrap();
            let key: [u8; 32] = hex::decode(key).unwrap().try_into().unwrap();
            (id, Secret::new(key))
        })
        .collect();
    TokenVerifier::new(DefaultBackend::default(), audience, &keys).unwrap()
}

/// A token the holder of `verifier`'s key makes up for `victim`, with every server
/// scope and the second-factor flag; the session key is the forger's.
fn forge(verifier: &TokenVerifier, audience: &str, victim: &str) -> TokenGrant {
    let session_key = Secret::new([0x5a; 32]);
    let victim = KeyId::from_hex(victim).unwrap();
    let claims = Claims::new(
        [7; TOKEN_ID_LEN],
        victim,
        now(),
        now() + 900,
        true,
        audience,
        "otp introspect",
        session_key.clone(),
    )
    .unwrap();
    let token = verifier.seal(&claims, &mut rand_core::OsRng).unwrap();
    TokenGrant { token, session_key, expires_at: now() + 900, server_time: now() }
}

/// Every route that takes a token, with a body that would do something if accepted.
fn token_routes(verification: &str) -> Vec<(&'static str, String, serde_json::Value)> {
    vec![
        ("GET", "/v1/whoami".into(), serde_json::Value::Null),
        ("POST", "/v1/introspect".into(), serde_json::json!({ "token": "x" })),
        ("POST", "/v1/otp/verifications".into(), serde_json::json!({ "to": "a@example.com", "channel": "console" })),
        ("GET", format!("/v1/otp/verifications/{verification}"), serde_json::Value::Null),
        ("POST", format!("/v1/otp/verifications/{verification}/check"), serde_json::json!({ "code": "123456" })),
        ("POST", format!("/v1/otp/verifications/{verification}/resend"), serde_json::Value::Null),
        ("POST", format!("/v1/otp/verifications/{verification}/cancel"), serde_json::Value::Null),
        ("POST", "/v1/otp/totp".into(), serde_json::json!({ "account": "victim-user", "replace": true })),
    ]
}

fn call(server: &Server, grant: &TokenGrant, method: &str, path: &str, body: &serde_json::Value) -> HttpResponse {
    let body = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
    signed(server.port, grant, method, path, &body)
}

#[test]
fn a_token_minted_with_an_audience_key_is_refused_on_every_v1_route() {
    let server = Server::start(&["--otp-console-codes"]);
    let (victim, victim_id) = server.create_key(&["--name", "victim", "--scope", "otp"]);
    let (_db_client, _) = server.create_key(&["--name", "db-client", "--scope", "db:read", "--audience", "db"]);
    // The victim's real token works, so every refusal below is the forgery's.
    let genuine = own_grant(&server, &victim, "otp");
    let created = call(&server, &genuine, "POST", "/v1/otp/verifications", &token_routes("")[2].2);
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    let verification = created.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(call(&server, &genuine, "GET", "/v1/whoami", &serde_json::Value::Null).status, 200);

    // The db resource server's key, as printed for it, and the server's own audience
    // name under that key: neither gets through.
    let db = audience_verifier(&server, "db");
    let db_key_as_onetrip = {
        let out = server.cli(&["audience-key", "db"]);
        let line = String::from_utf8(out.stdout).unwrap();
        let (id, key) = line.lines().next().unwrap().split_once(':').unwrap();
        let id: [u8; TOKEN_KEY_ID_LEN] = hex::decode(id).unwrap().try_into().unwrap();
        let key: [u8; 32] = hex::decode(key).unwrap().try_into().unwrap();
        TokenVerifier::new(DefaultBackend::default(), "onetrip", &[(id, Secret::new(key))]).unwrap()
    };
    let forgeries = [forge(&db, "db", &victim_id), forge(&db_key_as_onetrip, "onetrip", &victim_id)];
    for forged in &forgeries {
        for (method, path, body) in token_routes(&verification) {
            let r = call(&server, forged, method, &path, &body);
            assert_eq!(r.status, 401, "{method} {path} accepted a forged token: {}", String::from_utf8_lossy(&r.body));
            assert_eq!(r.json()["code"], "token_invalid", "{method} {path}");
        }
    }
    // The server's own audience key is never printed.
    let out = server.cli(&["audience-key", "onetrip"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("own audience"), "{}", String::from_utf8_lossy(&out.stderr));
    // The victim's verification is untouched, and the audit blames no one for it.
    let v = call(&server, &genuine, "GET", &format!("/v1/otp/verifications/{verification}"), &serde_json::Value::Null);
    assert_eq!((v.json()["status"].as_str(), v.json()["attempts_left"].as_u64()), (Some("pending"), Some(5)));
    let audit: Vec<serde_json::Value> = serde_json::from_slice(&server.cli(&["audit", "--json"]).stdout).unwrap();
    assert!(!audit.iter().any(|e| e["event"].as_str().is_some_and(|ev| ev.starts_with("otp.totp"))));
}

#[test]
fn scopes_reach_only_the_audience_they_are_for() {
    let server = Server::start(&[]);
    let (key, _) = server.create_key(&[
        "--name",
        "svc",
        "--audience",
        "db",
        "--audience",
        "cache",
        "--scope",
        "db:read",
        "--scope",
        "otp",
        "--scope",
        "admin@cache",
    ]);
    let grant =
        |audience, scopes| match server.handshake(&key, &ClientRequest { audience, scopes, second_factor: None }) {
            Outcome::Granted(g) => Some(*g),
            Outcome::ScopeDenied => None,
            other => panic!("unexpected {other:?}"),
        };
    // The database never gets the OTP scope, asked for or not.
    let db = grant("db", "").unwrap();
    let opened = audience_verifier(&server, "db").verify(db.token.as_bytes(), now()).unwrap();
    assert_eq!(opened.scopes(), "db:read");
    assert!(grant("db", "otp").is_none());
    assert!(grant("db", "admin").is_none(), "admin is the cache's scope");
    // `admin@cache` goes to the cache alone, as `admin`.
    let cache = grant("cache", "").unwrap();
    assert_eq!(
        audience_verifier(&server, "cache").verify(cache.token.as_bytes(), now()).unwrap().scopes(),
        "db:read admin"
    );
    // A qualified scope must name an audience of the key.
    let out = server.cli(&["keys", "create", "--name", "bad", "--audience", "db", "--scope", "admin@billing"]);
    assert!(!out.status.success());
    // The server's own audience carries only server scopes.
    let own = grant("onetrip", "").unwrap();
    let r = signed(server.port, &own, "GET", "/v1/whoami", b"");
    assert_eq!(r.json()["scope"], "otp");
    assert!(grant("onetrip", "db:read").is_none());
    // And it may not be listed as a resource audience.
    let out = server.cli(&["keys", "create", "--name", "bad", "--audience", "onetrip"]);
    assert!(!out.status.success());
}

#[test]
fn introspection_answers_only_the_callers_own_audience() {
    let server = Server::start(&[]);
    let (client, _) = server.create_key(&["--name", "app", "--audience", "db", "--scope", "db:read"]);
    let (db_server, _) = server.create_key(&["--name", "db-server", "--audience", "db", "--scope", "introspect"]);
    let (cache_server, _) =
        server.create_key(&["--name", "cache-server", "--audience", "cache", "--scope", "introspect"]);
    let (no_scope, _) = server.create_key(&["--name", "plain", "--audience", "db"]);
    let db_token = match server.handshake(&client, &ClientRequest::default()) {
        Outcome::Granted(g) => *g,
        other => panic!("{other:?}"),
    };
    let body = serde_json::json!({ "token": &*db_token.token.to_base64() });
    let proof = onetrip_protocol::PopProof::sign(
        &db_token.session_key,
        db_token.token.binding(),
        "GET",
        "/rows",
        b"",
        now(),
        &mut rand_core::OsRng,
    )
    .unwrap();
    let mut body = body;
    body["pop"] = proof.to_header().into();
    body["method"] = "GET".into();
    body["path"] = "/rows".into();
    let ask = |caller: &TokenGrant| signed(server.port, caller, "POST", "/v1/introspect", body.to_string().as_bytes());

    let r = ask(&own_grant(&server, &db_server, "introspect"));
    assert_eq!((r.status, r.json()["active"].as_bool()), (200, Some(true)), "{}", String::from_utf8_lossy(&r.body));
    let r = ask(&own_grant(&server, &cache_server, "introspect"));
    assert_eq!(r.json(), serde_json::json!({ "active": false }), "another audience learns nothing");
    let r = ask(&own_grant(&server, &no_scope, ""));
    assert_eq!((r.status, r.json()["code"].as_str()), (403, Some("scope_required")));
    let r = server.post("/v1/introspect", &[], body.to_string().as_bytes());
    assert_eq!(r.status, 401, "a sniffed introspection body alone answers nothing");
}

#[test]
fn a_revoked_token_is_refused_listed_for_resource_servers_and_stays_revoked_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut server = Server::start_in(&dir, &[]).unwrap();
    let (key, _) = server.create_key(&["--name", "svc", "--scope", "otp"]);
    let (rs, _) = server.create_key(&["--name", "db-server", "--audience", "db", "--scope", "introspect"]);
    let grant = own_grant(&server, &key, "otp");
    let other = own_grant(&server, &key, "otp");
    let me = signed(server.port, &grant, "GET", "/v1/whoami", b"");
    assert_eq!(me.status, 200);
    let token_id = me.json()["token_id"].as_str().unwrap().to_owned();

    let out = server.cli(&["tokens", "revoke", &token_id, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(signed(server.port, &grant, "GET", "/v1/whoami", b"").status, 401, "refused at once");
    assert_eq!(signed(server.port, &other, "GET", "/v1/whoami", b"").status, 200, "only that token");
    let list = |server: &Server| {
        let caller = own_grant(server, &rs, "introspect");
        let r = signed(server.port, &caller, "GET", "/v1/revocations", b"");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["token_id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(list(&server), std::slice::from_ref(&token_id));
    // A revoked API key of the caller's audience is listed too (its tokens may be out).
    let (db_app, db_app_id) = server.create_key(&["--name", "db-app", "--audience", "db"]);
    drop(db_app);
    assert!(server.cli(&["keys", "revoke", &db_app_id]).status.success());
    let caller = own_grant(&server, &rs, "introspect");
    let r = signed(server.port, &caller, "GET", "/v1/revocations", b"").json();
    let keys: Vec<&str> = r["keys"].as_array().unwrap().iter().map(|k| k["key_id"].as_str().unwrap()).collect();
    assert_eq!(keys, [db_app_id.as_str()], "{r}");
    // The list is for resource servers: another scope is refused.
    let plain = signed(server.port, &other, "GET", "/v1/revocations", b"");
    assert_eq!((plain.status, plain.json()["code"].as_str()), (403, Some("scope_required")));
    // Bad ids are refused clearly.
    let out = server.cli(&["tokens", "revoke", "not-hex"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("32 hex characters"));

    server.kill9();
    let server = Server::start_in(&dir, &[]).unwrap();
    assert_eq!(signed(server.port, &grant, "GET", "/v1/whoami", b"").status, 401, "still revoked after kill -9");
    assert_eq!(list(&server), [token_id]);
    let audit: Vec<serde_json::Value> = serde_json::from_slice(&server.cli(&["audit", "--json"]).stdout).unwrap();
    assert!(audit.iter().any(|e| e["event"] == "token.revoked"));
}

#[test]
fn token_key_rotation_keeps_tokens_working_for_the_overlap_and_an_emergency_rotation_ends_them() {
    let server = Server::start(&[]);
    let (key, _) = server.create_key(&["--name", "svc", "--scope", "otp"]);
    let (db_client, _) = server.create_key(&["--name", "app", "--audience", "db"]);
    let old = own_grant(&server, &key, "");
    let out = server.cli(&["token-key", "rotate", "--overlap-secs", "3600", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rotated: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rotated["key_ids"].as_array().unwrap().len(), 2);
    // Tokens already out keep working; new ones are sealed with the new key.
    assert_eq!(signed(server.port, &old, "GET", "/v1/whoami", b"").status, 200);
    let new = own_grant(&server, &key, "");
    assert_ne!(new.token.key_id(), old.token.key_id());
    assert_eq!(hex::encode(new.token.key_id()), rotated["new_key_id"].as_str().unwrap());
    // Resource servers get both audience keys during the overlap, and verify both.
    let db = audience_verifier(&server, "db");
    let db_token = match server.handshake(&db_client, &ClientRequest::default()) {
        Outcome::Granted(g) => g,
        other => panic!("{other:?}"),
    };
    assert!(db.verify(db_token.token.as_bytes(), now()).is_ok());
    let lines = String::from_utf8(server.cli(&["audience-key", "db"]).stdout).unwrap();
    assert_eq!(lines.lines().count(), 2, "{lines}");

    // An emergency rotation (a leaked master key) ends every older token at once.
    let out = server.cli(&["token-key", "rotate", "--overlap-secs", "0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for grant in [&old, &new] {
        assert_eq!(signed(server.port, grant, "GET", "/v1/whoami", b"").status, 401);
    }
    assert_eq!(signed(server.port, &own_grant(&server, &key, ""), "GET", "/v1/whoami", b"").status, 200);
    let audit: Vec<serde_json::Value> = serde_json::from_slice(&server.cli(&["audit", "--json"]).stdout).unwrap();
    assert_eq!(audit.iter().filter(|e| e["event"] == "token_key.rotated").count(), 2);
}
