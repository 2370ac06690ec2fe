"""Type stubs for the native module ``onetrip._onetrip`` (Rust, PyO3).

Import from ``onetrip``, not from here.
"""

import os
from typing import Any, Awaitable, Dict, List, Optional, Union, final

__version__: str
AUTHORIZATION_SCHEME: str
"""``"Onetrip"``: the scheme of the ``Authorization`` header value."""
LOGIN_CREDENTIAL_MAX_LEN: int
"""Longest login credential, in characters (every credential has this length)."""
POP_HEADER: str
"""``"Onetrip-PoP"``: the header carrying the proof of possession."""

@final
class AccessToken:
    """A short-lived access token; its session key stays in Rust. ``repr`` shows only times."""

    @property
    def authorization(self) -> str:
        """The ``Authorization`` header value, ``Onetrip <base64url token>``. A secret: never log it."""
    @property
    def issued_at(self) -> int:
        """Issue time, server clock, unix seconds."""
    @property
    def expires_at(self) -> int:
        """Expiry, server clock, unix seconds."""
    @property
    def refresh_at(self) -> int:
        """Local unix time from which the client fetches a new token (80% of the lifetime)."""
    @property
    def second_factor(self) -> bool:
        """True when a second factor was verified for this token."""

@final
class Client:
    """A blocking onetrip client: fetches, caches and refreshes tokens, signs requests.

    Thread-safe (share one per process); releases the GIL while it waits on the
    network. Give exactly one of ``pin`` (the ``SHA256:…`` fingerprint
    ``onetrip server-key show`` prints; recommended) or ``trust_on_first_use`` (a
    file that remembers the first identity seen). ``audience`` defaults to the
    server's, ``scopes`` to all of the key's; ``timeout`` is per request in
    seconds; ``retries`` counts attempts for transport errors, timeouts and 503;
    ``ca_pem`` trusts this CA for ``https://`` servers instead of the web PKI roots.

    Raises :class:`onetrip.InvalidInput` for a bad argument; makes no network call.
    """

    def __init__(
        self,
        server: str,
        api_key: str,
        *,
        pin: Optional[str] = None,
        trust_on_first_use: Optional[Union[str, "os.PathLike[str]"]] = None,
        audience: Optional[str] = None,
        scopes: Optional[List[str]] = None,
        timeout: float = 10.0,
        retries: int = 3,
        ca_pem: Optional[Union[str, bytes]] = None,
    ) -> None: ...
    def token(self) -> AccessToken:
        """A valid access token: cached, or fetched in one roundtrip.

        Raises :class:`onetrip.SecondFactorRequired` for a key that needs a
        second factor, or another :class:`onetrip.Error`.
        """
    def token_with_code(self, operation: str, code: str) -> AccessToken:
        """Completes a step-up: ``operation`` from ``SecondFactorRequired.operation``,
        ``code`` as the user received it. Raises :class:`onetrip.SecondFactorFailed`
        for a wrong, expired or used code."""
    def sign_request(self, method: str, path: str, body: bytes = b"") -> Dict[str, str]:
        """Headers for one request to a resource server:
        ``{"Authorization": "Onetrip …", "Onetrip-PoP": "…"}``. ``path`` includes the query."""
    def login_credential(self, user: str, database: Optional[str] = None) -> str:
        """A database login credential for ``user`` (and ``database``, when the
        database can see it): the password for one new connection, at most
        ``LOGIN_CREDENTIAL_MAX_LEN`` characters, valid for about a minute, bound to
        user, database, audience and time. A secret: never log it."""
    def invalidate(self) -> None:
        """Drops the cached token: the next call fetches a new one."""
    @property
    def handshakes(self) -> int:
        """Handshake requests sent so far, retries included."""

