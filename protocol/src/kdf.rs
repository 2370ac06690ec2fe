//! Key derivation: BLAKE3 `derive_key` with one context string per purpose.
//!
//! Every label in onetrip is a constant here, so PROTOCOL.md's label table and the code
//! cannot drift apart. Inputs are concatenations of fixed-length fields, so no length
//! prefixes are needed to keep them unambiguous.

use crate::secret::Secret;

/// Client static X25519 private key from the 24-byte API secret.
pub const LABEL_CLIENT_STATIC: &str = "onetrip v1 client static";
/// 4-byte checksum inside the API key string.
pub const LABEL_API_KEY_CHECKSUM: &str = "onetrip v1 api key checksum";
/// k1: seals the API key id inside the request.
pub const LABEL_KEY_ID_KEY: &str = "onetrip v1 request key-id key";
/// k2: seals the request payload; needs the client static key.
pub const LABEL_PAYLOAD_KEY: &str = "onetrip v1 request payload key";
/// Response key when the client authenticated (derived from k2).
pub const LABEL_RESPONSE_KEY: &str = "onetrip v1 response key";
/// Response key when it did not (derived from k1 only).
pub const LABEL_FAILURE_RESPONSE_KEY: &str = "onetrip v1 failure response key";
/// Replay-cache id of an authenticated request.
pub const LABEL_REPLAY_ID: &str = "onetrip v1 replay id";
/// Dummy static-static value for unknown or revoked API key ids.
pub const LABEL_DUMMY_STATIC: &str = "onetrip v1 dummy static-static";
/// Per-audience token key from the master token key.
pub const LABEL_TOKEN_AUDIENCE_KEY: &str = "onetrip v1 token audience key";
/// Token key of the authentication server's own API (the reserved audience
/// [`crate::token::SERVER_AUDIENCE`]): a label of its own, so that no audience key
/// given to a resource server opens or mints the server's tokens.
pub const LABEL_TOKEN_SERVER_KEY: &str = "onetrip v1 token server key";
/// Audience tag carried in the clear in a token header.
pub const LABEL_AUDIENCE_TAG: &str = "onetrip v1 audience tag";
/// Proof-of-possession MAC key from the session key.
pub const LABEL_POP_KEY: &str = "onetrip v1 pop key";
/// Login credential MAC key from the session key (PROTOCOL.md §14): a label of its
/// own, so a login credential's MAC is never a valid HTTP proof of possession.
pub const LABEL_LOGIN_KEY: &str = "onetrip v1 login key";
/// Replay id of a login credential (§14).
pub const LABEL_LOGIN_REPLAY_ID: &str = "onetrip v1 login replay id";
/// Ed25519 signing context of the server key document.
pub const SIGN_CONTEXT_DOCUMENT: &[u8] = b"onetrip v1 server key document\0";
/// Ed25519 signing context of a "server key changed" answer.
pub const SIGN_CONTEXT_KEY_CHANGED: &[u8] = b"onetrip v1 server key changed\0";

/// BLAKE3 `derive_key(label, parts[0] ‖ parts[1] ‖ …)`, 32 bytes.
pub fn derive(label: &str, parts: &[&[u8]]) -> Secret<32> {
    let mut hasher = blake3::Hasher::new_derive_key(label);
    for part in parts {
        hasher.update(part);
    }
    Secret::new(*hasher.finalize().as_bytes())
}

/// Like [`derive`] for values that are not secret (tags, ids), returned as plain bytes.
pub fn derive_public<const N: usize>(label: &str, parts: &[&[u8]]) -> [u8; N] {
    let mut hasher = blake3::Hasher::new_derive_key(label);
    for part in parts {
        hasher.update(part);
    }
    let mut out = [0u8; N];
    hasher.finalize_xof().fill(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_separate_domains() {
        let a = derive(LABEL_KEY_ID_KEY, &[b"x"]);
        let b = derive(LABEL_PAYLOAD_KEY, &[b"x"]);
        assert!(!a.ct_eq(&b));
        let all = [
            LABEL_CLIENT_STATIC,
            LABEL_API_KEY_CHECKSUM,
            LABEL_KEY_ID_KEY,
            LABEL_PAYLOAD_KEY,
            LABEL_RESPONSE_KEY,
            LABEL_FAILURE_RESPONSE_KEY,
            LABEL_REPLAY_ID,
            LABEL_DUMMY_STATIC,
            LABEL_TOKEN_AUDIENCE_KEY,
            LABEL_TOKEN_SERVER_KEY,
            LABEL_AUDIENCE_TAG,
            LABEL_POP_KEY,
            LABEL_LOGIN_KEY,
            LABEL_LOGIN_REPLAY_ID,
        ];
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                assert_ne!(x, y);
            }
        }
    }

    #[test]
    fn derive_matches_blake3_derive_key_over_the_concatenation() {
        let k = derive(LABEL_REPLAY_ID, &[b"ab", b"cd"]);
        assert_eq!(k.expose(), &blake3::derive_key(LABEL_REPLAY_ID, b"abcd"));
        let short: [u8; 16] = derive_public(LABEL_REPLAY_ID, &[b"abcd"]);
        assert_eq!(short[..], blake3::derive_key(LABEL_REPLAY_ID, b"abcd")[..16]);
    }
}
