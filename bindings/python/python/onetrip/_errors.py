"""The exceptions onetrip raises. Every one derives from :class:`onetrip.Error`.

The Rust layer (``bindings/python/src/errors.rs``) maps each Rust error variant to
exactly one of these classes. Messages say what failed and what to do; none ever
contains an API key, token, credential or second-factor code.
"""

from __future__ import annotations

__all__ = [
    "Error",
    "AuthFailed",
    "SecondFactorRequired",
    "SecondFactorFailed",
    "ScopeDenied",
    "ServerIdentityChanged",
    "ClockSkew",
    "Unavailable",
    "Timeout",
    "RateLimited",
    "ProtocolError",
    "HttpError",
    "InvalidInput",
    "TrustFileError",
    "InvalidToken",
]


class Error(Exception):
    """Base class of every onetrip error.

    ``retryable`` is True when retrying later, with nothing changed, may succeed.
    """

    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class AuthFailed(Error):
    """The API key is unknown, wrong or revoked (the server does not say which)."""


class SecondFactorRequired(Error):
    """The key needs a second factor (step-up).

    Get the code the user received over ``channel`` at ``destination`` and call
    ``client.token_with_code(err.operation, code)``.
    """

    def __init__(self, message: str, operation: str, channel: str, destination: str) -> None:
        super().__init__(message)
        #: Operation id (32 hex characters, not secret) to pass to ``token_with_code``.
        self.operation = operation
        #: Where the code went: ``email``, ``webhook``, ``totp`` or ``console``.
        self.channel = channel
        #: Masked destination (e.g. ``a***@example.com``), safe to show the user.
        self.destination = destination


class SecondFactorFailed(Error):
    """The second-factor code was wrong, expired or already used."""

    def __init__(self, message: str, attempts_left: int) -> None:
        super().__init__(message)
        #: Checks left on the operation.
        self.attempts_left = attempts_left


class ScopeDenied(Error):
    """The key may not have the requested audience or scopes."""


class ServerIdentityChanged(Error):
    """The server's identity is not the pinned (or first-seen) one: a rotated
    identity key (update the pin) or an impostor."""

    def __init__(self, message: str, expected: str, found: str) -> None:
        super().__init__(message)
        #: The pinned or remembered fingerprint (``SHA256:…``).
        self.expected = expected
        #: The fingerprint the server presented.
        self.found = found


class ClockSkew(Error):
    """The server still reports clock skew after one correction: fix the system clock."""


class Unavailable(Error):
    """The onetrip server cannot be reached or could not answer (connection refused,
    server error, key document changing). Retry later."""

    retryable = True


class Timeout(Unavailable, TimeoutError):
    """The onetrip server did not answer within the client's ``timeout``."""


class RateLimited(Unavailable):
    """The server asks to slow down; wait ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        #: Seconds to wait before trying again.
        self.retry_after = retry_after


class ProtocolError(Error):
    """A handshake message or the server key document was invalid: traffic was
    altered, the server is not who it claims, or client and server versions differ."""


class HttpError(Error):
    """The server answered with an HTTP 4xx problem (``application/problem+json``)."""

    def __init__(self, message: str, status: int, code: str, detail: str) -> None:
        super().__init__(message)
        #: HTTP status.
        self.status = status
        #: The problem's stable machine-readable code.
        self.code = code
        #: The problem's detail text.
        self.detail = detail


class InvalidInput(Error, ValueError):
    """An argument is invalid (configuration, API key format, pin, audience key,
    operation id, a method or path too long to sign). The message names it and
    never repeats a secret."""


class TrustFileError(Error, OSError):
    """The trust-on-first-use file cannot be read or written."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        #: The file.
        self.path = path


class InvalidToken(Error):
    """The verifier refused a token, proof of possession or login credential.

    ``reason`` is a stable code: ``length``, ``encoding``, ``scheme``, ``version``,
    ``unknown_key``, ``wrong_audience``, ``invalid``, ``malformed``, ``expired``,
    ``not_yet_valid``, ``pop_stale``, ``pop_signature``, ``pop_malformed``; for login
    credentials also ``too_long``, ``prefix``, ``name_too_long``, ``clock_window`` and
    ``bad_proof`` (another user or database, or altered). Tell the peer only that
    authentication failed; log the reason.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        #: Stable machine-readable reason.
        self.reason = reason


# Tracebacks and reprs say `onetrip.AuthFailed`, the name users import.
for _cls in (Error, AuthFailed, SecondFactorRequired, SecondFactorFailed, ScopeDenied, ServerIdentityChanged,
             ClockSkew, Unavailable, Timeout, RateLimited, ProtocolError, HttpError, InvalidInput,
             TrustFileError, InvalidToken):
    _cls.__module__ = "onetrip"
del _cls
