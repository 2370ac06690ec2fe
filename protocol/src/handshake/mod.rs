//! The one-roundtrip handshake: one fixed-size request, one fixed-size response.
//!
//! [`client`] builds the request and opens the response; [`server`] opens the
//! request and seals the response. The byte layouts below are PROTOCOL.md §4–§5;
//! `body` encodes the response plaintext shared by both sides.

mod body;
pub mod client;
pub mod server;
pub mod status;

use crate::api_key::KEY_ID_LEN;
use crate::backend::TAG_LEN;
use crate::server_key::{SERVER_KEY_ID_LEN, SIGNATURE_LEN};
use crate::token::TOKEN_LEN;

pub use body::Channel;

/// Message type of a handshake request.
pub const MSG_AUTH_REQUEST: u8 = 0x01;
/// Message type of a sealed handshake response.
pub const MSG_AUTH_RESPONSE: u8 = 0x02;
/// Message type of a signed "server key changed" response.
pub const MSG_SERVER_KEY_CHANGED: u8 = 0x03;

/// AEAD nonce of the two request seals: `k1` and `k2` come from a fresh ephemeral
/// key and each seals exactly once. Responses carry a random nonce instead.
pub const HANDSHAKE_NONCE: [u8; 12] = [0u8; 12];

// ---- request (PROTOCOL.md §4.1) ----
/// Offset of the version byte.
pub const OFF_VERSION: usize = 0;
/// Offset of the message type byte.
pub const OFF_TYPE: usize = 1;
/// Offset of the server handshake key id.
pub const OFF_SERVER_KEY_ID: usize = 2;
/// Offset of the client ephemeral X25519 public key.
pub const OFF_EPHEMERAL: usize = OFF_SERVER_KEY_ID + SERVER_KEY_ID_LEN;
/// Offset of AEAD(k1, API key id).
pub const OFF_SEALED_KEY_ID: usize = OFF_EPHEMERAL + 32;
/// Offset of the sealed key id's tag.
pub const OFF_KEY_ID_TAG: usize = OFF_SEALED_KEY_ID + KEY_ID_LEN;
/// Offset of AEAD(k2, payload).
pub const OFF_SEALED_PAYLOAD: usize = OFF_KEY_ID_TAG + TAG_LEN;
/// Total request length: a constant of protocol version 1.
pub const REQUEST_LEN: usize = 384;
/// Offset of the payload's tag.
pub const OFF_PAYLOAD_TAG: usize = REQUEST_LEN - TAG_LEN;
/// Length of the request payload plaintext.
pub const PAYLOAD_LEN: usize = OFF_PAYLOAD_TAG - OFF_SEALED_PAYLOAD;
const _: () = assert!(OFF_SEALED_PAYLOAD == 74 && PAYLOAD_LEN == 294);

// ---- request payload (PROTOCOL.md §4.2) ----
/// Client timestamp, unix seconds.
pub const P_OFF_TIMESTAMP: usize = 0;
/// 16-byte random request nonce.
pub const P_OFF_NONCE: usize = 8;
/// Flags byte.
pub const P_OFF_FLAGS: usize = 24;
/// Requested audience: length byte ‖ up to 64 bytes.
pub const P_OFF_AUDIENCE: usize = 25;
/// Size of a text slot holding an audience.
pub const AUDIENCE_SLOT: usize = 65;
/// Requested scopes (space separated): length byte ‖ up to 128 bytes.
pub const P_OFF_SCOPES: usize = P_OFF_AUDIENCE + AUDIENCE_SLOT;
/// Size of a text slot holding a scope list.
pub const SCOPES_SLOT: usize = 129;
/// Second-factor operation id.
pub const P_OFF_OPERATION: usize = P_OFF_SCOPES + SCOPES_SLOT;
/// Length of an OTP operation id.
pub const OPERATION_ID_LEN: usize = 16;
/// Second-factor code: length byte ‖ up to 10 characters.
pub const P_OFF_CODE: usize = P_OFF_OPERATION + OPERATION_ID_LEN;
/// Size of the code slot.
pub const CODE_SLOT: usize = 11;
/// Zero padding up to [`PAYLOAD_LEN`].
pub const P_OFF_PADDING: usize = P_OFF_CODE + CODE_SLOT;
const _: () = assert!(P_OFF_PADDING == 246 && P_OFF_PADDING <= PAYLOAD_LEN);
/// Request nonce length.
pub const REQUEST_NONCE_LEN: usize = 16;
/// Flag: the payload carries a second-factor operation id and code.
pub const FLAG_SECOND_FACTOR: u8 = 0x01;
/// Shortest accepted second-factor code.
pub const MIN_CODE_LEN: usize = 4;
/// Longest accepted second-factor code.
pub const MAX_CODE_LEN: usize = CODE_SLOT - 1;

