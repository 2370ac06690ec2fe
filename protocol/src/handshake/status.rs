//! Status codes of a handshake response (PROTOCOL.md §5.2). One byte on the wire.

/// Outcome of a handshake as the server reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// Token granted.
    Ok,
    /// Unknown key, wrong secret, revoked key or unreadable request: one code for
    /// all, so none of them can be told apart.
    AuthFailed,
    /// The key requires a second factor; the body carries an operation id.
    SecondFactorRequired,
    /// The second-factor code was wrong, expired or already used.
    SecondFactorFailed,
    /// The request timestamp is outside the server's window; the body carries the
    /// server time.
    ClockSkew,
    /// The server key id is no longer accepted (signed answer, never sealed).
    ServerKeyChanged,
    /// Too many requests; the body carries seconds to wait.
    RateLimited,
    /// The request decrypted but its contents are invalid.
    Malformed,
    /// The key may not have the requested scopes or audience.
    ScopeDenied,
    /// The server could not complete the request (e.g. storage failure); retry later.
    ServerError,
}

impl Status {
    /// The wire byte.
    pub const fn code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::AuthFailed => 1,
            Status::SecondFactorRequired => 2,
            Status::SecondFactorFailed => 3,
            Status::ClockSkew => 4,
            Status::ServerKeyChanged => 5,
            Status::RateLimited => 6,
            Status::Malformed => 7,
            Status::ScopeDenied => 8,
            Status::ServerError => 9,
        }
    }

    /// The status for a wire byte, if it is one.
    pub const fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Status::Ok,
            1 => Status::AuthFailed,
            2 => Status::SecondFactorRequired,
            3 => Status::SecondFactorFailed,
            4 => Status::ClockSkew,
            5 => Status::ServerKeyChanged,
            6 => Status::RateLimited,
            7 => Status::Malformed,
            8 => Status::ScopeDenied,
            9 => Status::ServerError,
            _ => return None,
        })
    }

    /// Stable snake_case name, for metrics labels and JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::AuthFailed => "auth_failed",
            Status::SecondFactorRequired => "second_factor_required",
            Status::SecondFactorFailed => "second_factor_failed",
            Status::ClockSkew => "clock_skew",
            Status::ServerKeyChanged => "server_key_changed",
            Status::RateLimited => "rate_limited",
            Status::Malformed => "malformed",
            Status::ScopeDenied => "scope_denied",
            Status::ServerError => "server_error",
        }
    }

    /// Every status, in code order.
    pub const ALL: [Status; 10] = [
        Status::Ok,
        Status::AuthFailed,
        Status::SecondFactorRequired,
        Status::SecondFactorFailed,
        Status::ClockSkew,
        Status::ServerKeyChanged,
        Status::RateLimited,
        Status::Malformed,
        Status::ScopeDenied,
        Status::ServerError,
    ];

    /// Statuses a server may send without having authenticated the client (sealed
    /// under the failure key). Anything else under that key is a protocol violation.
    pub(crate) const fn allowed_unauthenticated(self) -> bool {
        matches!(self, Status::AuthFailed | Status::RateLimited | Status::ServerError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_are_refused() {
        for (i, s) in Status::ALL.iter().enumerate() {
            assert_eq!(usize::from(s.code()), i);
            assert_eq!(Status::from_code(s.code()), Some(*s));
        }
        for code in 10..=255u8 {
            assert_eq!(Status::from_code(code), None);
        }
    }
}
