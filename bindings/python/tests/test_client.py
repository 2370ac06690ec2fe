"""The blocking client and the verifier against a real ``onetrip serve``."""

from __future__ import annotations

import base64
import re
import threading
import time

import pytest

import onetrip


def client_for(server, key: str, **kw) -> onetrip.Client:
    kw.setdefault("pin", server.fingerprint)
    kw.setdefault("audience", "db")
    return onetrip.Client(server.url, key, **kw)


def test_token_is_cached_and_repr_hides_secrets(server, db_key):
    client = client_for(server, db_key, scopes=["db:read"])
    token = client.token()
    assert token.authorization.startswith("Onetrip ")
    assert token.expires_at > token.issued_at and token.second_factor is False
    assert client.token().authorization == token.authorization
    assert client.handshakes == 1
    secret_part = db_key[8:]
    for shown in (repr(client), repr(token), str(token)):
        assert secret_part not in shown and token.authorization.split(" ")[1] not in shown
    client.invalidate()
    assert client.token().authorization != token.authorization
    assert client.handshakes == 2


def test_sign_request_is_verified_by_token_verifier(server, db_key):
    client = client_for(server, db_key)
    headers = client.sign_request("POST", "/query?x=1", b"select 1")
    assert set(headers) == {"Authorization", onetrip.POP_HEADER}
    verifier = onetrip.TokenVerifier("db", server.audience_key("db"))
    claims = verifier.verify_request(
        headers["Authorization"], headers["Onetrip-PoP"], "POST", "/query?x=1", b"select 1"
    )
    assert claims.audience == "db" and claims.scopes == ["db:read"] and claims.has_scope("db:read")
    assert re.fullmatch(r"[0-9a-f]{32}", claims.replay_id)
    assert re.fullmatch(r"[0-9a-f]{32}", claims.token_id)
    assert "session" not in repr(claims).lower() or "redacted" in repr(claims).lower()
    # The bearer check alone, from the header or the bare token.
    assert verifier.verify(headers["Authorization"]).token_id == claims.token_id
    assert verifier.verify(headers["Authorization"].split(" ", 1)[1]).replay_id is None
    # The proof covers method, path and body.
    for method, path, body in [("POST", "/query?x=1", b"select 2"), ("GET", "/query?x=1", b"select 1"), ("POST", "/other", b"select 1")]:
        with pytest.raises(onetrip.InvalidToken) as e:
            verifier.verify_request(headers["Authorization"], headers["Onetrip-PoP"], method, path, body)
        assert e.value.reason == "pop_signature"
    # Outside the window.
    with pytest.raises(onetrip.InvalidToken) as e:
        verifier.verify_request(
            headers["Authorization"], headers["Onetrip-PoP"], "POST", "/query?x=1", b"select 1", now=int(time.time()) + 600
        )
    assert e.value.reason in ("pop_stale", "expired")
    # Expired.
    with pytest.raises(onetrip.InvalidToken) as e:
        verifier.verify(headers["Authorization"], now=claims.expires_at + 1)
    assert e.value.reason == "expired"


def test_verifier_for_another_audience_refuses(server, db_key):
    server.create_key("--name", "other", "--audience", "billing")
    headers = client_for(server, db_key).sign_request("GET", "/", b"")
    other = onetrip.TokenVerifier("billing", server.audience_key("billing"))
    with pytest.raises(onetrip.InvalidToken) as e:
        other.verify(headers["Authorization"])
    assert e.value.reason == "wrong_audience"
    # The db key under the wrong audience name is not a db verifier either.
    wrong_name = onetrip.TokenVerifier("billing", server.audience_key("db"))
    with pytest.raises(onetrip.InvalidToken):
        wrong_name.verify(headers["Authorization"])


def test_tampered_token_is_invalid(server, db_key):
    auth = client_for(server, db_key).token().authorization
    raw = bytearray(base64.urlsafe_b64decode(auth.split(" ")[1] + "=="))
    raw[100] ^= 1
    verifier = onetrip.TokenVerifier("db", server.audience_key("db"))
    with pytest.raises(onetrip.InvalidToken) as e:
        verifier.verify(bytes(raw))
    assert e.value.reason == "invalid"


