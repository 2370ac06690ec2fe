//! Tokens and proof of possession.

mod common;

use common::*;
use onetrip_protocol::api_key::KeyId;
use onetrip_protocol::pop::{PopError, PopProof, POP_HEADER_LEN};
use onetrip_protocol::token::{Claims, Token, TokenError, TOKEN_BASE64_LEN};
use onetrip_protocol::{CryptoBackend, DefaultBackend, Secret, TokenKeyring, TokenVerifier, TOKEN_LEN};

fn claims(session_key: &Secret<32>) -> Claims {
    Claims::new(
        [7; 16],
        KeyId::from_bytes([1; 16]),
        NOW,
        NOW + 900,
        true,
        AUDIENCE,
        "db:read db:write",
        session_key.clone(),
    )
    .unwrap()
}

fn seal_and_verify<B: CryptoBackend>() {
    let fx = Fixture::<B>::new(1);
    let mut rng = TestRng::new(2);
    let sk = Secret::random(&mut rng);
    let token = fx.tokens.seal(&claims(&sk), &mut rng).unwrap();
    let c = fx.tokens.verify(token.as_bytes(), NOW + 10).unwrap();
    assert_eq!(c.api_key_id, KeyId::from_bytes([1; 16]));
    assert_eq!((c.issued_at, c.expires_at, c.second_factor), (NOW, NOW + 900, true));
    assert_eq!(c.audience(), AUDIENCE);
    assert!(c.has_scope("db:write") && !c.has_scope("db") && !c.has_scope(""));
    assert!(c.session_key().ct_eq(&sk));
}

#[test]
fn tokens_seal_and_verify_on_every_backend() {
    for_each_backend!(seal_and_verify);
}

#[test]
fn token_bit_flips_never_verify() {
    let fx = Fixture::<DefaultBackend>::new(3);
    let mut rng = TestRng::new(4);
    let token = fx.tokens.seal(&claims(&Secret::random(&mut rng)), &mut rng).unwrap();
    for bit in 0..TOKEN_LEN * 8 {
        let mut bad = *token.as_bytes();
        bad[bit / 8] ^= 1 << (bit % 8);
        assert!(fx.tokens.verify(&bad, NOW).is_err(), "bit {bit}");
    }
}

#[test]
fn token_time_and_framing_checks() {
    let fx = Fixture::<DefaultBackend>::new(5);
    let mut rng = TestRng::new(6);
    let token = fx.tokens.seal(&claims(&Secret::random(&mut rng)), &mut rng).unwrap();
    let t = token.as_bytes();
    assert_eq!(fx.tokens.verify(t, NOW + 901).unwrap_err(), TokenError::Expired { expires_at: NOW + 900 });
    assert_eq!(fx.tokens.verify(t, NOW - 61).unwrap_err(), TokenError::NotYetValid { issued_at: NOW });
    assert!(fx.tokens.verify(t, NOW + 900).is_ok());
    assert_eq!(fx.tokens.verify(&t[..100], NOW).unwrap_err(), TokenError::Length);
    let mut v = *t;
    v[0] = 2;
    assert_eq!(fx.tokens.verify(&v, NOW).unwrap_err(), TokenError::Version(2));
    let mut k = *t;
    k[1] ^= 1;
    assert_eq!(fx.tokens.verify(&k, NOW).unwrap_err(), TokenError::UnknownKey);
    let mut a = *t;
    a[5] ^= 1;
    assert_eq!(fx.tokens.verify(&a, NOW).unwrap_err(), TokenError::WrongAudience);
    let mut body = *t;
    body[100] ^= 1;
    assert_eq!(fx.tokens.verify(&body, NOW).unwrap_err(), TokenError::Invalid);
}

#[test]
fn a_resource_server_key_cannot_mint_or_read_other_audiences() {
    let fx = Fixture::<DefaultBackend>::new(7);
    let mut rng = TestRng::new(8);
    let other = fx.keyring.for_audience(DefaultBackend::default(), "billing").unwrap();
    let db_token = fx.tokens.seal(&claims(&Secret::random(&mut rng)), &mut rng).unwrap();
    assert_eq!(other.verify(db_token.as_bytes(), NOW).unwrap_err(), TokenError::WrongAudience);
    // The db verifier refuses to seal claims for another audience.
    let billing =
        Claims::new([1; 16], KeyId::from_bytes([1; 16]), NOW, NOW + 1, false, "billing", "", Secret::new([0; 32]))
            .unwrap();
    assert_eq!(fx.tokens.seal(&billing, &mut rng).unwrap_err(), TokenError::WrongAudience);
    // Even with the tag forged to billing's, db's key does not open under billing's.
    let forged = {
        let mut t = *db_token.as_bytes();
        t[5..13].copy_from_slice(&onetrip_protocol::token::audience_tag("billing"));
        t
    };
    assert_eq!(other.verify(&forged, NOW).unwrap_err(), TokenError::Invalid);
    // Audience keys differ per audience and per master key.
    let a = fx.keyring.audience_secrets(AUDIENCE).expect("audience");
    let b = fx.keyring.audience_secrets("billing").expect("audience");
    assert!(!a[0].1.ct_eq(&b[0].1));
}

