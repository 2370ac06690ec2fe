"""``onetrip.AsyncClient`` against a real ``onetrip serve``: same results as the
blocking client, typed errors, and the event loop keeps running during network calls."""

from __future__ import annotations

import asyncio
import inspect
import time

import pytest

import onetrip


def async_client_for(server, key: str, **kw) -> onetrip.AsyncClient:
    kw.setdefault("pin", server.fingerprint)
    kw.setdefault("audience", "db")
    return onetrip.AsyncClient(server.url, key, **kw)


def test_methods_are_coroutine_functions():
    for name in ["token", "token_with_code", "sign_request"]:
        assert inspect.iscoroutinefunction(getattr(onetrip.AsyncClient, name)), name


def test_async_token_and_signed_request(server, db_key):
    verifier = onetrip.TokenVerifier("db", server.audience_key("db"))

    async def main():
        client = async_client_for(server, db_key)
        # Concurrent callers share one handshake.
        tokens = await asyncio.gather(*(client.token() for _ in range(10)))
        assert len({t.authorization for t in tokens}) == 1
        assert client.handshakes == 1
        headers = await client.sign_request("POST", "/q", b"body")
        return headers, client

    headers, client = asyncio.run(main())
    claims = verifier.verify_request(headers["Authorization"], headers["Onetrip-PoP"], "POST", "/q", b"body")
    assert claims.audience == "db"
    assert "otk_" not in repr(client)


def test_async_errors_are_typed(server, dead_url, db_key):
    made = server.create_key("--name", "gone-async", "--audience", "db")
    server.cli("keys", "revoke", made["id"])

    async def main():
        with pytest.raises(onetrip.AuthFailed):
            await async_client_for(server, made["api_key"]).token()
        with pytest.raises(onetrip.Unavailable):
            await onetrip.AsyncClient(dead_url, db_key, pin=server.fingerprint, timeout=2.0, retries=1).token()
        with pytest.raises(onetrip.InvalidInput):
            await async_client_for(server, db_key).token_with_code("nothex", "1")

    asyncio.run(main())
    with pytest.raises(onetrip.InvalidInput):
        onetrip.AsyncClient(server.url, db_key)  # no pin, no trust on first use


def test_async_step_up(server):
    key = server.create_key("--name", "admin-async", "--audience", "db", "--require-otp", "--otp-to", "console:ops")[
        "api_key"
    ]

    async def main():
        client = async_client_for(server, key)
        with pytest.raises(onetrip.SecondFactorRequired) as e:
            await client.token()
        code = await asyncio.to_thread(server.console_code, e.value.operation)
        with pytest.raises(onetrip.SecondFactorFailed):
            await client.token_with_code(e.value.operation, "0000000")
        token = await client.token_with_code(e.value.operation, code)
        assert token.second_factor
        assert (await client.token()).second_factor  # cached

    asyncio.run(main())


def test_event_loop_is_not_blocked_during_a_token_fetch(black_hole, server, db_key):
    """A 10 ms ticker keeps ticking while a fetch waits 1 s on a silent server."""

    async def main():
        client = onetrip.AsyncClient(black_hole.url, db_key, pin=server.fingerprint, timeout=1.0, retries=1)
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick_task = asyncio.create_task(ticker())
        started = time.monotonic()
        with pytest.raises(onetrip.Timeout):
            await client.token()
        elapsed = time.monotonic() - started
        tick_task.cancel()
        return ticks, elapsed

    ticks, elapsed = asyncio.run(main())
    assert elapsed >= 0.9
    # A blocked loop would tick at most once; a free one about 100 times.
    assert ticks >= 30, ticks


def test_cancelling_a_fetch_returns_at_once(black_hole, server, db_key):
    async def main():
        client = onetrip.AsyncClient(black_hole.url, db_key, pin=server.fingerprint, timeout=5.0, retries=1)
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(client.token(), 0.2)
        return time.monotonic() - started

    assert asyncio.run(main()) < 1.0
