//! Test vectors: `protocol/vectors/v1.json` is regenerated from its inputs on every
//! backend and compared field by field. Intermediate values are recomputed here
//! from the formulas in PROTOCOL.md (not through the library's handshake code), so
//! the vectors check the spec and the code against each other.
//!
//! After an intentional format change: `ONETRIP_WRITE_VECTORS=1 cargo test -p
//! onetrip-protocol --test vectors` rewrites the file (then review the diff).

mod common;

use onetrip_protocol::api_key::{ApiKey, KeyId};
use onetrip_protocol::backend::TAG_LEN;
use onetrip_protocol::handshake::server::Reply;
use onetrip_protocol::handshake::*;
use onetrip_protocol::kdf;
use onetrip_protocol::pop::PopProof;
use onetrip_protocol::server_key::{IdentityKey, ServerKeyDocument};
use onetrip_protocol::token::Claims;
use onetrip_protocol::{ClientHandshake, CryptoBackend, Outcome, Responder, Secret, TokenKeyring};
use serde_json::{json, Value};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/v1.json");
const NOW: u64 = 1_790_000_000;
const DOCUMENT_LIFETIME: u64 = onetrip_protocol::server_key::DEFAULT_DOCUMENT_LIFETIME_SECS;

/// Input bytes named in the file: BLAKE3-derive_key("onetrip test vector input", name).
fn input<const N: usize>(name: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let mut h = blake3::Hasher::new_derive_key("onetrip test vector input");
    h.update(name.as_bytes());
    h.finalize_xof().fill(&mut out);
    out
}

fn hx(b: &[u8]) -> Value {
    Value::String(hex::encode(b))
}

struct Case {
    name: &'static str,
    key: &'static str,
    audience: &'static str,
    scopes: &'static str,
    code: Option<&'static str>,
    timestamp: u64,
}

const CASES: &[Case] = &[
    Case { name: "ok", key: "registered", audience: "db.example", scopes: "db:read", code: None, timestamp: NOW },
    Case {
        name: "auth_failed_wrong_secret",
        key: "wrong_secret",
        audience: "",
        scopes: "",
        code: None,
        timestamp: NOW,
    },
    Case { name: "auth_failed_unknown_key", key: "unknown", audience: "", scopes: "", code: None, timestamp: NOW },
    Case {
        name: "second_factor_required",
        key: "registered",
        audience: "",
        scopes: "admin",
        code: None,
        timestamp: NOW,
    },
    Case {
        name: "second_factor_failed",
        key: "registered",
        audience: "",
        scopes: "admin",
        code: Some("000000"),
        timestamp: NOW,
    },
    Case {
        name: "ok_with_second_factor",
        key: "registered",
        audience: "db.example",
        scopes: "admin",
        code: Some("492817"),
        timestamp: NOW,
    },
    Case { name: "clock_skew", key: "registered", audience: "", scopes: "", code: None, timestamp: NOW - 3600 },
    Case { name: "rate_limited", key: "registered", audience: "", scopes: "", code: None, timestamp: NOW },
    Case { name: "scope_denied", key: "registered", audience: "", scopes: "root", code: None, timestamp: NOW },
    Case { name: "server_error", key: "registered", audience: "", scopes: "", code: None, timestamp: NOW },
];

/// Every intermediate of a request, recomputed from PROTOCOL.md §4.3 alone.
struct SpecRequest {
    e_pub: [u8; 32],
    dh_es: Secret<32>,
    k1: Secret<32>,
    dh_ss: Secret<32>,
    k2: Secret<32>,
    payload: [u8; PAYLOAD_LEN],
    request: [u8; REQUEST_LEN],
}

