"""A driver's side of onetrip: signed headers for each new connection, with step-up.

ONETRIP_SERVER=http://127.0.0.1:7420 ONETRIP_API_KEY=otk_… ONETRIP_FINGERPRINT=SHA256:… python client.py
"""

import os

import onetrip

client = onetrip.Client(
    os.environ["ONETRIP_SERVER"], os.environ["ONETRIP_API_KEY"], pin=os.environ["ONETRIP_FINGERPRINT"], audience="db"
)


def connect_headers(database: str, startup: bytes) -> dict[str, str]:
    """`Authorization` and `Onetrip-PoP` for one connection handshake."""
    try:
        return client.sign_request("CONNECT", database, startup)
    except onetrip.SecondFactorRequired as e:
        client.token_with_code(e.operation, input(f"code sent by {e.channel} to {e.destination}: "))
        return client.sign_request("CONNECT", database, startup)


if __name__ == "__main__":
    print(sorted(connect_headers("orders", b"user=app database=orders")))
