//! Database login credentials (PROTOCOL.md §14): round trip, every refusal with its
//! typed error, arbitrary input never panics, and the §14 test vector recomputed from
//! the spec's formula and checked against the library and PROTOCOL.md.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use onetrip_protocol::api_key::KeyId;
use onetrip_protocol::login::{LOGIN_NAME_MAX_LEN, LOGIN_PREFIX, LOGIN_RAW_LEN};
use onetrip_protocol::token::TokenError;
use onetrip_protocol::{
    kdf, login_credential, CryptoBackend, DefaultBackend, LoginError, Secret, Token, TokenKeyring, TokenVerifier,
    LOGIN_CREDENTIAL_MAX_LEN, LOGIN_WINDOW_SECS,
};
use proptest::prelude::*;

const USER: &str = "app_reader";
const DB: Option<&str> = Some("orders");
const NONCE: [u8; 16] = [9; 16];

struct Setup<B: CryptoBackend> {
    fx: Fixture<B>,
    token: Token,
    session_key: Secret<32>,
}

fn setup<B: CryptoBackend>() -> Setup<B> {
    let fx = Fixture::<B>::new(11);
    let mut rng = TestRng::new(12);
    let session_key = Secret::random(&mut rng);
    let token = fx.mint(KeyId::from_bytes([3; 16]), &session_key, &mut rng);
    Setup { fx, token, session_key }
}

impl<B: CryptoBackend> Setup<B> {
    fn credential(&self, user: &str, db: Option<&str>, at: u64) -> String {
        login_credential(&self.token, &self.session_key, user, db, at, &NONCE).unwrap().to_string()
    }
}

fn round_trip<B: CryptoBackend>() {
    let s = setup::<B>();
    let c = s.credential(USER, DB, NOW + 10);
    assert_eq!(c.len(), LOGIN_CREDENTIAL_MAX_LEN);
    assert!(c.starts_with(LOGIN_PREFIX));
    let v = s.fx.tokens.verify_login(&c, USER, DB, NOW + 20).unwrap();
    assert_eq!(v.claims.api_key_id, KeyId::from_bytes([3; 16]));
    assert!(v.claims.session_key().ct_eq(&s.session_key));
    assert_eq!(v.not_after, NOW + 10 + LOGIN_WINDOW_SECS);
    // Same credential, same replay id; another nonce, another id.
    assert_eq!(s.fx.tokens.verify_login(&c, USER, DB, NOW + 20).unwrap().replay_id, v.replay_id);
    let other = login_credential(&s.token, &s.session_key, USER, DB, NOW + 10, &[8; 16]).unwrap();
    assert_ne!(s.fx.tokens.verify_login(&other, USER, DB, NOW + 20).unwrap().replay_id, v.replay_id);
    // Without a database name.
    let c = s.credential(USER, None, NOW);
    assert!(s.fx.tokens.verify_login(&c, USER, None, NOW).is_ok());
}

#[test]
fn a_credential_verifies_for_its_user_and_database_on_every_backend() {
    for_each_backend!(round_trip);
}

#[test]
fn not_after_is_the_token_expiry_when_that_comes_first() {
    let s = setup::<DefaultBackend>();
    // Token expires at NOW + 900; a credential stamped 20 s before that.
    let c = s.credential(USER, DB, NOW + 880);
    assert_eq!(s.fx.tokens.verify_login(&c, USER, DB, NOW + 890).unwrap().not_after, NOW + 900);
}

#[test]
fn another_user_or_database_is_refused_as_a_bad_proof() {
    let s = setup::<DefaultBackend>();
    let c = s.credential(USER, DB, NOW);
    let v = &s.fx.tokens;
    assert_eq!(v.verify_login(&c, "admin", DB, NOW).unwrap_err(), LoginError::BadProof);
    assert_eq!(v.verify_login(&c, USER, Some("billing"), NOW).unwrap_err(), LoginError::BadProof);
    // A database-bound credential is not valid where no database is bound, and back.
    assert_eq!(v.verify_login(&c, USER, None, NOW).unwrap_err(), LoginError::BadProof);
    let unbound = s.credential(USER, None, NOW);
    assert_eq!(v.verify_login(&unbound, USER, Some(""), NOW).unwrap_err(), LoginError::BadProof);
    // Length prefixes keep `ab` + `c` apart from `a` + `bc`.
    let split = s.credential("ab", Some("c"), NOW);
    assert_eq!(v.verify_login(&split, "a", Some("bc"), NOW).unwrap_err(), LoginError::BadProof);
}

