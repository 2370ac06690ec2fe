//! API key strings and the signed server key document.

mod common;

use common::*;
use onetrip_protocol::api_key::{ApiKey, ApiKeyError, KeyId, API_KEY_STRING_LEN};
use onetrip_protocol::server_key::{document_len, Fingerprint, IdentityKey, ServerKeyEntry};
use onetrip_protocol::{DefaultBackend, DocumentError, Secret, ServerKeyDocument};

#[test]
fn api_key_string_round_trips_and_has_the_prefix() {
    let mut rng = TestRng::new(1);
    let key = ApiKey::generate(&mut rng);
    let s = key.encode();
    assert!(s.starts_with("otk_"));
    assert_eq!(s.len(), API_KEY_STRING_LEN);
    let back = ApiKey::parse(&s).unwrap();
    assert_eq!(back.id(), key.id());
    assert!(back.secret().ct_eq(key.secret()));
    // Pasted with a newline.
    assert_eq!(ApiKey::parse(&format!("  {}\n", &*s)).unwrap().id(), key.id());
}

#[test]
fn api_key_typos_and_truncation_are_caught_locally() {
    let mut rng = TestRng::new(2);
    let s = ApiKey::generate(&mut rng).encode().to_string();
    assert_eq!(ApiKey::parse(&s[4..]).unwrap_err(), ApiKeyError::MissingPrefix);
    assert_eq!(ApiKey::parse(&s[..s.len() - 1]).unwrap_err(), ApiKeyError::Length { found: 62 });
    assert_eq!(ApiKey::parse(&format!("{s}A")).unwrap_err(), ApiKeyError::Length { found: 64 });
    let mut bad = s.clone().into_bytes();
    bad[10] = b'*';
    assert_eq!(ApiKey::parse(std::str::from_utf8(&bad).unwrap()).unwrap_err(), ApiKeyError::Encoding);
    // Every single-character substitution inside the base64 part is caught.
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for pos in 4..s.len() {
        let mut typo = s.clone().into_bytes();
        typo[pos] = if typo[pos] == alphabet[0] { alphabet[1] } else { alphabet[0] };
        let err = ApiKey::parse(std::str::from_utf8(&typo).unwrap()).unwrap_err();
        assert!(matches!(err, ApiKeyError::Checksum | ApiKeyError::Encoding), "pos {pos}: {err:?}");
    }
}

#[test]
fn api_key_errors_and_debug_never_echo_the_secret() {
    let mut rng = TestRng::new(3);
    let key = ApiKey::generate(&mut rng);
    let s = key.encode().to_string();
    let debug = format!("{key:?}");
    assert!(!debug.contains(&s[4..20]));
    assert!(debug.contains("[redacted]"));
    let mut typo = s.clone();
    typo.replace_range(30..31, if &s[30..31] == "A" { "B" } else { "A" });
    let msg = ApiKey::parse(&typo).unwrap_err().to_string();
    assert!(!msg.contains(&s[4..20]), "{msg}");
}

#[test]
fn verifier_is_the_public_key_of_the_derived_static_key() {
    let key = ApiKey::from_parts(KeyId::from_bytes([1; 16]), Secret::new([2; 24]));
    let private = key.client_static_private();
    assert_eq!(private.expose(), &blake3::derive_key("onetrip v1 client static", &[2; 24]));
    let backend = DefaultBackend::default();
    use onetrip_protocol::CryptoBackend;
    let expected = backend.public_key(&backend.static_key(&private).unwrap());
    assert_eq!(key.verifier(&backend).unwrap().as_bytes(), &expected);
}

#[test]
fn key_id_hex_round_trips() {
    let id = KeyId::from_bytes(*b"0123456789abcdef");
    assert_eq!(KeyId::from_hex(&id.to_string()), Some(id));
    assert_eq!(KeyId::from_hex("zz"), None);
    assert_eq!(KeyId::from_hex(&"g".repeat(32)), None);
}

#[test]
fn document_round_trips_and_selects_the_current_key() {
    let mut rng = TestRng::new(4);
    let identity = IdentityKey::generate(&mut rng);
    let old = ServerKeyEntry { key_id: *b"old00001", public: [1; 32], not_before: 100, not_after: 300 };
    let new = ServerKeyEntry { key_id: *b"new00002", public: [2; 32], not_before: 200, not_after: 900 };
    let doc = ServerKeyDocument::new(250, 1_000, identity.public(), &[old, new]).unwrap();
    let bytes = doc.sign(&identity).unwrap();
    assert_eq!(bytes.len(), document_len(2));
    let parsed = ServerKeyDocument::parse(&bytes).unwrap();
    assert_eq!(parsed, doc);
    assert_eq!(parsed.current(150).unwrap().key_id, old.key_id);
    assert_eq!(parsed.current(250).unwrap().key_id, new.key_id, "newest valid key wins during overlap");
    assert_eq!(parsed.current(901).unwrap_err(), DocumentError::NoCurrentKey);
    parsed.check_pin(&identity.fingerprint()).unwrap();
}