#[allow(clippy::too_many_arguments)]
fn spec_request<B: CryptoBackend>(
    b: &B,
    key: &ApiKey,
    server_key_id: &[u8; 8],
    server_public: &[u8; 32],
    case: &Case,
    ephemeral: &Secret<32>,
    nonce: &[u8; 16],
    operation: &[u8; 16],
) -> SpecRequest {
    let e = b.static_key(ephemeral).unwrap();
    let e_pub = b.public_key(&e);
    let dh_es = b.x25519(&e, server_public).unwrap();
    let mut expect = [0u8; REQUEST_LEN];
    expect[0] = 1;
    expect[1] = MSG_AUTH_REQUEST;
    expect[2..10].copy_from_slice(server_key_id);
    expect[10..42].copy_from_slice(&e_pub);
    let k1 = kdf::derive(kdf::LABEL_KEY_ID_KEY, &[server_public, dh_es.expose(), &expect[..42]]);
    let c = b.static_key(&key.client_static_private()).unwrap();
    let c_pub = b.public_key(&c);
    let dh_ss = b.x25519(&c, server_public).unwrap();
    {
        let (head, rest) = expect.split_at_mut(42);
        let (sealed, rest) = rest.split_at_mut(16);
        sealed.copy_from_slice(key.id().as_bytes());
        let tag: &mut [u8; TAG_LEN] = (&mut rest[..16]).try_into().unwrap();
        b.seal(&b.aead_key(&k1), &[0; 12], head, sealed, tag);
    }
    let k2 = kdf::derive(kdf::LABEL_PAYLOAD_KEY, &[k1.expose(), dh_ss.expose(), &c_pub, &expect[..74]]);
    let mut payload = [0u8; PAYLOAD_LEN];
    payload[0..8].copy_from_slice(&case.timestamp.to_be_bytes());
    payload[8..24].copy_from_slice(nonce);
    payload[25] = case.audience.len() as u8;
    payload[26..26 + case.audience.len()].copy_from_slice(case.audience.as_bytes());
    payload[90] = case.scopes.len() as u8;
    payload[91..91 + case.scopes.len()].copy_from_slice(case.scopes.as_bytes());
    if let Some(code) = case.code {
        payload[24] = FLAG_SECOND_FACTOR;
        payload[219..235].copy_from_slice(operation);
        payload[235] = code.len() as u8;
        payload[236..236 + code.len()].copy_from_slice(code.as_bytes());
    }
    {
        let (head, rest) = expect.split_at_mut(74);
        let (sealed, tag) = rest.split_at_mut(PAYLOAD_LEN);
        sealed.copy_from_slice(&payload);
        b.seal(&b.aead_key(&k2), &[0; 12], head, sealed, tag.try_into().unwrap());
    }
    SpecRequest { e_pub, dh_es, k1, dh_ss, k2, payload, request: expect }
}

/// The dummy static-static value and verifier of PROTOCOL.md §6.2 step 4.
fn spec_dummy(dummy_secret: &Secret<32>, server_key_id: &[u8; 8], id: &[u8; 16]) -> (Value, Value) {
    let dh = kdf::derive(kdf::LABEL_DUMMY_STATIC, &[dummy_secret.expose(), server_key_id, id]);
    let verifier: [u8; 32] = kdf::derive_public(kdf::LABEL_DUMMY_STATIC, &[dh.expose()]);
    (hx(dh.expose()), hx(&verifier))
}

/// A document "signed" by the Ed25519 identity point with `R` = identity and `S` = 0:
/// `[S]B = R + [k]A` holds for every message, so a verifier that does not reject
/// small-order `A` and `R` (PROTOCOL.md §1.1) accepts it.
fn small_order_document(entry: &onetrip_protocol::ServerKeyEntry) -> (Vec<u8>, [u8; 32], [u8; 64]) {
    let mut identity_point = [0u8; 32];
    identity_point[0] = 1;
    // Sign with any key, then swap in the forged identity and signature: the header
    // and entries are exactly what `sign` lays out.
    let throwaway = IdentityKey::from_seed(&Secret::new(input::<32>("small order throwaway")));
    let mut bytes =
        ServerKeyDocument::new(NOW, NOW + 3600, throwaway.public(), &[*entry]).unwrap().sign(&throwaway).unwrap();
    bytes[24..56].copy_from_slice(&identity_point);
    let mut signature = [0u8; 64];
    signature[0] = 1; // R = the identity point; S = 0
    let n = bytes.len();
    bytes[n - 64..].copy_from_slice(&signature);
    (bytes, identity_point, signature)
}