// ---- response (PROTOCOL.md §5) ----
/// Total response length, whatever the outcome.
pub const RESPONSE_LEN: usize = 400;
/// Offset of the response's random AEAD nonce (in the clear, authenticated).
///
/// The response key is a function of the request bytes, so a replayed request
/// gets an answer under the same key; a fresh random nonce per answer keeps every
/// (key, nonce) pair unique (a fixed nonce would let anyone XOR two answers).
pub const OFF_RESPONSE_NONCE: usize = 2;
/// Length of the response nonce.
pub const RESPONSE_NONCE_LEN: usize = 12;
/// Offset of the sealed body in a [`MSG_AUTH_RESPONSE`].
pub const OFF_RESPONSE_BODY: usize = OFF_RESPONSE_NONCE + RESPONSE_NONCE_LEN;
/// Offset of the body's tag.
pub const OFF_RESPONSE_TAG: usize = RESPONSE_LEN - TAG_LEN;
/// Length of the response body plaintext.
pub const RESPONSE_BODY_LEN: usize = OFF_RESPONSE_TAG - OFF_RESPONSE_BODY;
/// Status byte.
pub const B_OFF_STATUS: usize = 0;
/// Server time, unix seconds.
pub const B_OFF_SERVER_TIME: usize = 1;
/// Start of the status-specific detail.
pub const B_OFF_DETAIL: usize = 9;
/// ok: token expiry.
pub const B_OFF_EXPIRES_AT: usize = B_OFF_DETAIL;
/// ok: session key.
pub const B_OFF_SESSION_KEY: usize = B_OFF_EXPIRES_AT + 8;
/// ok: the token.
pub const B_OFF_TOKEN: usize = B_OFF_SESSION_KEY + 32;
const _: () = assert!(B_OFF_TOKEN + TOKEN_LEN <= RESPONSE_BODY_LEN);
/// second_factor_required: operation id.
pub const B_OFF_OPERATION: usize = B_OFF_DETAIL;
/// second_factor_required: delivery channel.
pub const B_OFF_CHANNEL: usize = B_OFF_OPERATION + OPERATION_ID_LEN;
/// second_factor_required: masked destination (text slot of 65).
pub const B_OFF_DESTINATION: usize = B_OFF_CHANNEL + 1;
/// Size of the masked destination slot.
pub const DESTINATION_SLOT: usize = 65;
/// second_factor_failed: attempts left.
pub const B_OFF_ATTEMPTS_LEFT: usize = B_OFF_DETAIL;
/// rate_limited: seconds to wait, u32.
pub const B_OFF_RETRY_AFTER: usize = B_OFF_DETAIL;
const _: () = assert!(B_OFF_DESTINATION + DESTINATION_SLOT <= RESPONSE_BODY_LEN);

/// server_key_changed: the key id clients should use now.
pub const K_OFF_CURRENT_KEY_ID: usize = 2;
/// server_key_changed: server time.
pub const K_OFF_SERVER_TIME: usize = K_OFF_CURRENT_KEY_ID + SERVER_KEY_ID_LEN;
/// server_key_changed: Ed25519 signature.
pub const K_OFF_SIGNATURE: usize = K_OFF_SERVER_TIME + 8;
const _: () = assert!(K_OFF_SIGNATURE + SIGNATURE_LEN <= RESPONSE_LEN);

/// What the client asks for in a handshake.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientRequest<'a> {
    /// Audience (resource server) the token is for; empty means the server's default.
    pub audience: &'a str,
    /// Space-separated scopes; empty means all scopes of the key.
    pub scopes: &'a str,
    /// Step-up answer to a previous `second_factor_required`.
    pub second_factor: Option<SecondFactor<'a>>,
}

/// An OTP answer carried inside the encrypted payload.
#[derive(Clone, Copy)]
pub struct SecondFactor<'a> {
    /// The operation id the server returned with `second_factor_required`.
    pub operation: [u8; OPERATION_ID_LEN],
    /// The code the user received (4 to 10 printable ASCII characters).
    pub code: &'a str,
}

impl core::fmt::Debug for SecondFactor<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SecondFactor").field("code", &"[redacted]").finish_non_exhaustive()
    }
}

/// Why request or response bytes were refused before any cryptography.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Not exactly the fixed length of that message.
    #[error("wrong message length {found}, expected exactly {expected}")]
    Length {
        /// Bytes received.
        found: usize,
        /// The protocol constant.
        expected: usize,
    },
    /// Unknown protocol version.
    #[error("unsupported protocol version {0} (this side speaks version 1)")]
    Version(u8),
    /// Unknown message type for this position in the exchange.
    #[error("unexpected message type {0:#04x}")]
    Type(u8),
}

/// Checks length, version and the allowed types; returns the array and its type.
pub(crate) fn check_header<'a, const LEN: usize>(
    bytes: &'a [u8],
    allowed: &[u8],
) -> Result<(&'a [u8; LEN], u8), WireError> {
    let msg: &[u8; LEN] = bytes.try_into().map_err(|_| WireError::Length { found: bytes.len(), expected: LEN })?;
    if msg[OFF_VERSION] != crate::VERSION {
        return Err(WireError::Version(msg[OFF_VERSION]));
    }
    if !allowed.contains(&msg[OFF_TYPE]) {
        return Err(WireError::Type(msg[OFF_TYPE]));
    }
    Ok((msg, msg[OFF_TYPE]))
}

/// A borrowed view of a request's cleartext fields.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Server handshake key id the client used.
    pub server_key_id: &'a [u8; SERVER_KEY_ID_LEN],
    /// Client ephemeral public key.
    pub ephemeral: &'a [u8; 32],
    /// The whole request.
    pub bytes: &'a [u8; REQUEST_LEN],
}

impl<'a> RequestView<'a> {
    /// Checks length, version and type; borrows, never allocates.
    ///
    /// # Errors
    /// [`WireError`] naming what is wrong.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, WireError> {
        let (msg, _) = check_header::<REQUEST_LEN>(bytes, &[MSG_AUTH_REQUEST])?;
        Ok(Self {
            server_key_id: crate::codec::field::<OFF_SERVER_KEY_ID, SERVER_KEY_ID_LEN, REQUEST_LEN>(msg),
            ephemeral: crate::codec::field::<OFF_EPHEMERAL, 32, REQUEST_LEN>(msg),
            bytes: msg,
        })
    }
}