#[test]
fn document_bit_flips_never_verify() {
    let fx = Fixture::<DefaultBackend>::new(5);
    let bytes = &fx.document_bytes;
    for bit in 0..bytes.len() * 8 {
        let mut bad = bytes.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        assert!(ServerKeyDocument::parse(&bad).is_err(), "bit {bit}");
    }
}

#[test]
fn document_framing_errors_are_typed() {
    let fx = Fixture::<DefaultBackend>::new(6);
    let good = fx.document_bytes.clone();
    let parse = |b: &[u8]| ServerKeyDocument::parse(b).unwrap_err();
    assert!(matches!(parse(&good[..10]), DocumentError::Length { found: 10, .. }));
    let mut backwards = good.clone();
    backwards[16..24].copy_from_slice(&0u64.to_be_bytes());
    assert!(matches!(parse(&backwards), DocumentError::Signature), "checked under the signature");
    assert!(matches!(parse(&good[..good.len() - 1]), DocumentError::Length { .. }));
    let mut long = good.clone();
    long.push(0);
    assert!(matches!(parse(&long), DocumentError::Length { .. }));
    let mut m = good.clone();
    m[0] = b'X';
    assert_eq!(parse(&m), DocumentError::Magic);
    let mut v = good.clone();
    v[4] = 7;
    assert_eq!(parse(&v), DocumentError::Version(7));
    let mut c = good.clone();
    c[5] = 0;
    assert!(matches!(parse(&c), DocumentError::Header(_)));
    c[5] = 5;
    assert!(matches!(parse(&c), DocumentError::Header(_)));
}

#[test]
fn a_document_signed_by_another_identity_fails_the_pin() {
    let mut rng = TestRng::new(7);
    let real = IdentityKey::generate(&mut rng);
    let fake = IdentityKey::generate(&mut rng);
    let entry = ServerKeyEntry { key_id: [1; 8], public: [9; 32], not_before: 0, not_after: 10 };
    let forged = ServerKeyDocument::new(1, 10, fake.public(), &[entry]).unwrap().sign(&fake).unwrap();
    let doc = ServerKeyDocument::parse(&forged).unwrap();
    let err = doc.check_pin(&real.fingerprint()).unwrap_err();
    assert!(matches!(err, DocumentError::IdentityMismatch { .. }));
    assert!(err.to_string().contains("server identity changed"));
    // Signing a document naming another identity is refused.
    let other = ServerKeyDocument::new(1, 10, real.public(), &[entry]).unwrap();
    assert!(other.sign(&fake).is_err());
}

#[test]
fn document_entries_are_validated() {
    let e = ServerKeyEntry { key_id: [1; 8], public: [9; 32], not_before: 5, not_after: 10 };
    let id = [3u8; 32];
    assert!(ServerKeyDocument::new(0, 10, id, &[]).is_err());
    assert!(ServerKeyDocument::new(0, 10, id, &[e; 5]).is_err());
    assert!(matches!(
        ServerKeyDocument::new(0, 10, id, &[e, e]),
        Err(DocumentError::Entry { index: 1, reason: "duplicate key id" })
    ));
    let inverted = ServerKeyEntry { not_before: 11, ..e };
    assert!(matches!(ServerKeyDocument::new(0, 10, id, &[inverted]), Err(DocumentError::Entry { index: 0, .. })));
    assert_eq!(
        ServerKeyDocument::new(11, 10, id, &[e]),
        Err(DocumentError::Header("expires_at is before issued_at")),
        "a document cannot expire before it is issued"
    );
}

#[test]
fn a_document_past_its_expiry_names_no_key() {
    let mut rng = TestRng::new(10);
    let identity = IdentityKey::generate(&mut rng);
    // The key itself is valid much longer than the document: a copy captured now must
    // still die at the document's expiry, whatever the key's validity says.
    let key = ServerKeyEntry { key_id: *b"key00001", public: [1; 32], not_before: 0, not_after: 1_000_000 };
    let bytes = ServerKeyDocument::new(100, 200, identity.public(), &[key]).unwrap().sign(&identity).unwrap();
    let doc = ServerKeyDocument::parse(&bytes).unwrap();
    assert_eq!(doc.expires_at(), 200);
    assert_eq!(doc.current(200).unwrap().key_id, key.key_id, "usable up to and including expires_at");
    assert_eq!(doc.current(201), Err(DocumentError::Expired { expires_at: 200, now: 201 }));
    assert_eq!(doc.check_fresh(201), Err(DocumentError::Expired { expires_at: 200, now: 201 }));
    assert!(doc.check_fresh(150).is_ok());
}