#[test]
fn another_audience_is_refused() {
    let s = setup::<DefaultBackend>();
    let c = s.credential(USER, DB, NOW);
    let other = s.fx.keyring.for_audience(DefaultBackend::default(), "other.example").unwrap();
    assert_eq!(other.verify_login(&c, USER, DB, NOW).unwrap_err(), LoginError::WrongAudience);
    // Another deployment (different master key) for the same audience name.
    let foreign =
        TokenKeyring::new(*b"tk01", Secret::new([5; 32])).for_audience(DefaultBackend::default(), AUDIENCE).unwrap();
    assert_eq!(foreign.verify_login(&c, USER, DB, NOW).unwrap_err(), LoginError::Token(TokenError::Invalid));
}

#[test]
fn an_expired_token_stale_or_future_timestamp_is_refused() {
    let s = setup::<DefaultBackend>();
    let v = &s.fx.tokens;
    let c = s.credential(USER, DB, NOW + 900);
    assert_eq!(v.verify_login(&c, USER, DB, NOW + 901).unwrap_err(), LoginError::Expired { expires_at: NOW + 900 });
    let c = s.credential(USER, DB, NOW);
    let late = NOW + LOGIN_WINDOW_SECS + 1;
    assert_eq!(v.verify_login(&c, USER, DB, late).unwrap_err(), LoginError::ClockWindow { timestamp: NOW, now: late });
    assert!(v.verify_login(&c, USER, DB, NOW + LOGIN_WINDOW_SECS).is_ok());
    let future = NOW + LOGIN_WINDOW_SECS + 1;
    let c = s.credential(USER, DB, future);
    assert_eq!(v.verify_login(&c, USER, DB, NOW).unwrap_err(), LoginError::ClockWindow { timestamp: future, now: NOW });
}

#[test]
fn every_altered_byte_is_refused() {
    let s = setup::<DefaultBackend>();
    let c = s.credential(USER, DB, NOW);
    let raw = URL_SAFE_NO_PAD.decode(&c[LOGIN_PREFIX.len()..]).unwrap();
    assert_eq!(raw.len(), LOGIN_RAW_LEN);
    for i in 0..LOGIN_RAW_LEN {
        let mut bad = raw.clone();
        bad[i] ^= 0x01;
        let text = format!("{LOGIN_PREFIX}{}", URL_SAFE_NO_PAD.encode(&bad));
        let err = s.fx.tokens.verify_login(&text, USER, DB, NOW).unwrap_err();
        // The token (bytes 0..320) fails its own checks; the rest fails the MAC.
        let ok = if i < 320 {
            matches!(err, LoginError::Token(_) | LoginError::WrongAudience)
        } else {
            err == LoginError::BadProof
        };
        assert!(ok, "byte {i}: {err:?}");
    }
    // A changed character in the text, including one that changes only the unused
    // low bits of the last character (non-canonical base64).
    let mut last = c.clone().into_bytes();
    let n = last.len() - 1;
    last[n] = if last[n] == b'A' { b'B' } else { b'A' };
    let last = String::from_utf8(last).unwrap();
    assert!(matches!(
        s.fx.tokens.verify_login(&last, USER, DB, NOW).unwrap_err(),
        LoginError::Encoding | LoginError::BadProof
    ));
}