def test_revoked_key_is_auth_failed(server):
    made = server.create_key("--name", "gone", "--audience", "db")
    server.cli("keys", "revoke", made["id"])
    with pytest.raises(onetrip.AuthFailed) as e:
        client_for(server, made["api_key"]).token()
    assert e.value.retryable is False
    assert made["api_key"] not in str(e.value)


def test_key_of_another_deployment_is_auth_failed(server, tmp_path):
    # A well-formed key (valid checksum) this server never issued: API keys carry
    # a checksum, so only another server can mint one.
    from conftest import Server

    other = Server(server.binary, tmp_path / "other", [])
    try:
        foreign = other.create_key("--name", "foreign", "--audience", "db")["api_key"]
    finally:
        other.stop()
    with pytest.raises(onetrip.AuthFailed):
        client_for(server, foreign).token()


def test_wrong_pin_is_server_identity_changed(server, db_key):
    other = "SHA256:" + base64.b64encode(bytes(32)).decode().rstrip("=")
    with pytest.raises(onetrip.ServerIdentityChanged) as e:
        client_for(server, db_key, pin=other).token()
    assert e.value.expected == other and e.value.found == server.fingerprint


def test_trust_on_first_use_remembers_the_identity(server, db_key, tmp_path):
    path = tmp_path / "known"
    client = onetrip.Client(server.url, db_key, trust_on_first_use=str(path), audience="db")
    client.token()
    assert path.read_text().strip() == server.fingerprint


def test_server_down_is_unavailable(dead_url, db_key, server):
    client = onetrip.Client(dead_url, db_key, pin=server.fingerprint, timeout=2.0, retries=1)
    with pytest.raises(onetrip.Unavailable) as e:
        client.token()
    assert e.value.retryable is True


def test_silent_server_is_timeout(black_hole, db_key, server):
    client = onetrip.Client(black_hole.url, db_key, pin=server.fingerprint, timeout=0.5, retries=1)
    with pytest.raises(onetrip.Timeout) as e:
        client.token()
    assert isinstance(e.value, TimeoutError) and isinstance(e.value, onetrip.Unavailable)


def test_step_up_with_console_code(server):
    key = server.create_key("--name", "admin", "--audience", "db", "--require-otp", "--otp-to", "console:ops")["api_key"]
    client = client_for(server, key)
    with pytest.raises(onetrip.SecondFactorRequired) as e:
        client.token()
    err = e.value
    assert re.fullmatch(r"[0-9a-f]{32}", err.operation)
    assert err.channel == "console" and err.destination
    code = server.console_code(err.operation)
    assert code not in str(err)
    with pytest.raises(onetrip.SecondFactorFailed) as failed:
        client.token_with_code(err.operation, "0000000")
    assert failed.value.attempts_left == 4
    token = client.token_with_code(err.operation, code)
    assert token.second_factor is True
    headers = client.sign_request("GET", "/admin")
    claims = onetrip.TokenVerifier("db", server.audience_key("db")).verify_request(
        headers["Authorization"], headers["Onetrip-PoP"], "GET", "/admin"
    )
    assert claims.second_factor is True


def test_gil_is_released_during_a_network_call(black_hole, db_key, server):
    """A Python thread keeps running while another waits on the network: the counter
    runs and stops while the fetch (1.5 s against a silent server) is still waiting.
    Were the GIL held, the main thread could not even wake before the fetch ended."""
    client = onetrip.Client(black_hole.url, db_key, pin=server.fingerprint, timeout=1.5, retries=1)
    counts = []
    stop = threading.Event()

    def count() -> None:
        n = 0
        while not stop.is_set():
            n += 1
        counts.append(n)

    started = threading.Event()
    result = {}

    def fetch() -> None:
        started.set()
        try:
            client.token()
        except onetrip.Error as e:
            result["err"] = e

    t = threading.Thread(target=fetch)
    t0 = time.monotonic()
    t.start()
    started.wait()
    time.sleep(0.1)  # the fetch is now inside Rust, waiting on the black hole
    counter = threading.Thread(target=count)
    counter.start()
    time.sleep(0.3)
    stop.set()
    counter.join()
    assert t.is_alive() and time.monotonic() - t0 < 1.2, "Python could not run while the fetch held the GIL"
    assert counts[0] > 10_000
    t.join()
    assert isinstance(result.get("err"), onetrip.Timeout)


