//! Key material targets: the signed server key document (and fingerprints) and the
//! `otk_…` API key string (and key ids).

use std::sync::OnceLock;

use super::{utf8_prefix, Input, Mutation, NOW};
use crate::api_key::{ApiKey, ApiKeyError, KeyId, API_KEY_BASE64_LEN, API_KEY_PREFIX, API_KEY_STRING_LEN};
use crate::secret::Secret;
use crate::server_key::{
    document_len, DocumentError, Fingerprint, IdentityKey, ServerKeyDocument, ServerKeyEntry, DOCUMENT_MAGIC,
    DOCUMENT_VERSION, ENTRY_LEN, LEGACY_DOCUMENT_VERSION, MAX_ENTRIES, OFF_ENTRIES,
};

/// The document checks that come before the signature, in PROTOCOL.md §3's order:
/// what `parse` must answer when one of them fails.
fn header_error(b: &[u8]) -> Option<DocumentError> {
    if b.len() < OFF_ENTRIES {
        return Some(DocumentError::Length { found: b.len(), expected: document_len(1) });
    }
    if b[..4] != DOCUMENT_MAGIC {
        return Some(DocumentError::Magic);
    }
    if b[4] == LEGACY_DOCUMENT_VERSION {
        return Some(DocumentError::NoExpiry);
    }
    if b[4] != DOCUMENT_VERSION {
        return Some(DocumentError::Version(b[4]));
    }
    let count = usize::from(b[5]);
    if count == 0 || count > MAX_ENTRIES {
        return Some(DocumentError::Header("entry count must be 1 to 4"));
    }
    if b[6..8] != [0, 0] {
        return Some(DocumentError::Header("reserved bytes must be zero"));
    }
    if b.len() != document_len(count) {
        return Some(DocumentError::Length { found: b.len(), expected: document_len(count) });
    }
    None
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// A parsed document equals its bytes at the documented offsets, rebuilds through
/// `ServerKeyDocument::new` with the same entries, passes its own pin, and picks its
/// current key by the documented rule.
fn check_parsed(doc: &ServerKeyDocument, b: &[u8], now: u64) {
    let count = usize::from(b[5]);
    assert_eq!(b.len(), document_len(count));
    assert_eq!(doc.entries().len(), count);
    assert_eq!(doc.issued_at(), be64(&b[8..16]));
    assert_eq!(doc.expires_at(), be64(&b[16..24]));
    assert!(doc.issued_at() <= doc.expires_at(), "a document expiring before its issue was accepted");
    assert_eq!(&doc.identity()[..], &b[24..OFF_ENTRIES]);
    for (e, raw) in doc.entries().iter().zip(b[OFF_ENTRIES..].chunks_exact(ENTRY_LEN)) {
        assert_eq!((&e.key_id[..], &e.public[..]), (&raw[..8], &raw[8..40]));
        assert_eq!((e.not_before, e.not_after), (be64(&raw[40..48]), be64(&raw[48..56])));
    }
    assert_eq!(
        ServerKeyDocument::new(doc.issued_at(), doc.expires_at(), *doc.identity(), doc.entries()).as_ref(),
        Ok(doc)
    );
    assert_eq!(doc.check_pin(&doc.fingerprint()), Ok(()));
    // §3 "Expiry": past expires_at the document names no key at all.
    if now > doc.expires_at() {
        assert_eq!(doc.current(now), Err(DocumentError::Expired { expires_at: doc.expires_at(), now }));
        return;
    }
    // §3 "Current key": greatest not_before, then greatest not_after, then the later
    // entry in the document.
    let mut best: Option<&ServerKeyEntry> = None;
    for e in doc.entries().iter().filter(|e| e.not_before <= now && now <= e.not_after) {
        if best.is_none_or(|b| (e.not_before, e.not_after) >= (b.not_before, b.not_after)) {
            best = Some(e);
        }
    }
    match (doc.current(now), best) {
        (Ok(cur), Some(best)) => assert!(core::ptr::eq(cur, best), "current key {cur:?}, §3 says {best:?}"),
        (Err(e), None) => assert_eq!(e, DocumentError::NoCurrentKey),
        (got, want) => panic!("current key {got:?}, §3 says {want:?}"),
    }
}

fn other_identity() -> &'static IdentityKey {
    static OTHER: OnceLock<IdentityKey> = OnceLock::new();
    OTHER.get_or_init(|| IdentityKey::from_seed(&Secret::new(super::fuzz_input("other identity"))))
}

