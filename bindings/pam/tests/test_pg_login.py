"""A real PostgreSQL 15 login with an onetrip login credential (issue 14 item 4).

Stock PostgreSQL from Debian, `pam` in pg_hba.conf, `pam_onetrip.so` verifying the
credential in the database's own backend process, a real `onetrip serve`, and psycopg
as the client. The roles that log in with credentials have NO password.

Run by `.ci/login-cred.sh` as root (the PAM service file must live in /etc/pam.d/).
Skips with a reason when a tool is missing; fails instead when
ONETRIP_REQUIRE_TOOLS=1.
"""

import os
import pathlib
import re
import secrets
import shutil
import statistics
import subprocess
import tempfile
import threading
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "debug"
ONETRIP = pathlib.Path(os.environ.get("ONETRIP_BIN", TARGET / "onetrip"))
PAM_SO = pathlib.Path(os.environ.get("ONETRIP_PAM_SO", TARGET / "libpam_onetrip.so"))
MINT = pathlib.Path(os.environ.get("ONETRIP_LOGIN_EXAMPLE", TARGET / "examples" / "login_credential"))
PG_THROWAWAY = REPO / "scripts" / "pg-throwaway.sh"
ROLE, OTHER_ROLE, PW_ROLE = "app_reader", "other_role", "pw_user"
LOGINS = 200
# Every credential a test sent, to check the PostgreSQL log never shows one.
SENT = []


def unavailable(why):
    if os.environ.get("ONETRIP_REQUIRE_TOOLS") == "1":
        pytest.fail(f"ONETRIP_REQUIRE_TOOLS=1 and {why}")
    pytest.skip(why)