fn generate<B: CryptoBackend>() -> Value {
    let b = B::default();
    let identity_seed = Secret::new(input::<32>("identity seed"));
    let server_private = Secret::new(input::<32>("server static private"));
    let dummy_secret = Secret::new(input::<32>("dummy secret"));
    let server_key_id: [u8; 8] = input("server key id");
    let token_master = Secret::new(input::<32>("token master key"));
    let token_key_id: [u8; 4] = input("token key id");
    let operation: [u8; 16] = input("operation id");

    let identity = IdentityKey::from_seed(&identity_seed);
    let mut responder = Responder::new(b.clone(), IdentityKey::from_seed(&identity_seed), dummy_secret.clone());
    let entry = responder.add_key(server_key_id, &server_private, NOW - 86_400, NOW + 86_400).unwrap();
    let document = responder.signed_document(NOW, DOCUMENT_LIFETIME).unwrap();
    let doc = ServerKeyDocument::parse(&document).unwrap();
    assert_eq!(doc.expires_at(), NOW + DOCUMENT_LIFETIME, "min(now + lifetime, the current key's not_after)");
    let keyring = TokenKeyring::new(token_key_id, token_master.clone());
    let tokens = keyring.for_audience(b.clone(), "db.example").unwrap();

    let registered = ApiKey::from_parts(KeyId::from_bytes(input("api key id")), Secret::new(input("api key secret")));
    let wrong = ApiKey::from_parts(registered.id(), Secret::new(input("wrong secret")));
    let unknown = ApiKey::from_parts(KeyId::from_bytes(input("unknown key id")), Secret::new(input("unknown secret")));
    let verifier = registered.verifier(&b).unwrap();

    let mut cases = Vec::new();
    for case in CASES {
        let key = match case.key {
            "registered" => &registered,
            "wrong_secret" => &wrong,
            _ => &unknown,
        };
        let ephemeral = Secret::new(input::<32>(&format!("{} ephemeral", case.name)));
        let nonce: [u8; 16] = input(&format!("{} request nonce", case.name));
        let second_factor = case.code.map(|code| SecondFactor { operation, code });
        let req = ClientRequest { audience: case.audience, scopes: case.scopes, second_factor };
        let client = ClientHandshake::new(b.clone(), key, &doc, NOW).unwrap();
        let mut request = [0u8; REQUEST_LEN];
        let pending = client.start_with_ephemeral(&req, case.timestamp, &ephemeral, &nonce, &mut request).unwrap();

        // Independent recomputation per PROTOCOL.md §4.3.
        let spec = spec_request(&b, key, &server_key_id, &entry.public, case, &ephemeral, &nonce, &operation);
        let SpecRequest { e_pub, dh_es, k1, dh_ss, k2, payload, request: expect } = spec;
        assert_eq!(hex::encode(expect), hex::encode(request), "{}: library request differs from the spec", case.name);
        let response_key = kdf::derive(kdf::LABEL_RESPONSE_KEY, &[k2.expose(), &request]);
        let failure_key = kdf::derive(kdf::LABEL_FAILURE_RESPONSE_KEY, &[k1.expose(), &request]);

        // Server side.
        let session_key = Secret::new(input::<32>(&format!("{} session key", case.name)));
        let token_nonce: [u8; 12] = input(&format!("{} token nonce", case.name));
        let response_nonce: [u8; 12] = input(&format!("{} response nonce", case.name));
        let claims = Claims::new(
            input(&format!("{} token id", case.name)),
            key.id(),
            NOW,
            NOW + 900,
            case.code.is_some(),
            "db.example",
            case.scopes,
            session_key.clone(),
        )
        .unwrap();
        let token = tokens.seal_with_nonce(&claims, &token_nonce).unwrap();
        let reply = match case.name {
            "ok" | "ok_with_second_factor" => {
                Reply::Granted { token: &token, session_key: &session_key, expires_at: NOW + 900 }
            }
            "second_factor_required" => {
                Reply::SecondFactorRequired { operation, channel: Channel::Email, destination: "o***@example.com" }
            }
            "second_factor_failed" => Reply::SecondFactorFailed { attempts_left: 4 },
            "clock_skew" => Reply::ClockSkew,
            "rate_limited" => Reply::RateLimited { retry_after_secs: 30 },
            "scope_denied" => Reply::ScopeDenied,
            "server_error" => Reply::ServerError,
            _ => Reply::AuthFailed,
        };
        let opened = responder.open_request(&request, NOW).unwrap();
        let ss = match opened.key_id() {
            Some(id) if id == registered.id() => responder.static_static(&server_key_id, &verifier).unwrap(),
            id => responder.dummy_static_static(&server_key_id, id.as_ref()),
        };
        let mut response = [0u8; RESPONSE_LEN];
        let mut replay_id = Value::Null;
        match opened.authenticate(&ss) {
            Ok(auth) => {
                replay_id = hx(&auth.replay_id());
                auth.respond_with_nonce(&reply, NOW, &response_nonce, &mut response)
            }
            Err(rejected) => rejected.respond_with_nonce(NOW, &response_nonce, &mut response),
        }
        let outcome = pending.finish(&response).unwrap();
        assert_eq!(
            outcome.status().as_str(),
            if case.key == "registered" { reply.status().as_str() } else { "auth_failed" }
        );
        if let Outcome::Granted(g) = &outcome {
            assert_eq!(g.token, token);
        }
        let mut v = json!({
            "name": case.name,
            "api_key": case.key,
            "ephemeral_private": hx(ephemeral.expose()),
            "request_nonce": hx(&nonce),
            "timestamp": case.timestamp,
            "audience": case.audience,
            "scopes": case.scopes,
            "second_factor_code": case.code,
            "ephemeral_public": hx(&e_pub),
            "dh_es": hx(dh_es.expose()),
            "k1": hx(k1.expose()),
            "dh_ss": hx(dh_ss.expose()),
            "k2": hx(k2.expose()),
            "payload": hx(&payload),
            "request": hx(&request),
            "response_key": hx(response_key.expose()),
            "failure_response_key": hx(failure_key.expose()),
            "replay_id": replay_id,
            "status": outcome.status().as_str(),
            "response_nonce": hx(&response_nonce),
            "response": hx(&response),
        });
        if matches!(reply, Reply::Granted { .. }) && case.key == "registered" {
            v["session_key"] = hx(session_key.expose());
            v["token_nonce"] = hx(&token_nonce);
            v["token_id"] = hx(&claims.token_id);
            v["token"] = hx(token.as_bytes());
        }
        cases.push(v);
    }

    // Server key changed: a request to a retired key id (the public key is S, as the
    // client still had it cached; only the id is unknown to the server).
    let retired = *b"retired0";
    let stale = ClientHandshake::with_server_key(
        b.clone(),
        &registered,
        onetrip_protocol::ServerKeyEntry { key_id: retired, ..entry },
        identity.public(),
    )
    .unwrap();
    let skc =
        Case { name: "server_key_changed", key: "registered", audience: "", scopes: "", code: None, timestamp: NOW };
    let ephemeral = Secret::new(input::<32>("server_key_changed ephemeral"));
    let nonce: [u8; 16] = input("server_key_changed request nonce");
    let mut request = [0u8; REQUEST_LEN];
    let pending = stale.start_with_ephemeral(&ClientRequest::default(), NOW, &ephemeral, &nonce, &mut request).unwrap();
    let spec = spec_request(&b, &registered, &retired, &entry.public, &skc, &ephemeral, &nonce, &operation);
    assert_eq!(hex::encode(spec.request), hex::encode(request), "server_key_changed: request differs from the spec");
    let mut response = [0u8; RESPONSE_LEN];
    responder.server_key_changed(&request, NOW, &mut response).unwrap();
    assert!(matches!(pending.finish(&response).unwrap(), Outcome::ServerKeyChanged { .. }));
    // PROTOCOL.md §5.3, recomputed: the signed message and its Ed25519 signature.
    let mut expect = [0u8; RESPONSE_LEN];
    expect[0] = 1;
    expect[1] = MSG_SERVER_KEY_CHANGED;
    expect[2..10].copy_from_slice(&server_key_id);
    expect[10..18].copy_from_slice(&NOW.to_be_bytes());
    let signed_message = [kdf::SIGN_CONTEXT_KEY_CHANGED, &request[..42], &expect[..18]].concat();
    let signature = {
        use ed25519_dalek::Signer;
        ed25519_dalek::SigningKey::from_bytes(identity_seed.expose()).sign(&signed_message).to_bytes()
    };
    expect[18..82].copy_from_slice(&signature);
    assert_eq!(hex::encode(expect), hex::encode(response), "server_key_changed: answer differs from the spec");
    cases.push(json!({
        "name": "server_key_changed",
        "api_key": "registered",
        "server_key_id_used": hx(&retired),
        "ephemeral_private": hx(ephemeral.expose()),
        "request_nonce": hx(&nonce),
        "timestamp": NOW,
        "audience": skc.audience,
        "scopes": skc.scopes,
        "second_factor_code": skc.code,
        "ephemeral_public": hx(&spec.e_pub),
        "dh_es": hx(spec.dh_es.expose()),
        "k1": hx(spec.k1.expose()),
        "dh_ss": hx(spec.dh_ss.expose()),
        "k2": hx(spec.k2.expose()),
        "payload": hx(&spec.payload),
        "request": hx(&request),
        "current_key_id": hx(&server_key_id),
        "server_time": NOW,
        "signed_message": hx(&signed_message),
        "signature": hx(&signature),
        "status": "server_key_changed",
        "response": hx(&response),
    }));
    let (small_order_doc, small_order_identity, small_order_signature) = small_order_document(&entry);
    let (dummy_ss_unknown, dummy_verifier_unknown) = spec_dummy(&dummy_secret, &server_key_id, unknown.id().as_bytes());
    let (dummy_ss_unreadable, dummy_verifier_unreadable) = spec_dummy(&dummy_secret, &server_key_id, &[0; 16]);

    // Proof of possession for the "ok" token.
    let pop_session = Secret::new(input::<32>("ok session key"));
    let ok_token = &cases[0]["token"];
    let pop_binding: [u8; 25] = hex::decode(ok_token.as_str().unwrap()).unwrap()[..25].try_into().unwrap();
    let pop_nonce: [u8; 12] = input("pop nonce");
    let mut pop_rng = FixedRng(pop_nonce.to_vec());
    let proof =
        PopProof::sign(&pop_session, &pop_binding, "POST", "/v1/query", b"select 1", NOW, &mut pop_rng).unwrap();

    json!({
        "comment": "onetrip protocol v1 test vectors; see PROTOCOL.md section 12. All byte strings are hex. Inputs are BLAKE3-derive_key(\"onetrip test vector input\", name) truncated.",
        "now": NOW,
        "inputs": {
            "identity_seed": hx(identity_seed.expose()),
            "server_static_private": hx(server_private.expose()),
            "server_key_id": hx(&server_key_id),
            "server_key_not_before": NOW - 86_400,
            "server_key_not_after": NOW + 86_400,
            "document_lifetime": DOCUMENT_LIFETIME,
            "dummy_secret": hx(dummy_secret.expose()),
            "token_master_key": hx(token_master.expose()),
            "token_key_id": hx(&token_key_id),
            "token_audience": "db.example",
            "operation_id": hx(&operation),
            "api_key_id": hx(registered.id().as_bytes()),
            "api_key_secret": hx(registered.secret().expose()),
            "wrong_secret": hx(wrong.secret().expose()),
            "unknown_key_id": hx(unknown.id().as_bytes()),
            "unknown_key_secret": hx(unknown.secret().expose()),
        },
        "derived": {
            "api_key_string": registered.encode().as_str(),
            "client_static_private": hx(registered.client_static_private().expose()),
            "verifier": hx(verifier.as_bytes()),
            "identity_public": hx(&identity.public()),
            "fingerprint": identity.fingerprint().to_string(),
            "server_static_public": hx(&entry.public),
            "server_key_document": hx(&document),
            "token_audience_key": hx(keyring.audience_secrets("db.example").expect("audience")[0].1.expose()),
            // PROTOCOL.md §7.1, from the spec's formula (the tokens tests tie it to the code).
            "token_server_key": hx(&{
                let mut h = blake3::Hasher::new_derive_key("onetrip v1 token server key");
                h.update(token_master.expose());
                h.update(&token_key_id);
                *h.finalize().as_bytes()
            }),
            "audience_tag": hx(&onetrip_protocol::token::audience_tag("db.example")),
            "server_key_document_issued_at": doc.issued_at(),
            "server_key_document_expires_at": doc.expires_at(),
            "dummy_static_static_for_unknown_key": dummy_ss_unknown,
            "dummy_verifier_for_unknown_key": dummy_verifier_unknown,
            "dummy_static_static_for_unreadable_key_id": dummy_ss_unreadable,
            "dummy_verifier_for_unreadable_key_id": dummy_verifier_unreadable,
        },
        "ed25519_small_order": {
            "comment": "MUST be refused (Signature): identity A and R are the identity point (small order), S = 0. A verifier without the small-order checks of PROTOCOL.md section 1.1 accepts it for any message.",
            "identity_public": hx(&small_order_identity),
            "signature": hx(&small_order_signature),
            "server_key_document": hx(&small_order_doc),
            "expected_error": "Signature",
        },
        "handshakes": cases,
        "pop": {
            "session_key": hx(pop_session.expose()),
            "token_binding": hx(&pop_binding),
            "method": "POST",
            "path": "/v1/query",
            "body": hx(b"select 1"),
            "timestamp": NOW,
            "nonce": hx(&pop_nonce),
            "pop_key": hx(kdf::derive(kdf::LABEL_POP_KEY, &[pop_session.expose()]).expose()),
            "proof": hx(proof.as_bytes()),
            "header": proof.to_header(),
        },
    })
}

