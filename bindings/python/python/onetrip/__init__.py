"""onetrip for Python: short-lived, proof-of-possession tokens from an onetrip
server in one roundtrip, request signing, database login credentials, and the
in-process verifier for resource servers.

>>> import onetrip
>>> client = onetrip.Client("http://127.0.0.1:7420", "otk_…", pin="SHA256:…", audience="db")
>>> headers = client.sign_request("POST", "/query", b"select 1")  # doctest: +SKIP
>>> password = client.login_credential("app", "orders")  # doctest: +SKIP

:class:`Client` blocks (releasing the GIL); :class:`AsyncClient` is its asyncio
twin; :class:`TokenVerifier` is the resource-server side. Errors derive from
:class:`Error`.
"""

from ._async import AsyncClient
from ._errors import (
    AuthFailed,
    ClockSkew,
    Error,
    HttpError,
    InvalidInput,
    InvalidToken,
    ProtocolError,
    RateLimited,
    ScopeDenied,
    SecondFactorFailed,
    SecondFactorRequired,
    ServerIdentityChanged,
    Timeout,
    TrustFileError,
    Unavailable,
)
from ._onetrip import (
    AUTHORIZATION_SCHEME,
    LOGIN_CREDENTIAL_MAX_LEN,
    POP_HEADER,
    AccessToken,
    Claims,
    Client,
    TokenVerifier,
    VerifiedLogin,
    __version__,
)

__all__ = [
    "AUTHORIZATION_SCHEME",
    "LOGIN_CREDENTIAL_MAX_LEN",
    "POP_HEADER",
    "AccessToken",
    "AsyncClient",
    "AuthFailed",
    "Claims",
    "Client",
    "ClockSkew",
    "Error",
    "HttpError",
    "InvalidInput",
    "InvalidToken",
    "ProtocolError",
    "RateLimited",
    "ScopeDenied",
    "SecondFactorFailed",
    "SecondFactorRequired",
    "ServerIdentityChanged",
    "Timeout",
    "TokenVerifier",
    "TrustFileError",
    "Unavailable",
    "VerifiedLogin",
    "__version__",
]
