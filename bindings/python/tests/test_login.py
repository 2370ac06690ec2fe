"""Database login credentials: made by the client, verified in-process by the
database side with only its audience key (``TokenVerifier.verify_login``)."""

from __future__ import annotations

import asyncio
import time

import pytest

import onetrip


@pytest.fixture
def verifier(server) -> onetrip.TokenVerifier:
    return onetrip.TokenVerifier("db", server.audience_key("db"))


def test_login_credential_round_trip(server, db_key, verifier):
    client = onetrip.Client(server.url, db_key, pin=server.fingerprint, audience="db")
    credential = client.login_credential("app", "orders")
    assert isinstance(credential, str) and len(credential) <= onetrip.LOGIN_CREDENTIAL_MAX_LEN < 1000
    v = verifier.verify_login(credential, "app", "orders")
    assert v.claims.audience == "db" and v.claims.has_scope("db:read")
    assert len(v.replay_id) == 32 and v.not_after > time.time()
    assert credential not in repr(v) and credential[10:40] not in repr(v.claims)
    # Each call is a fresh credential (own nonce, own replay id).
    again = client.login_credential("app", "orders")
    assert again != credential
    assert verifier.verify_login(again, "app", "orders").replay_id != v.replay_id
    # Without a database name.
    assert verifier.verify_login(client.login_credential("app"), "app").claims.audience == "db"


def test_login_credential_is_bound_to_user_database_audience_and_time(server, db_key, verifier):
    client = onetrip.Client(server.url, db_key, pin=server.fingerprint, audience="db")
    credential = client.login_credential("app", "orders")
    refusals = {
        "another user": (lambda: verifier.verify_login(credential, "admin", "orders"), "bad_proof"),
        "another database": (lambda: verifier.verify_login(credential, "app", "billing"), "bad_proof"),
        "no database": (lambda: verifier.verify_login(credential, "app"), "bad_proof"),
        "later": (lambda: verifier.verify_login(credential, "app", "orders", now=int(time.time()) + 600), None),
        "tampered": (lambda: verifier.verify_login(credential[:-2] + ("AA" if credential[-2:] != "AA" else "BB"), "app", "orders"), None),
        "truncated": (lambda: verifier.verify_login(credential[:-1], "app", "orders"), None),
        "not a credential": (lambda: verifier.verify_login("hunter2", "app", "orders"), None),
        "too long": (lambda: verifier.verify_login("otl1." + "A" * 5000, "app", "orders"), "too_long"),
    }
    for name, (call, reason) in refusals.items():
        with pytest.raises(onetrip.InvalidToken) as e:
            call()
        if reason:
            assert e.value.reason == reason, name
        assert credential not in str(e.value), name
    server.create_key("--name", "billing-owner", "--audience", "billing")
    other = onetrip.TokenVerifier("billing", server.audience_key("billing"))
    with pytest.raises(onetrip.InvalidToken):
        other.verify_login(credential, "app", "orders")


def test_login_credential_bad_inputs(server, db_key):
    client = onetrip.Client(server.url, db_key, pin=server.fingerprint, audience="db")
    with pytest.raises(onetrip.InvalidInput):
        client.login_credential("u" * 256)
    with pytest.raises(onetrip.InvalidInput):
        client.login_credential("app", "d" * 256)
    with pytest.raises(TypeError):
        client.login_credential(None)  # type: ignore[arg-type]


def test_async_login_credential(server, db_key, verifier):
    async def main() -> str:
        client = onetrip.AsyncClient(server.url, db_key, pin=server.fingerprint, audience="db")
        return await client.login_credential("app", "orders")

    credential = asyncio.run(main())
    assert verifier.verify_login(credential, "app", "orders").claims.audience == "db"
