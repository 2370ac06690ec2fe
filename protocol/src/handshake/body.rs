//! The response body plaintext (PROTOCOL.md §5.2): status ‖ server time ‖ detail,
//! zero-padded to [`RESPONSE_BODY_LEN`]. The server encodes a [`Reply`]; the client
//! decodes an [`Outcome`].

use super::status::Status;
use super::*;
use crate::codec::{field, field_mut, read_text, read_u64, write_text, write_u64};
use crate::secret::Secret;
use crate::token::Token;

type Body = [u8; RESPONSE_BODY_LEN];

/// Where a second-factor code was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Channel {
    /// Email (SMTP).
    Email,
    /// Signed webhook (SMS gateways, push).
    Webhook,
    /// Authenticator app (RFC 6238): nothing was sent.
    Totp,
    /// Printed on the server console (development only).
    Console,
}

impl Channel {
    /// Wire byte.
    pub const fn code(self) -> u8 {
        match self {
            Channel::Email => 1,
            Channel::Webhook => 2,
            Channel::Totp => 3,
            Channel::Console => 4,
        }
    }
    /// From a wire byte.
    pub const fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => Channel::Email,
            2 => Channel::Webhook,
            3 => Channel::Totp,
            4 => Channel::Console,
            _ => return None,
        })
    }
    /// Stable lowercase name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Webhook => "webhook",
            Channel::Totp => "totp",
            Channel::Console => "console",
        }
    }
}

/// What the server answers to an authenticated (or failed) request.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Reply<'a> {
    /// A token and its session key.
    Granted {
        /// The sealed token.
        token: &'a Token,
        /// The session key sealed inside it.
        session_key: &'a Secret<32>,
        /// Token expiry, unix seconds.
        expires_at: u64,
    },
    /// See [`Status::AuthFailed`].
    AuthFailed,
    /// See [`Status::SecondFactorRequired`].
    SecondFactorRequired {
        /// Operation id to send back with the code.
        operation: [u8; OPERATION_ID_LEN],
        /// Where the code went.
        channel: Channel,
        /// Masked destination for the user (e.g. `a***@example.com`), ≤ 64 bytes.
        destination: &'a str,
    },
    /// See [`Status::SecondFactorFailed`].
    SecondFactorFailed {
        /// Checks left on this operation.
        attempts_left: u8,
    },
    /// See [`Status::ClockSkew`]; the body carries the server time.
    ClockSkew,
    /// See [`Status::RateLimited`].
    RateLimited {
        /// Seconds to wait.
        retry_after_secs: u32,
    },
    /// See [`Status::Malformed`].
    Malformed,
    /// See [`Status::ScopeDenied`].
    ScopeDenied,
    /// See [`Status::ServerError`].
    ServerError,
}

impl Reply<'_> {
    /// The status this reply carries.
    pub fn status(&self) -> Status {
        match self {
            Reply::Granted { .. } => Status::Ok,
            Reply::AuthFailed => Status::AuthFailed,
            Reply::SecondFactorRequired { .. } => Status::SecondFactorRequired,
            Reply::SecondFactorFailed { .. } => Status::SecondFactorFailed,
            Reply::ClockSkew => Status::ClockSkew,
            Reply::RateLimited { .. } => Status::RateLimited,
            Reply::Malformed => Status::Malformed,
            Reply::ScopeDenied => Status::ScopeDenied,
            Reply::ServerError => Status::ServerError,
        }
    }

    /// Writes the body. A destination hint that does not fit is left out rather than
    /// failing the whole handshake.
    pub(crate) fn encode(&self, server_time: u64, body: &mut Body) {
        body.fill(0);
        body[B_OFF_STATUS] = self.status().code();
        write_u64::<B_OFF_SERVER_TIME, RESPONSE_BODY_LEN>(body, server_time);
        match *self {
            Reply::Granted { token, session_key, expires_at } => {
                write_u64::<B_OFF_EXPIRES_AT, RESPONSE_BODY_LEN>(body, expires_at);
                field_mut::<B_OFF_SESSION_KEY, 32, RESPONSE_BODY_LEN>(body).copy_from_slice(session_key.expose());
                field_mut::<B_OFF_TOKEN, TOKEN_LEN, RESPONSE_BODY_LEN>(body).copy_from_slice(token.as_bytes());
            }
            Reply::SecondFactorRequired { operation, channel, destination } => {
                *field_mut::<B_OFF_OPERATION, OPERATION_ID_LEN, RESPONSE_BODY_LEN>(body) = operation;
                body[B_OFF_CHANNEL] = channel.code();
                let slot = field_mut::<B_OFF_DESTINATION, DESTINATION_SLOT, RESPONSE_BODY_LEN>(body);
                if write_text(slot, destination).is_err() {
                    slot.fill(0);
                }
            }
            Reply::SecondFactorFailed { attempts_left } => body[B_OFF_ATTEMPTS_LEFT] = attempts_left,
            Reply::RateLimited { retry_after_secs } => {
                field_mut::<B_OFF_RETRY_AFTER, 4, RESPONSE_BODY_LEN>(body)
                    .copy_from_slice(&retry_after_secs.to_be_bytes());
            }
            Reply::AuthFailed | Reply::ClockSkew | Reply::Malformed | Reply::ScopeDenied | Reply::ServerError => {}
        }
    }
}