def check_tools():
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("psycopg is missing: python3 -m pip install 'psycopg[binary]'")
    if os.geteuid() != 0:
        unavailable("not root: the PAM service file must be written to /etc/pam.d")
    if not list(pathlib.Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        unavailable("PostgreSQL is missing: apt-get install -y postgresql")
    for path, how in [
        (ONETRIP, "cargo build -p onetrip-server --bin onetrip"),
        (PAM_SO, "cargo build -p onetrip-pam --lib"),
        (MINT, "cargo build -p onetrip-pam --example login_credential"),
    ]:
        if not path.exists():
            unavailable(f"{path} is missing: {how}")


class Env:
    """onetrip serve + a throwaway PostgreSQL cluster + the PAM service."""

    def __init__(self):
        import psycopg

        self.psycopg = psycopg
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="onetrip-pg-"))
        self.root.chmod(0o755)
        self.server = None
        self.pg_dir = self.root / "pg"
        self.pam_service = None
        self.pg_started = False
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def onetrip(self, *args, check=True):
        out = subprocess.run(
            [str(ONETRIP), *args, "--data-dir", str(self.data)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and out.returncode != 0:
            raise RuntimeError(f"onetrip {args[:2]} failed: {out.stderr}")
        return out

    def _start(self):
        import json

        # onetrip: two keys for audience `db` (the second is revoked by a test), one
        # also allowed `otherdb`.
        self.data = self.root / "onetrip"
        self.data.mkdir(mode=0o700)
        self.server_log = open(self.root / "onetrip.log", "w")
        self.server = subprocess.Popen(
            [str(ONETRIP), "serve", "--data-dir", str(self.data), "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=self.server_log, text=True,
        )
        port = fingerprint = None
        deadline = time.time() + 30
        while port is None or fingerprint is None:
            if time.time() > deadline:
                raise RuntimeError("onetrip serve did not start")
            line = self.server.stdout.readline()
            if not line:
                raise RuntimeError("onetrip serve exited: " + (self.root / "onetrip.log").read_text())
            m = re.search(r"listening on http://[^ ]*:(\d+)", line)
            port = int(m.group(1)) if m else port
            if line.startswith("identity fingerprint: "):
                fingerprint = line.split(": ", 1)[1].strip()
        self.url, self.pin = f"http://127.0.0.1:{port}", fingerprint
        # Keep draining stdout so the server never blocks on a full pipe.
        threading.Thread(target=self.server.stdout.read, daemon=True).start()
        key = json.loads(self.onetrip("keys", "create", "--json", "--name", "pg", "--audience", "db",
                                      "--audience", "otherdb").stdout)
        revokable = json.loads(self.onetrip("keys", "create", "--json", "--name", "pg-revoked",
                                            "--audience", "db").stdout)
        self.api_key, self.revokable_key, self.revokable_id = key["api_key"], revokable["api_key"], revokable["id"]

        # The DB host's files: the module, the audience key (0600, postgres), the
        # replay directory (0700, postgres).
        pam_dir = self.root / "pam"
        pam_dir.mkdir(mode=0o755)
        self.so = pam_dir / "pam_onetrip.so"
        shutil.copy(PAM_SO, self.so)
        self.so.chmod(0o755)
        self.key_file = pam_dir / "db.key"
        self.key_file.write_text(self.onetrip("audience-key", "db").stdout)
        self.key_file.chmod(0o600)
        shutil.chown(self.key_file, "postgres", "postgres")
        self.replay_dir = pam_dir / "replay"
        self.replay_dir.mkdir(mode=0o700)
        shutil.chown(self.replay_dir, "postgres", "postgres")
        self.pam_service = f"onetrip-pgtest-{secrets.token_hex(6)}"
        module = f"{self.so} keyfile={self.key_file} audience=db replaydir={self.replay_dir}"
        pathlib.Path("/etc/pam.d", self.pam_service).write_text(
            f"auth required {module}\naccount required {self.so}\n"
        )

        # PostgreSQL: throwaway cluster, roles without password, pam for them.
        out = subprocess.run([str(PG_THROWAWAY), "start", str(self.pg_dir)], capture_output=True, text=True,
                             timeout=120)
        if out.returncode != 0:
            raise RuntimeError("pg-throwaway failed: " + out.stderr)
        self.pg_started = True
        self.admin_url = re.search(r"ONETRIP_TEST_POSTGRES_URL='([^']+)'", out.stdout).group(1)
        self.pg_port = int((self.pg_dir / "port").read_text())
        self.pw = secrets.token_hex(16)
        with self.psycopg.connect(self.admin_url, autocommit=True) as c:
            c.execute(f"CREATE ROLE {ROLE} LOGIN")
            c.execute(f"CREATE ROLE {OTHER_ROLE} LOGIN")
            c.execute(f"CREATE ROLE {PW_ROLE} LOGIN PASSWORD '{self.pw}'")
        hba = self.pg_dir / "data" / "pg_hba.conf"
        lines = "".join(
            f"host all {r} 127.0.0.1/32 pam pamservice={self.pam_service}\n" for r in (ROLE, OTHER_ROLE)
        )
        hba.write_text(lines + hba.read_text())
        with self.psycopg.connect(self.admin_url, autocommit=True) as c:
            c.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)

    def mint(self, user=ROLE, *, api_key=None, audience="db", count=1, shift=0):
        env = dict(os.environ, ONETRIP_SERVER=self.url, ONETRIP_PIN=self.pin,
                   ONETRIP_API_KEY=api_key or self.api_key, ONETRIP_AUDIENCE=audience)
        args = [str(MINT), user, "--count", str(count), "--shift-secs", str(shift)]
        out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
        return out.returncode, out.stdout.split(), out.stderr

    def one(self, user=ROLE, **kw):
        rc, lines, err = self.mint(user, **kw)
        assert rc == 0, err
        SENT.append(lines[0])
        return lines[0]

    def connect(self, user, password):
        return self.psycopg.connect(host="127.0.0.1", port=self.pg_port, user=user, password=password,
                                    dbname="postgres", sslmode="disable", connect_timeout=10)

    def pg_log(self):
        return (self.pg_dir / "postgres.log").read_text(errors="replace")

    def assert_refused(self, user, credential):
        with pytest.raises(self.psycopg.OperationalError) as e:
            self.connect(user, credential).close()
        assert "authentication failed" in str(e.value)
        # The database keeps running, and logs nothing of the credential.
        with self.psycopg.connect(self.admin_url) as c:
            assert c.execute("SELECT 1").fetchone() == (1,)
        log = self.pg_log()
        for part in (credential, credential[5:45], credential[-40:]):
            assert part not in log

    def close(self):
        if self.pg_started:
            subprocess.run([str(PG_THROWAWAY), "stop", str(self.pg_dir)], timeout=60)
        if self.server is not None:
            self.server.kill()
            self.server.wait()
        if self.pam_service:
            pathlib.Path("/etc/pam.d", self.pam_service).unlink(missing_ok=True)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def env():
    check_tools()
    e = Env()
    yield e
    e.close()


def test_a_valid_credential_logs_in_as_its_role(env):
    with env.connect(ROLE, env.one()) as c:
        assert c.execute("SELECT current_user").fetchone() == (ROLE,)


def test_a_credential_for_another_role_is_refused(env):
    env.assert_refused(OTHER_ROLE, env.one(ROLE))


def test_a_credential_for_another_audience_is_refused(env):
    env.assert_refused(ROLE, env.one(audience="otherdb"))


def test_an_expired_or_future_credential_is_refused(env):
    env.assert_refused(ROLE, env.one(shift=-120))
    env.assert_refused(ROLE, env.one(shift=120))


def test_a_tampered_credential_is_refused(env):
    good = env.one()
    i = len(good) // 2
    bad = good[:i] + ("A" if good[i] != "A" else "B") + good[i + 1:]
    SENT.append(bad)
    env.assert_refused(ROLE, bad)
    # The untouched one still works: the refusal did not burn it.
    with env.connect(ROLE, good) as c:
        assert c.execute("SELECT current_user").fetchone() == (ROLE,)


def test_a_replayed_credential_is_refused(env):
    cred = env.one()
    env.connect(ROLE, cred).close()
    env.assert_refused(ROLE, cred)


def test_a_revoked_key_gets_no_next_credential(env):
    with env.connect(ROLE, env.one(api_key=env.revokable_key)) as c:
        assert c.execute("SELECT current_user").fetchone() == (ROLE,)
    env.onetrip("keys", "revoke", env.revokable_id)
    # A fresh credential needs a handshake, which the revoked key fails.
    rc, lines, err = env.mint(api_key=env.revokable_key)
    assert rc == 3 and not lines, err
    assert "authentication failed" in err


def test_a_key_file_readable_by_others_stops_every_login(env):
    env.key_file.chmod(0o640)
    try:
        env.assert_refused(ROLE, env.one())
    finally:
        env.key_file.chmod(0o600)
    env.connect(ROLE, env.one()).close()


def test_login_time_credential_vs_scram(env):
    def timed(user, passwords):
        times = []
        for pw in passwords:
            t = time.perf_counter()
            env.connect(user, pw).close()
            times.append((time.perf_counter() - t) * 1000)
        return times

    def pct(xs, p):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

    t = time.perf_counter()
    rc, creds, err = env.mint(count=LOGINS)
    mint_ms = (time.perf_counter() - t) * 1000
    assert rc == 0 and len(creds) == LOGINS, err
    SENT.extend(creds[:3])
    cred = timed(ROLE, creds)
    scram = timed(PW_ROLE, [env.pw] * LOGINS)
    c50, c99, s50, s99 = pct(cred, 50), pct(cred, 99), pct(scram, 50), pct(scram, 99)
    print(
        f"\nLOGIN TIMES over {LOGINS} connections each (psycopg connect+close, 127.0.0.1, no TLS):\n"
        f"  onetrip credential (pam): p50 {c50:.2f} ms  p99 {c99:.2f} ms\n"
        f"  scram-sha-256 password:   p50 {s50:.2f} ms  p99 {s99:.2f} ms\n"
        f"  ratio credential/scram:   p50 {c50 / s50:.2f}x  p99 {c99 / s99:.2f}x  (mean {statistics.mean(cred):.2f} vs "
        f"{statistics.mean(scram):.2f} ms)\n"
        f"  minting {LOGINS} credentials in one client process (incl. start and one handshake): {mint_ms:.0f} ms"
    )
    # Each accepted credential left one replay record.
    assert len(list(env.replay_dir.iterdir())) >= LOGINS


def test_the_postgres_log_never_contains_a_credential(env):
    log = env.pg_log()
    assert SENT, "the earlier tests sent credentials"
    assert "PAM authentication failed" in log, "the refusals are in the log, generically"
    for cred in SENT:
        for part in (cred, cred[5:45], cred[200:240], cred[-40:]):
            assert part not in log
