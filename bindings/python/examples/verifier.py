"""The database's side: verify a connection handshake in-process with only the
audience key, and refuse a replayed proof.

ONETRIP_AUDIENCE_KEY="$(onetrip audience-key db)" python verifier.py AUTHORIZATION POP
"""

import os
import sys
import time

import onetrip

verifier = onetrip.TokenVerifier("db", os.environ["ONETRIP_AUDIENCE_KEY"])
seen: dict[str, float] = {}  # replay id -> when it may be forgotten


def accept(authorization: str, pop: str, database: str, startup: bytes) -> onetrip.Claims:
    claims = verifier.verify_request(authorization, pop, "CONNECT", database, startup, window=60)
    if claims.replay_id is None or claims.replay_id in seen:
        raise PermissionError("proof already used")
    seen[claims.replay_id] = time.time() + 120
    return claims


if __name__ == "__main__":
    try:
        c = accept(sys.argv[1], sys.argv[2], "orders", b"user=app database=orders")
        print(f"accepted key {c.api_key_id} scopes {c.scopes}")
    except onetrip.InvalidToken as e:
        print(f"refused ({e.reason})")  # tell the peer only "authentication failed"
        sys.exit(1)