/// A granted token as the client receives it.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    /// The sealed token to present to resource servers.
    pub token: Token,
    /// Session key for proof-of-possession signatures.
    pub session_key: Secret<32>,
    /// Token expiry, unix seconds (server clock).
    pub expires_at: u64,
    /// Server time when the token was issued.
    pub server_time: u64,
}

/// The server's answer as the client reads it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Outcome {
    /// Authenticated; here is the token (boxed: it is by far the largest variant).
    Granted(Box<TokenGrant>),
    /// Unknown key, wrong secret or revoked key.
    AuthFailed,
    /// Answer again with a code sent over `channel`.
    SecondFactorRequired {
        /// Operation id to echo with the code.
        operation: [u8; OPERATION_ID_LEN],
        /// Where the code was sent.
        channel: Channel,
        /// Masked destination, for showing to the user.
        destination: String,
    },
    /// Wrong, expired or used code.
    SecondFactorFailed {
        /// Checks left.
        attempts_left: u8,
    },
    /// Client clock outside the server window: adjust by `server_time` and retry once.
    ClockSkew {
        /// Server time, unix seconds (authenticated by the response key).
        server_time: u64,
    },
    /// The server no longer accepts the key id used: refetch the document, retry once.
    ServerKeyChanged {
        /// Key id the server uses now.
        current_key_id: [u8; crate::server_key::SERVER_KEY_ID_LEN],
        /// Server time (signed).
        server_time: u64,
    },
    /// Wait this long.
    RateLimited {
        /// Seconds.
        retry_after_secs: u32,
    },
    /// The server could not read the decrypted request (client bug or version skew).
    Malformed,
    /// The key may not have what was asked for.
    ScopeDenied,
    /// Server-side failure; retry later.
    ServerError,
}

impl Outcome {
    /// The status code behind this outcome.
    pub fn status(&self) -> Status {
        match self {
            Outcome::Granted(_) => Status::Ok,
            Outcome::AuthFailed => Status::AuthFailed,
            Outcome::SecondFactorRequired { .. } => Status::SecondFactorRequired,
            Outcome::SecondFactorFailed { .. } => Status::SecondFactorFailed,
            Outcome::ClockSkew { .. } => Status::ClockSkew,
            Outcome::ServerKeyChanged { .. } => Status::ServerKeyChanged,
            Outcome::RateLimited { .. } => Status::RateLimited,
            Outcome::Malformed => Status::Malformed,
            Outcome::ScopeDenied => Status::ScopeDenied,
            Outcome::ServerError => Status::ServerError,
        }
    }

    /// Decodes a body that opened under a response key. `None` for a body no honest
    /// server writes (unknown status or channel, bad token version, bad text slot).
    pub(crate) fn decode(body: &Body) -> Option<Self> {
        let status = Status::from_code(body[B_OFF_STATUS])?;
        let server_time = read_u64::<B_OFF_SERVER_TIME, RESPONSE_BODY_LEN>(body);
        Some(match status {
            Status::Ok => Outcome::Granted(Box::new(TokenGrant {
                token: Token::from_array(*field::<B_OFF_TOKEN, TOKEN_LEN, RESPONSE_BODY_LEN>(body)).ok()?,
                session_key: Secret::new(*field::<B_OFF_SESSION_KEY, 32, RESPONSE_BODY_LEN>(body)),
                expires_at: read_u64::<B_OFF_EXPIRES_AT, RESPONSE_BODY_LEN>(body),
                server_time,
            })),
            Status::AuthFailed => Outcome::AuthFailed,
            Status::SecondFactorRequired => Outcome::SecondFactorRequired {
                operation: *field::<B_OFF_OPERATION, OPERATION_ID_LEN, RESPONSE_BODY_LEN>(body),
                channel: Channel::from_code(body[B_OFF_CHANNEL])?,
                destination: read_text(field::<B_OFF_DESTINATION, DESTINATION_SLOT, RESPONSE_BODY_LEN>(body))
                    .ok()?
                    .to_owned(),
            },
            Status::SecondFactorFailed => Outcome::SecondFactorFailed { attempts_left: body[B_OFF_ATTEMPTS_LEFT] },
            Status::ClockSkew => Outcome::ClockSkew { server_time },
            Status::RateLimited => Outcome::RateLimited {
                retry_after_secs: u32::from_be_bytes(*field::<B_OFF_RETRY_AFTER, 4, RESPONSE_BODY_LEN>(body)),
            },
            Status::Malformed => Outcome::Malformed,
            Status::ScopeDenied => Outcome::ScopeDenied,
            Status::ServerError => Outcome::ServerError,
            // Only ever sent signed in a MSG_SERVER_KEY_CHANGED, never sealed.
            Status::ServerKeyChanged => return None,
        })
    }
}