#[test]
fn no_exported_audience_key_opens_or_mints_the_servers_own_tokens() {
    use onetrip_protocol::token::SERVER_AUDIENCE;
    let fx = Fixture::<DefaultBackend>::new(12);
    let mut rng = TestRng::new(13);
    let own = fx.keyring.for_audience(DefaultBackend::default(), SERVER_AUDIENCE).unwrap();
    let own_claims = |aud: &str| {
        Claims::new([3; 16], KeyId::from_bytes([4; 16]), NOW, NOW + 900, true, aud, "otp", Secret::new([5; 32]))
            .unwrap()
    };
    let token = own.seal(&own_claims(SERVER_AUDIENCE), &mut rng).unwrap();
    assert_eq!(own.verify(token.as_bytes(), NOW).unwrap().audience(), SERVER_AUDIENCE);
    // The server's key is never exported...
    assert_eq!(fx.keyring.audience_secrets(SERVER_AUDIENCE).unwrap_err(), TokenError::ReservedAudience);
    // ...and the key a resource server would have got for the same name under the
    // audience label (as older servers printed it) neither opens nor mints.
    let master = Secret::new([0x11; 32]);
    let ring = TokenKeyring::new(*b"kid1", master.clone());
    let own = ring.for_audience(DefaultBackend::default(), SERVER_AUDIENCE).unwrap();
    let legacy = onetrip_protocol::kdf::derive(
        onetrip_protocol::kdf::LABEL_TOKEN_AUDIENCE_KEY,
        &[master.expose(), b"kid1", SERVER_AUDIENCE.as_bytes()],
    );
    let resource = TokenVerifier::new(DefaultBackend::default(), SERVER_AUDIENCE, &[(*b"kid1", legacy)]).unwrap();
    let genuine = own.seal(&own_claims(SERVER_AUDIENCE), &mut rng).unwrap();
    assert_eq!(resource.verify(genuine.as_bytes(), NOW).unwrap_err(), TokenError::Invalid);
    let forged = resource.seal(&own_claims(SERVER_AUDIENCE), &mut rng).unwrap();
    assert_eq!(own.verify(forged.as_bytes(), NOW).unwrap_err(), TokenError::Invalid);
    // The server's key is PROTOCOL.md §7.1's K_server = KDF(label, master ‖ key id).
    let spec = blake3::derive_key("onetrip v1 token server key", &[&master.expose()[..], b"kid1"].concat());
    let by_spec =
        TokenVerifier::new(DefaultBackend::default(), SERVER_AUDIENCE, &[(*b"kid1", Secret::new(spec))]).unwrap();
    assert_eq!(by_spec.verify(genuine.as_bytes(), NOW).unwrap().audience(), SERVER_AUDIENCE);
    // Another audience's key cannot either (different tag, different key).
    let db = fx.tokens.seal(&claims(&Secret::new([6; 32])), &mut rng).unwrap();
    assert_eq!(
        fx.keyring
            .for_audience(DefaultBackend::default(), SERVER_AUDIENCE)
            .unwrap()
            .verify(db.as_bytes(), NOW)
            .unwrap_err(),
        TokenError::WrongAudience
    );
}

#[test]
fn token_key_rotation_keeps_old_tokens_valid_until_the_old_key_is_dropped() {
    let mut rng = TestRng::new(9);
    let old_master = Secret::random(&mut rng);
    let old = TokenKeyring::new(*b"old1", old_master.clone());
    let old_token = old
        .for_audience(DefaultBackend::default(), AUDIENCE)
        .unwrap()
        .seal(&claims(&Secret::new([1; 32])), &mut rng)
        .unwrap();
    let mut rotated = TokenKeyring::new(*b"new2", Secret::random(&mut rng));
    rotated.push_previous(*b"old1", old_master);
    let v = rotated.for_audience(DefaultBackend::default(), AUDIENCE).unwrap();
    assert!(v.verify(old_token.as_bytes(), NOW).is_ok());
    let new_token = v.seal(&claims(&Secret::new([1; 32])), &mut rng).unwrap();
    assert_eq!(new_token.key_id(), *b"new2");
    let only_new = TokenKeyring::new(*b"new2", Secret::random(&mut rng))
        .for_audience(DefaultBackend::default(), AUDIENCE)
        .unwrap();
    assert_eq!(only_new.verify(old_token.as_bytes(), NOW).unwrap_err(), TokenError::UnknownKey);
}

