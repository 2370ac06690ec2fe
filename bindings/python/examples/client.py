"""A Python database driver using onetrip: a fresh login credential as the password
of each new connection, with step-up when the key needs a second factor.

ONETRIP_SERVER=http://127.0.0.1:7420 ONETRIP_API_KEY=otk_… ONETRIP_FINGERPRINT=SHA256:… python client.py
"""

import os

import onetrip

client = onetrip.Client(
    os.environ["ONETRIP_SERVER"], os.environ["ONETRIP_API_KEY"], pin=os.environ["ONETRIP_FINGERPRINT"], audience="db"
)


def password(user: str, database: str) -> str:
    """The password for one new connection as `user` to `database`."""
    try:
        return client.login_credential(user, database)
    except onetrip.SecondFactorRequired as e:
        client.token_with_code(e.operation, input(f"code sent by {e.channel} to {e.destination}: "))
        return client.login_credential(user, database)


def connect_headers(database: str, startup: bytes) -> dict[str, str]:
    """For protocols with headers: `Authorization` and `Onetrip-PoP` for one handshake."""
    return client.sign_request("CONNECT", database, startup)


if __name__ == "__main__":
    print(f"login credential: {len(password('app', 'orders'))} characters")