/// Hands out fixed bytes: lets the vector pin the PoP nonce through the public API.
struct FixedRng(Vec<u8>);
impl rand_core::RngCore for FixedRng {
    fn next_u32(&mut self) -> u32 {
        0
    }
    fn next_u64(&mut self) -> u64 {
        0
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        let n = dest.len().min(self.0.len());
        dest[..n].copy_from_slice(&self.0[..n]);
        self.0.drain(..n);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}
impl rand_core::CryptoRng for FixedRng {}

fn check_against_file<B: CryptoBackend>() {
    let generated = generate::<B>();
    if std::env::var_os("ONETRIP_WRITE_VECTORS").is_some() {
        std::fs::write(VECTORS, serde_json::to_string_pretty(&generated).unwrap() + "\n").unwrap();
    }
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(VECTORS).expect("vectors file")).unwrap();
    assert_eq!(generated, committed, "backend {} disagrees with {VECTORS}", B::default().name());
}

#[test]
fn vectors_match_on_every_backend() {
    for_each_backend!(check_against_file);
}

#[test]
fn vectors_cover_every_sealed_status() {
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(VECTORS).unwrap()).unwrap();
    let seen: Vec<&str> =
        committed["handshakes"].as_array().unwrap().iter().map(|c| c["status"].as_str().unwrap()).collect();
    for s in onetrip_protocol::Status::ALL {
        if s != onetrip_protocol::Status::Malformed {
            assert!(seen.contains(&s.as_str()), "no vector for {}", s.as_str());
        }
    }
}

