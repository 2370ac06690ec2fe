//! Independent readings of PROTOCOL.md for the fuzz properties: the offsets are the
//! spec tables' literal numbers (not the crate's constants), the rules are the spec's
//! lists, and the key schedule is §4.3 recomputed from the server's side. The targets
//! compare the library's answers with these, so a drift between code and spec is a
//! finding too.

use crate::backend::{CryptoBackend, DefaultBackend};
use crate::handshake::client::Outcome;
use crate::handshake::Channel;
use crate::kdf;
use crate::secret::Secret;

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

/// §1.3: `u8(L) ‖ text ‖ zeros`, `L ≤ M − 1`, text bytes in `0x20..=0x7E`.
pub(crate) fn slot(s: &[u8]) -> Option<&str> {
    let (&len, rest) = s.split_first()?;
    let len = usize::from(len);
    if len > rest.len() {
        return None;
    }
    let (text, padding) = rest.split_at(len);
    if !text.iter().all(|b| (0x20..=0x7e).contains(b)) || padding.iter().any(|&b| b != 0) {
        return None;
    }
    core::str::from_utf8(text).ok()
}

/// A request payload as §4.2 describes it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Payload<'a> {
    pub timestamp: u64,
    pub nonce: [u8; 16],
    pub audience: &'a str,
    pub scopes: &'a str,
    pub second_factor: Option<([u8; 16], &'a str)>,
}

/// §4.2 "Server validation" of a 294-byte payload: `None` means `malformed`.
pub(crate) fn payload(p: &[u8]) -> Option<Payload<'_>> {
    assert_eq!(p.len(), 294);
    let flags = p[24];
    if flags & !1 != 0 {
        return None;
    }
    let audience = slot(&p[25..90])?;
    let scopes = slot(&p[90..219])?;
    let second_factor = if flags & 1 == 1 {
        let code = slot(&p[235..246])?;
        if code.len() < 4 || code.contains(' ') {
            return None;
        }
        Some((arr(&p[219..235]), code))
    } else {
        if p[219..246].iter().any(|&b| b != 0) {
            return None;
        }
        None
    };
    if p[246..294].iter().any(|&b| b != 0) {
        return None;
    }
    Some(Payload { timestamp: be64(&p[0..8]), nonce: arr(&p[8..24]), audience, scopes, second_factor })
}

/// The request keys of §4.3.
pub(crate) struct Keys {
    pub k1: Secret<32>,
    pub k2: Secret<32>,
}

impl Keys {
    /// From the server's side: `s` (prepared), its public `S`, the client's `C`, and
    /// the request's first 74 bytes.
    pub(crate) fn server_side(
        s: &<DefaultBackend as CryptoBackend>::StaticKey,
        server_public: &[u8; 32],
        client_public: &[u8; 32],
        request: &[u8],
    ) -> Self {
        let b = DefaultBackend::default();
        let e: [u8; 32] = arr(&request[10..42]);
        let dh_es = b.x25519(s, &e).expect("a genuine ephemeral key");
        let k1 = kdf::derive(kdf::LABEL_KEY_ID_KEY, &[server_public, dh_es.expose(), &request[..42]]);
        let dh_ss = b.x25519(s, client_public).expect("a genuine client key");
        let k2 = kdf::derive(kdf::LABEL_PAYLOAD_KEY, &[k1.expose(), dh_ss.expose(), client_public, &request[..74]]);
        Self { k1, k2 }
    }
    /// `response_key` over the whole request.
    pub(crate) fn response(&self, request: &[u8]) -> Secret<32> {
        kdf::derive(kdf::LABEL_RESPONSE_KEY, &[self.k2.expose(), request])
    }
    /// `failure_response_key` over the whole request.
    pub(crate) fn failure(&self, request: &[u8]) -> Secret<32> {
        kdf::derive(kdf::LABEL_FAILURE_RESPONSE_KEY, &[self.k1.expose(), request])
    }
}

/// §5.1–§5.2 client decoding of a 370-byte body that opened under the response key
/// (`authenticated`) or the failure key: `Some(outcome matches)` when the client
/// must accept it, `None` when it must answer `ResponseInvalid`.
pub(crate) fn body_accepted(b: &[u8], authenticated: bool) -> Option<impl Fn(&Outcome) -> bool + '_> {
    assert_eq!(b.len(), 370);
    let status = b[0];
    let valid = match status {
        0 => b[49] == 1,
        2 => (1..=4).contains(&b[25]) && slot(&b[26..91]).is_some(),
        1 | 3 | 4 | 6..=9 => true,
        _ => false, // 5 is never sealed; 10.. are unknown
    };
    if !valid || (!authenticated && ![1, 6, 9].contains(&status)) {
        return None;
    }
    let server_time = be64(&b[1..9]);
    Some(move |o: &Outcome| match (status, o) {
        (0, Outcome::Granted(g)) => {
            g.server_time == server_time
                && g.expires_at == be64(&b[9..17])
                && g.session_key.expose()[..] == b[17..49]
                && g.token.as_bytes()[..] == b[49..369]
        }
        (1, Outcome::AuthFailed) | (7, Outcome::Malformed) | (8, Outcome::ScopeDenied) => true,
        (9, Outcome::ServerError) => true,
        (2, Outcome::SecondFactorRequired { operation, channel, destination }) => {
            operation[..] == b[9..25]
                && Some(*channel) == Channel::from_code(b[25])
                && slot(&b[26..91]) == Some(destination.as_str())
        }
        (3, Outcome::SecondFactorFailed { attempts_left }) => *attempts_left == b[9],
        (4, Outcome::ClockSkew { server_time: t }) => *t == server_time,
        (6, Outcome::RateLimited { retry_after_secs }) => retry_after_secs.to_be_bytes()[..] == b[9..13],
        _ => false,
    })
}

/// Token claims as §7 lays them out (279 bytes).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Claims<'a> {
    pub token_id: [u8; 16],
    pub api_key_id: [u8; 16],
    pub issued_at: u64,
    pub expires_at: u64,
    pub second_factor: bool,
    pub audience: &'a str,
    pub scopes: &'a str,
    pub session_key: [u8; 32],
}

/// §7 verification step 5: `None` means `Malformed`.
pub(crate) fn claims(c: &[u8]) -> Option<Claims<'_>> {
    assert_eq!(c.len(), 279);
    if c[48] & !1 != 0 || c[275..279].iter().any(|&b| b != 0) {
        return None;
    }
    Some(Claims {
        token_id: arr(&c[0..16]),
        api_key_id: arr(&c[16..32]),
        issued_at: be64(&c[32..40]),
        expires_at: be64(&c[40..48]),
        second_factor: c[48] & 1 == 1,
        audience: slot(&c[49..114])?,
        scopes: slot(&c[114..243])?,
        session_key: arr(&c[243..275]),
    })
}

/// §7: `K_aud = KDF("onetrip v1 token audience key", master ‖ token_key_id ‖ audience)`.
pub(crate) fn audience_key(master: &[u8; 32], key_id: &[u8; 4], audience: &str) -> Secret<32> {
    kdf::derive(kdf::LABEL_TOKEN_AUDIENCE_KEY, &[master, key_id, audience.as_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_section_1_3() {
        assert_eq!(slot(&[2, b'a', b' ', 0]), Some("a "));
        assert_eq!(slot(&[3, b'a', b'b', 0]), None); // L > M - 1
        assert_eq!(slot(&[1, b'a', 1]), None); // padding
        assert_eq!(slot(&[1, 0x7f, 0]), None); // DEL
        assert_eq!(slot(&[0]), Some(""));
    }
}