#[test]
fn token_base64_form_and_debug() {
    let fx = Fixture::<DefaultBackend>::new(10);
    let mut rng = TestRng::new(11);
    let token = fx.tokens.seal(&claims(&Secret::random(&mut rng)), &mut rng).unwrap();
    let b64 = token.to_base64();
    assert_eq!(b64.len(), TOKEN_BASE64_LEN);
    assert_eq!(Token::from_base64(&b64).unwrap(), token);
    assert_eq!(Token::from_base64("abc").unwrap_err(), TokenError::Length);
    assert_eq!(Token::from_base64(&"*".repeat(TOKEN_BASE64_LEN)).unwrap_err(), TokenError::Encoding);
    assert_eq!(format!("{token:?}"), "Token([redacted])");
    let c = fx.tokens.verify(token.as_bytes(), NOW).unwrap();
    assert!(format!("{c:?}").contains("Secret([redacted])"));
}

#[test]
fn pop_signs_and_verifies_with_the_token() {
    let fx = Fixture::<DefaultBackend>::new(12);
    let mut rng = TestRng::new(13);
    let sk = Secret::random(&mut rng);
    let token = fx.tokens.seal(&claims(&sk), &mut rng).unwrap();
    let proof = PopProof::sign(&sk, token.binding(), "POST", "/v1/query", b"select 1", NOW, &mut rng).unwrap();
    let header = proof.to_header();
    assert_eq!(header.len(), POP_HEADER_LEN);
    let parsed = PopProof::from_header(&header).unwrap();
    let ok = fx.tokens.verify_request(token.as_bytes(), &parsed, "POST", "/v1/query", b"select 1", NOW + 5, 60);
    assert_eq!(ok.unwrap().token_id, [7; 16]);
    let check =
        |m: &str, p: &str, b: &[u8], now: u64| fx.tokens.verify_request(token.as_bytes(), &parsed, m, p, b, now, 60);
    assert_eq!(check("GET", "/v1/query", b"select 1", NOW).unwrap_err(), TokenError::Pop(PopError::BadSignature));
    assert_eq!(check("POST", "/v1/query2", b"select 1", NOW).unwrap_err(), TokenError::Pop(PopError::BadSignature));
    assert_eq!(check("POST", "/v1/query", b"select 2", NOW).unwrap_err(), TokenError::Pop(PopError::BadSignature));
    assert_eq!(
        check("POST", "/v1/query", b"select 1", NOW + 61).unwrap_err(),
        TokenError::Pop(PopError::Stale { timestamp: NOW, now: NOW + 61 })
    );
    // A proof made with another session key (a thief holding only the token) fails.
    let thief = PopProof::sign(&Secret::new([0; 32]), token.binding(), "POST", "/v1/query", b"select 1", NOW, &mut rng)
        .unwrap();
    assert_eq!(
        fx.tokens.verify_request(token.as_bytes(), &thief, "POST", "/v1/query", b"select 1", NOW, 60).unwrap_err(),
        TokenError::Pop(PopError::BadSignature)
    );
    // Method/path boundaries are length-prefixed: "POST" + "/x" differs from "POS" + "T/x".
    let a = PopProof::sign(&sk, &[7; 25], "POST", "/x", b"", NOW, &mut TestRng::new(1)).unwrap();
    assert!(a.verify(&sk, &[7; 25], "POST", "/x", b"", NOW, 60).is_ok());
    assert!(a.verify(&sk, &[7; 25], "POS", "T/x", b"", NOW, 60).is_err());
    // A proof is bound to the token it was made for.
    let other = fx.tokens.seal(&claims(&sk), &mut rng).unwrap();
    assert_eq!(
        fx.tokens.verify_request(other.as_bytes(), &parsed, "POST", "/v1/query", b"select 1", NOW, 60).unwrap_err(),
        TokenError::Pop(PopError::BadSignature)
    );
}

#[test]
fn pop_bit_flips_never_verify() {
    let mut rng = TestRng::new(14);
    let sk = Secret::random(&mut rng);
    let proof = PopProof::sign(&sk, &[1; 25], "GET", "/", b"", NOW, &mut rng).unwrap();
    for bit in 0..proof.as_bytes().len() * 8 {
        let mut bad = *proof.as_bytes();
        bad[bit / 8] ^= 1 << (bit % 8);
        let ok = PopProof::from_bytes(&bad).and_then(|p| p.verify(&sk, &[1; 25], "GET", "/", b"", NOW, u64::MAX));
        assert!(ok.is_err(), "bit {bit}");
    }
    assert_eq!(PopProof::from_bytes(&[1; 10]).unwrap_err(), PopError::Length);
    assert_eq!(PopProof::from_header("!!").unwrap_err(), PopError::Length);
    assert_eq!(PopProof::from_header(&"*".repeat(POP_HEADER_LEN)).unwrap_err(), PopError::Encoding);
    assert_ne!(proof.replay_id(), PopProof::sign(&sk, &[1; 25], "GET", "/", b"", NOW, &mut rng).unwrap().replay_id());
}