@final
class _AsyncClient:
    """Native half of :class:`onetrip.AsyncClient`: methods return asyncio awaitables."""

    def __init__(
        self,
        server: str,
        api_key: str,
        *,
        pin: Optional[str] = None,
        trust_on_first_use: Optional[Union[str, "os.PathLike[str]"]] = None,
        audience: Optional[str] = None,
        scopes: Optional[List[str]] = None,
        timeout: float = 10.0,
        retries: int = 3,
        ca_pem: Optional[Union[str, bytes]] = None,
    ) -> None: ...
    def token(self) -> Awaitable[AccessToken]: ...
    def token_with_code(self, operation: str, code: str) -> Awaitable[AccessToken]: ...
    def sign_request(self, method: str, path: str, body: bytes = b"") -> Awaitable[Dict[str, str]]: ...
    def login_credential(self, user: str, database: Optional[str] = None) -> Awaitable[str]: ...
    def invalidate(self) -> None: ...
    @property
    def handshakes(self) -> int: ...

@final
class Claims:
    """What a verified token says. The session key stays in Rust."""

    @property
    def token_id(self) -> str:
        """Unique token id, 32 hex characters."""
    @property
    def api_key_id(self) -> str:
        """Id of the API key the token was issued to (hex, as ``onetrip keys list`` shows)."""
    @property
    def issued_at(self) -> int:
        """Issue time, unix seconds."""
    @property
    def expires_at(self) -> int:
        """Expiry, unix seconds."""
    @property
    def second_factor(self) -> bool:
        """True when a second factor was verified for the token."""
    @property
    def audience(self) -> str:
        """The audience."""
    @property
    def scopes(self) -> List[str]:
        """The granted scopes."""
    @property
    def replay_id(self) -> Optional[str]:
        """From ``verify_request`` (or ``verify_login``): the proof's (credential's)
        replay id, 32 hex. Remember it for ``window`` seconds and refuse a second
        use. ``None`` from ``verify``."""
    def has_scope(self, scope: str) -> bool:
        """True when ``scope`` is one of the granted scopes."""

@final
class TokenVerifier:
    """Checks onetrip tokens for one audience, in-process, with only that audience's key.

    ``audience_key`` is what ``onetrip audience-key <audience>`` prints: one
    ``<key id hex>:<key hex>`` line per key, current first. Raises
    :class:`onetrip.InvalidInput` for a malformed key (the message never repeats it).
    """

    def __init__(self, audience: str, audience_key: str) -> None: ...
    @property
    def audience(self) -> str:
        """The audience this verifier is for."""
    def verify(self, token: Union[str, bytes], now: Optional[int] = None) -> Claims:
        """Verifies a token (``Onetrip <token>``, bare base64url, or the raw bytes) at
        ``now`` (unix seconds; default the system clock). Raises :class:`onetrip.InvalidToken`.

        Without a proof of possession the token is a bearer token: accept that only over TLS.
        """
    def verify_request(
        self,
        authorization: Union[str, bytes],
        pop: str,
        method: str,
        path: str,
        body: bytes = b"",
        now: Optional[int] = None,
        window: int = 60,
    ) -> Claims:
        """Verifies a token and the request's proof of possession (method, path with
        query, body) within ``window`` seconds. Raises :class:`onetrip.InvalidToken`."""

    def verify_login(
        self, credential: str, user: str, database: Optional[str] = None, now: Optional[int] = None
    ) -> "VerifiedLogin":
        """Verifies a database login credential for ``user`` (and ``database``, when it
        was bound) at ``now``. Raises :class:`onetrip.InvalidToken` (``reason``:
        ``bad_proof`` for another user or database, ``clock_window``, ``expired``, …).
        To refuse replays, remember ``replay_id`` until ``not_after``."""

@final
class VerifiedLogin:
    """An accepted login credential."""

    @property
    def claims(self) -> Claims:
        """The token's claims."""
    @property
    def replay_id(self) -> str:
        """Replay id of this credential (32 hex): refuse a second login with it."""
    @property
    def not_after(self) -> int:
        """Unix seconds after which the credential is refused anyway; forget the replay id then."""