#[test]
fn malformed_text_gets_its_typed_error() {
    let s = setup::<DefaultBackend>();
    let v = &s.fx.tokens;
    let c = s.credential(USER, DB, NOW);
    assert_eq!(v.verify_login(&c[..c.len() - 1], USER, DB, NOW).unwrap_err(), LoginError::Length);
    assert_eq!(v.verify_login(&c[..LOGIN_PREFIX.len()], USER, DB, NOW).unwrap_err(), LoginError::Length);
    assert_eq!(v.verify_login(&format!("{c}A"), USER, DB, NOW).unwrap_err(), LoginError::TooLong);
    assert_eq!(v.verify_login(&"x".repeat(100_000), USER, DB, NOW).unwrap_err(), LoginError::TooLong);
    assert_eq!(v.verify_login(&c.replacen("otl1.", "otl2.", 1), USER, DB, NOW).unwrap_err(), LoginError::Prefix);
    assert_eq!(v.verify_login("", USER, DB, NOW).unwrap_err(), LoginError::Prefix);
    assert_eq!(v.verify_login("hunter2", USER, DB, NOW).unwrap_err(), LoginError::Prefix);
    let mut bad = c.clone().into_bytes();
    bad[100] = b'*';
    assert_eq!(v.verify_login(&String::from_utf8(bad).unwrap(), USER, DB, NOW).unwrap_err(), LoginError::Encoding);
    // Standard base64 with padding is not the format.
    let padded = format!("{}=", &c[..c.len() - 1]);
    assert_eq!(v.verify_login(&padded, USER, DB, NOW).unwrap_err(), LoginError::Encoding);
}

#[test]
fn names_over_255_bytes_are_refused_on_both_sides() {
    let s = setup::<DefaultBackend>();
    let long = "u".repeat(LOGIN_NAME_MAX_LEN + 1);
    let max = "u".repeat(LOGIN_NAME_MAX_LEN);
    assert_eq!(
        login_credential(&s.token, &s.session_key, &long, None, NOW, &NONCE).unwrap_err(),
        LoginError::NameTooLong
    );
    assert_eq!(
        login_credential(&s.token, &s.session_key, USER, Some(&long), NOW, &NONCE).unwrap_err(),
        LoginError::NameTooLong
    );
    let c = s.credential(&max, Some(&max), NOW);
    assert!(s.fx.tokens.verify_login(&c, &max, Some(&max), NOW).is_ok());
    assert_eq!(s.fx.tokens.verify_login(&c, &long, None, NOW).unwrap_err(), LoginError::NameTooLong);
}

#[test]
fn a_credential_is_not_an_http_proof_and_debug_hides_it() {
    // The login MAC key has its own label: the HTTP proof key never equals it.
    let sk = Secret::new([1; 32]);
    assert!(!kdf::derive(kdf::LABEL_LOGIN_KEY, &[sk.expose()]).ct_eq(&kdf::derive(kdf::LABEL_POP_KEY, &[sk.expose()])));
    let s = setup::<DefaultBackend>();
    let c = s.credential(USER, DB, NOW);
    let err = s.fx.tokens.verify_login(&c, "admin", DB, NOW).unwrap_err();
    assert!(!format!("{err} {err:?}").contains(&c[10..40]));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_never_panic(text in ".{0,600}", user in ".{0,300}", db in proptest::option::of(".{0,300}")) {
        let s = setup::<DefaultBackend>();
        let _ = s.fx.tokens.verify_login(&text, &user, db.as_deref(), NOW);
        let with_prefix = format!("{LOGIN_PREFIX}{text}");
        let _ = s.fx.tokens.verify_login(&with_prefix, &user, db.as_deref(), NOW);
    }

    #[test]
    fn base64_of_any_bytes_is_refused_without_panic(raw in proptest::collection::vec(any::<u8>(), LOGIN_RAW_LEN)) {
        let s = setup::<DefaultBackend>();
        let text = format!("{LOGIN_PREFIX}{}", URL_SAFE_NO_PAD.encode(&raw));
        prop_assert!(s.fx.tokens.verify_login(&text, USER, DB, NOW).is_err());
    }
}

// ---- §14 test vector ----

fn unhex<const N: usize>(v: &serde_json::Value) -> [u8; N] {
    hex::decode(v.as_str().unwrap()).unwrap().try_into().unwrap()
}

/// Input bytes: BLAKE3-derive_key("onetrip test vector input", name), as in vectors.rs.
fn input<const N: usize>(name: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let mut h = blake3::Hasher::new_derive_key("onetrip test vector input");
    h.update(name.as_bytes());
    h.finalize_xof().fill(&mut out);
    out
}