#[test]
fn the_expiry_is_signed() {
    let fx = Fixture::<DefaultBackend>::new(11);
    let mut later = fx.document_bytes.clone();
    // expires_at is bytes 16..24: pushing it a day later breaks the signature.
    let expires = u64::from_be_bytes(later[16..24].try_into().unwrap());
    later[16..24].copy_from_slice(&(expires + 86_400).to_be_bytes());
    assert_eq!(ServerKeyDocument::parse(&later), Err(DocumentError::Signature));
}

#[test]
fn no_handshake_is_prepared_from_an_expired_document() {
    let fx = Fixture::<DefaultBackend>::new(13);
    let key = ApiKey::generate(&mut TestRng::new(14));
    let expires_at = fx.document.expires_at();
    assert!(onetrip_protocol::ClientHandshake::new(fx.backend, &key, &fx.document, expires_at).is_ok());
    let err = onetrip_protocol::ClientHandshake::new(fx.backend, &key, &fx.document, expires_at + 1).unwrap_err();
    assert!(
        matches!(err, onetrip_protocol::HandshakeError::Document(DocumentError::Expired { .. })),
        "a stale document steers no client: {err}"
    );
}

#[test]
fn a_version_1_document_without_expiry_is_refused_with_a_clear_error() {
    // A genuine version 1 document (no expires_at; identity at 16, entries at 48),
    // signed as version 1 servers did: it verifies, and is still refused.
    let mut rng = TestRng::new(12);
    let identity = IdentityKey::generate(&mut rng);
    let mut v1 = Vec::new();
    v1.extend_from_slice(b"OTSK");
    v1.extend_from_slice(&[1, 1, 0, 0]);
    v1.extend_from_slice(&100u64.to_be_bytes());
    v1.extend_from_slice(&identity.public());
    v1.extend_from_slice(b"key00001");
    v1.extend_from_slice(&[1; 32]);
    v1.extend_from_slice(&0u64.to_be_bytes());
    v1.extend_from_slice(&253_402_300_799u64.to_be_bytes());
    let signature = {
        use ed25519_dalek::Signer;
        let key = ed25519_dalek::SigningKey::from_bytes(identity.seed().expose());
        key.sign(&[&b"onetrip v1 server key document\0"[..], &v1].concat()).to_bytes()
    };
    v1.extend_from_slice(&signature);
    assert_eq!(v1.len(), 168, "the version 1 length of a one-entry document");
    let err = ServerKeyDocument::parse(&v1).unwrap_err();
    assert_eq!(err, DocumentError::NoExpiry);
    assert!(err.to_string().contains("no expiry"), "{err}");
}

#[test]
fn fingerprint_is_ssh_style_and_parses_back() {
    let mut rng = TestRng::new(8);
    let identity = IdentityKey::generate(&mut rng);
    let fp = identity.fingerprint();
    let shown = fp.to_string();
    assert!(shown.starts_with("SHA256:") && shown.len() == 7 + 43, "{shown}");
    assert_eq!(shown.parse::<Fingerprint>().unwrap(), fp);
    use sha2::Digest;
    assert_eq!(fp.as_bytes()[..], sha2::Sha256::digest(identity.public())[..]);
    assert!("SHA256:short".parse::<Fingerprint>().is_err());
    assert!("MD5:abc".parse::<Fingerprint>().is_err());
    assert!(!format!("{identity:?}").contains(&format!("{:?}", identity.seed().expose())));
}

#[test]
fn rotation_in_the_same_second_still_selects_the_successor() {
    let mut rng = TestRng::new(9);
    let identity = IdentityKey::generate(&mut rng);
    let old = ServerKeyEntry { key_id: *b"old00001", public: [1; 32], not_before: 100, not_after: 160 };
    let new = ServerKeyEntry { key_id: *b"new00002", public: [2; 32], not_before: 100, not_after: u64::MAX };
    for order in [[old, new], [new, old]] {
        let doc = ServerKeyDocument::new(100, 100, identity.public(), &order).unwrap();
        assert_eq!(doc.current(100).unwrap().key_id, new.key_id);
    }
}