def test_bad_inputs_raise_typed_errors(server, db_key):
    fp = server.fingerprint
    bad_clients = [
        dict(server="not a url", api_key=db_key, pin=fp),
        dict(server=server.url, api_key="garbage", pin=fp),
        dict(server=server.url, api_key="otk_" + "A" * 60, pin=fp),
        dict(server=server.url, api_key=db_key, pin="nope"),
        dict(server=server.url, api_key=db_key),  # neither pin nor trust on first use
        dict(server=server.url, api_key=db_key, pin=fp, timeout=-1),
        dict(server=server.url, api_key=db_key, pin=fp, timeout=float("nan")),
        dict(server=server.url, api_key=db_key, pin=fp, audience="has space"),
        dict(server=server.url, api_key=db_key, pin=fp, audience="x" * 65),
        dict(server=server.url, api_key=db_key, pin=fp, scopes=[""]),
        dict(server=server.url, api_key=db_key, pin=fp, ca_pem="not a pem"),
    ]
    for kw in bad_clients:
        with pytest.raises(onetrip.InvalidInput) as e:
            onetrip.Client(kw.pop("server"), kw.pop("api_key"), **kw)
        assert isinstance(e.value, ValueError)
        assert db_key[8:] not in str(e.value)
    client = client_for(server, db_key)
    for op in ["", "zz", "0" * 31, "0" * 33, "g" * 32]:
        with pytest.raises(onetrip.InvalidInput):
            client.token_with_code(op, "123456")
    with pytest.raises(onetrip.InvalidInput):
        client.sign_request("GET" * 30_000, "/")
    with pytest.raises(TypeError):
        client.sign_request("GET", "/", "a str body")  # bytes only
    with pytest.raises(TypeError):
        onetrip.Client(None, db_key, pin=fp)  # type: ignore[arg-type]

    key = server.audience_key("db")
    for bad in ["", "garbage", "00:11", key.split(":")[0] + ":" + "zz" * 32]:
        with pytest.raises(onetrip.InvalidInput) as e:
            onetrip.TokenVerifier("db", bad)
        assert key.split(":")[1].strip() not in str(e.value)
    with pytest.raises(onetrip.InvalidInput):
        onetrip.TokenVerifier("x" * 65, key)
    verifier = onetrip.TokenVerifier("db", key)
    assert key.split(":")[1].strip() not in repr(verifier)
    cases = {
        "garbage": "length",
        "Onetrip " + "!" * 427: "encoding",
        "Bearer abc": "scheme",
        "": "length",
    }
    for token, reason in cases.items():
        with pytest.raises(onetrip.InvalidToken) as e:
            verifier.verify(token)
        assert e.value.reason == reason, token
    for raw in [b"", b"\x00" * 320, b"\x01" * 320, b"\x01" * 321]:
        with pytest.raises(onetrip.InvalidToken):
            verifier.verify(raw)
    auth = client.token().authorization
    for pop in ["", "x" * 71, "!" * 71]:
        with pytest.raises(onetrip.InvalidToken) as e:
            verifier.verify_request(auth, pop, "GET", "/")
        assert e.value.reason == "pop_malformed"


def test_exception_hierarchy():
    classes = [
        onetrip.AuthFailed, onetrip.SecondFactorRequired, onetrip.SecondFactorFailed, onetrip.ScopeDenied,
        onetrip.ServerIdentityChanged, onetrip.ClockSkew, onetrip.Unavailable, onetrip.Timeout,
        onetrip.RateLimited, onetrip.ProtocolError, onetrip.HttpError, onetrip.InvalidInput,
        onetrip.TrustFileError, onetrip.InvalidToken,
    ]
    for cls in classes:
        assert issubclass(cls, onetrip.Error) and cls.__doc__
    assert issubclass(onetrip.Timeout, TimeoutError) and issubclass(onetrip.RateLimited, onetrip.Unavailable)
    assert issubclass(onetrip.InvalidInput, ValueError)
    for obj in [onetrip.Client, onetrip.AsyncClient, onetrip.TokenVerifier, onetrip.Claims, onetrip.AccessToken]:
        assert obj.__doc__