/// `server_key_document`: parsing and verifying signed server key documents.
///
/// Layout: `mode`. Even: the rest is a document. Odd: `identity seed[32]`,
/// `issued_at u64`, `expires_at u64`, `now u64`, `count` (taken mod 6, so 0 and 5 are tried), `count` ×
/// (`key id[8]`, `public[32]`, `not_before u64`, `not_after u64`), then mutations.
///
/// Property: the pre-signature checks answer exactly as specified; a document that
/// parses matches its bytes and round-trips through `ServerKeyDocument::new`;
/// `new` accepts exactly 1 to 4 entries with ordered validity and distinct ids, and
/// `issued_at <= expires_at`; past `expires_at` no key is current;
/// a signed document parses back equal, only its own identity signs or pins it,
/// and it parses iff unmutated. Fingerprint strings parse iff canonical.
pub fn server_key_document(data: &[u8]) {
    let mut input = Input::new(data);
    if input.byte() & 1 == 0 {
        let bytes = input.rest();
        let result = ServerKeyDocument::parse(bytes);
        match (header_error(bytes), &result) {
            (Some(e), _) => assert_eq!(result, Err(e)),
            (None, Ok(doc)) => check_parsed(doc, bytes, NOW),
            (None, Err(DocumentError::Signature | DocumentError::Entry { .. })) => {}
            (None, Err(e)) => panic!("parse: {e} after the header checks passed"),
        }
        let s = utf8_prefix(bytes);
        if let Ok(fp) = s.parse::<Fingerprint>() {
            assert_eq!(fp.to_string(), s.trim(), "a non-canonical fingerprint string was accepted");
        }
        return;
    }

    let identity = IdentityKey::from_seed(&Secret::new(input.array()));
    let issued_at = input.u64();
    let expires_at = input.u64();
    let now = input.u64();
    let count = usize::from(input.byte() % 6);
    let entries: Vec<ServerKeyEntry> = (0..count)
        .map(|_| ServerKeyEntry {
            key_id: input.array(),
            public: input.array(),
            not_before: input.u64(),
            not_after: input.u64(),
        })
        .collect();
    let valid = (1..=MAX_ENTRIES).contains(&count)
        && issued_at <= expires_at
        && entries.iter().all(|e| e.not_before <= e.not_after)
        && entries.iter().enumerate().all(|(i, e)| entries[..i].iter().all(|p| p.key_id != e.key_id));
    let doc = match ServerKeyDocument::new(issued_at, expires_at, identity.public(), &entries) {
        Ok(doc) => doc,
        Err(e) => {
            assert!(!valid, "new refused valid entries: {e}");
            return;
        }
    };
    assert!(valid, "new accepted invalid entries");
    let bytes = doc.sign(&identity).expect("the document's own identity signs it");
    assert_eq!(ServerKeyDocument::parse(&bytes).as_ref(), Ok(&doc));
    check_parsed(&doc, &bytes, now);
    let other = other_identity();
    if other.public() != identity.public() {
        assert!(matches!(doc.sign(other), Err(DocumentError::IdentityMismatch { .. })));
        assert!(matches!(doc.check_pin(&other.fingerprint()), Err(DocumentError::IdentityMismatch { .. })));
    }
    let fp = identity.fingerprint().to_string();
    assert_eq!(fp.parse::<Fingerprint>(), Ok(identity.fingerprint()));

    let mut mutated = bytes.clone();
    for m in Mutation::list(input.rest()) {
        m.apply(&mut mutated);
    }
    let result = ServerKeyDocument::parse(&mutated);
    assert_eq!(result.is_ok(), mutated == bytes, "mutated document: {result:?}");
}

/// `api_key_string`: the `otk_…` string (the input's longest UTF-8 prefix).
///
/// Property: a string parses iff its canonical encoding is the string with ASCII
/// whitespace trimmed; the error names the first failed check (prefix, length, then
/// encoding or checksum); key ids parse from hex iff they print back; and every id
/// and secret (the input's first 40 bytes) encodes to a 63-character base64url
/// string that parses back to the same key, whitespace around it or not.
pub fn api_key_string(data: &[u8]) {
    let s = utf8_prefix(data);
    let trimmed = s.trim_matches(|c: char| c.is_ascii_whitespace());
    match ApiKey::parse(s) {
        Ok(key) => {
            let encoded = key.encode();
            assert_eq!(encoded.as_str(), trimmed, "a non-canonical API key string was accepted");
            let again = ApiKey::parse(&encoded).expect("canonical string parses");
            assert!(again.id() == key.id() && again.secret().ct_eq(key.secret()));
        }
        Err(e) => match trimmed.strip_prefix(API_KEY_PREFIX) {
            None => assert_eq!(e, ApiKeyError::MissingPrefix),
            Some(body) if body.len() != API_KEY_BASE64_LEN => {
                assert_eq!(e, ApiKeyError::Length { found: trimmed.chars().count() });
            }
            Some(_) => assert!(matches!(e, ApiKeyError::Encoding | ApiKeyError::Checksum), "{e:?}"),
        },
    }
    if let Some(id) = KeyId::from_hex(s) {
        assert!(id.to_string().eq_ignore_ascii_case(s), "key id {id} parsed from {s:?}");
    }

    let mut input = Input::new(data);
    let key = ApiKey::from_parts(KeyId::from_bytes(input.array()), Secret::new(input.array()));
    let encoded = key.encode();
    assert_eq!(encoded.len(), API_KEY_STRING_LEN);
    assert!(encoded.starts_with(API_KEY_PREFIX));
    assert!(encoded[API_KEY_PREFIX.len()..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    for text in [encoded.to_string(), format!(" \r\n{}\t\n", encoded.as_str())] {
        let parsed = ApiKey::parse(&text).expect("an encoded key parses");
        assert!(parsed.id() == key.id() && parsed.secret().ct_eq(key.secret()));
    }
}