#[test]
fn protocol_md_worked_example_matches_the_vectors() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../PROTOCOL.md")).unwrap();
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(VECTORS).unwrap()).unwrap();
    let start = doc.find("<!-- vector-example:begin -->").expect("begin marker");
    let end = doc.find("<!-- vector-example:end -->").expect("end marker");
    let mut checked = 0;
    let block = &doc[start..end];
    let code = block.split("```").nth(1).expect("code block in the worked example");
    for line in code.lines() {
        let Some((name, value)) = line.split_once(" = ") else { continue };
        let candidates = [
            &committed["handshakes"][0][name],
            &committed["inputs"][name],
            &committed["derived"][name],
            &committed["pop"][name],
            &committed["pop"][name.trim_start_matches("pop_")],
        ];
        let expected = candidates
            .iter()
            .find(|v| !v.is_null())
            .unwrap_or_else(|| panic!("PROTOCOL.md names `{name}`, which the vectors do not have"));
        let expected = match expected {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert_eq!(value.trim(), expected, "PROTOCOL.md worked example `{name}` is stale");
        checked += 1;
    }
    assert!(checked >= 30, "worked example too short ({checked} values)");
}

#[test]
fn the_small_order_signature_vector_is_refused_though_a_lax_verifier_accepts_it() {
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(VECTORS).unwrap()).unwrap();
    let v = &committed["ed25519_small_order"];
    let unhex = |f: &str| hex::decode(v[f].as_str().unwrap()).unwrap();
    let document = unhex("server_key_document");
    // The reference implementation refuses it (PROTOCOL.md §1.1: small-order A and R).
    assert_eq!(ServerKeyDocument::parse(&document), Err(onetrip_protocol::DocumentError::Signature));
    // The vector is a real trap: plain RFC 8032 verification (cofactorless, no
    // small-order checks) accepts this signature over the document.
    let identity: [u8; 32] = unhex("identity_public").try_into().unwrap();
    let signature: [u8; 64] = unhex("signature").try_into().unwrap();
    let key = ed25519_dalek::VerifyingKey::from_bytes(&identity).unwrap();
    let signed = [onetrip_protocol::kdf::SIGN_CONTEXT_DOCUMENT, &document[..document.len() - 64]].concat();
    let signature = ed25519_dalek::Signature::from_bytes(&signature);
    assert!(ed25519_dalek::Verifier::verify(&key, &signed, &signature).is_ok(), "a lax verifier accepts the forgery");
    assert!(key.verify_strict(&signed, &signature).is_err());
    assert!(key.is_weak(), "the identity is of small order");
}
