"""``AsyncClient``: the asyncio client.

The native ``_AsyncClient`` runs the Rust async client on one shared tokio
runtime and hands back asyncio futures, so the event loop never blocks on the
network and cancelling a call cancels the Rust future. This wrapper only makes
each method a real coroutine (usable with ``asyncio.create_task``, ``TaskGroup``
and drivers that check ``inspect.iscoroutinefunction``).
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Union

from ._onetrip import AccessToken, _AsyncClient

__all__ = ["AsyncClient"]


class AsyncClient:
    """The asyncio onetrip client: same arguments and methods as :class:`onetrip.Client`,
    as coroutines. Share one per process; concurrent callers share one handshake."""

    __slots__ = ("_core",)

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
    ) -> None:
        self._core = _AsyncClient(
            server,
            api_key,
            pin=pin,
            trust_on_first_use=trust_on_first_use,
            audience=audience,
            scopes=scopes,
            timeout=timeout,
            retries=retries,
            ca_pem=ca_pem,
        )

    async def token(self) -> AccessToken:
        """A valid access token: cached, or fetched in one roundtrip."""
        return await self._core.token()

    async def token_with_code(self, operation: str, code: str) -> AccessToken:
        """Completes a step-up with ``SecondFactorRequired.operation`` and the user's code."""
        return await self._core.token_with_code(operation, code)

    async def sign_request(self, method: str, path: str, body: bytes = b"") -> Dict[str, str]:
        """Headers for one request to a resource server:
        ``{"Authorization": ..., "Onetrip-PoP": ...}``."""
        return await self._core.sign_request(method, path, body)

    async def login_credential(self, user: str, database: Optional[str] = None) -> str:
        """A database login credential for ``user`` (and ``database``): use it as the
        password of one new connection. A secret: never log it."""
        return await self._core.login_credential(user, database)

    def invalidate(self) -> None:
        """Drops the cached token: the next call fetches a new one."""
        self._core.invalidate()

    @property
    def handshakes(self) -> int:
        """Handshake requests sent so far, retries included."""
        return self._core.handshakes

    def __repr__(self) -> str:
        return repr(self._core)