/// The §14 example, every value recomputed from the spec's formulas (not through the
/// library), then checked against the library.
fn vector_lines() -> Vec<(String, String)> {
    let file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/v1.json")).unwrap(),
    )
    .unwrap();
    let ok = &file["handshakes"][0];
    assert_eq!(ok["name"], "ok");
    let token_bytes: [u8; 320] = unhex(&ok["token"]);
    let session_key: [u8; 32] = unhex(&ok["session_key"]);
    let aud_key: [u8; 32] = unhex(&file["derived"]["token_audience_key"]);
    let key_id: [u8; 4] = unhex(&file["inputs"]["token_key_id"]);
    let (user, db, timestamp, now) = ("app_reader", "orders", NOW + 30, NOW + 31);
    let nonce: [u8; 16] = input("login nonce");

    let login_key = blake3::derive_key("onetrip v1 login key", &session_key);
    let mut raw = Vec::new();
    raw.extend_from_slice(&token_bytes);
    raw.extend_from_slice(&timestamp.to_be_bytes());
    raw.extend_from_slice(&nonce);
    let mut h = blake3::Hasher::new_keyed(&login_key);
    h.update(b"otl1.");
    h.update(&raw);
    h.update(&[user.len() as u8]);
    h.update(user.as_bytes());
    h.update(&[1, db.len() as u8]);
    h.update(db.as_bytes());
    let mac = *h.finalize().as_bytes();
    raw.extend_from_slice(&mac);
    let credential = format!("otl1.{}", URL_SAFE_NO_PAD.encode(&raw));
    let mut replay_id = [0u8; 16];
    let mut h = blake3::Hasher::new_derive_key("onetrip v1 login replay id");
    h.update(&raw);
    h.finalize_xof().fill(&mut replay_id);

    let token = Token::from_slice(&token_bytes).unwrap();
    let lib = login_credential(&token, &Secret::new(session_key), user, Some(db), timestamp, &nonce).unwrap();
    assert_eq!(lib.as_str(), credential, "library and spec formula disagree");
    for_each_backend_verifier(&aud_key, &key_id, |v| {
        let got = v.verify_login(&credential, user, Some(db), now).unwrap();
        assert_eq!(got.replay_id, replay_id);
        assert_eq!(got.not_after, timestamp + LOGIN_WINDOW_SECS);
    });
    vec![
        ("login_user".into(), user.into()),
        ("login_database".into(), db.into()),
        ("login_timestamp".into(), timestamp.to_string()),
        ("login_nonce".into(), hex::encode(nonce)),
        ("login_key".into(), hex::encode(login_key)),
        ("login_mac".into(), hex::encode(mac)),
        ("login_credential".into(), credential),
        ("login_replay_id".into(), hex::encode(replay_id)),
        ("login_verified_at".into(), now.to_string()),
        ("login_not_after".into(), (timestamp + LOGIN_WINDOW_SECS).to_string()),
    ]
}

fn for_each_backend_verifier(aud_key: &[u8; 32], key_id: &[u8; 4], f: impl Fn(&dyn VerifyLogin)) {
    #[cfg(feature = "rustcrypto")]
    f(&TokenVerifier::new(onetrip_protocol::backend::RustCrypto, "db.example", &[(*key_id, Secret::new(*aud_key))])
        .unwrap());
    #[cfg(feature = "aws-lc")]
    f(&TokenVerifier::new(onetrip_protocol::backend::AwsLc, "db.example", &[(*key_id, Secret::new(*aud_key))])
        .unwrap());
}

trait VerifyLogin {
    fn verify_login(
        &self,
        c: &str,
        u: &str,
        d: Option<&str>,
        now: u64,
    ) -> Result<onetrip_protocol::VerifiedLogin, LoginError>;
}
impl<B: CryptoBackend> VerifyLogin for TokenVerifier<B> {
    fn verify_login(
        &self,
        c: &str,
        u: &str,
        d: Option<&str>,
        now: u64,
    ) -> Result<onetrip_protocol::VerifiedLogin, LoginError> {
        TokenVerifier::verify_login(self, c, u, d, now)
    }
}

#[test]
fn protocol_md_login_vector_matches_spec_and_library() {
    let lines = vector_lines();
    let expected: String = lines.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../PROTOCOL.md")).unwrap();
    let block = doc
        .split_once("<!-- login-vector:begin -->")
        .and_then(|(_, rest)| rest.split_once("<!-- login-vector:end -->"))
        .map(|(b, _)| b)
        .expect("PROTOCOL.md §14 has a login-vector block");
    let inner = block.split("```").nth(1).expect("code fence in the login-vector block").trim_start_matches('\n');
    assert_eq!(inner, expected, "PROTOCOL.md §14 vector is stale; expected:\n{expected}");
}
