"""Run a real Label Studio on 127.0.0.1 from its own virtualenv, on SQLite or on a throwaway PostgreSQL.

Used by scripts/demo.py (the README's first command when no LABEL_STUDIO_URL is set) and by the
end-to-end tests. Every process started here is stopped by its PID (``stop()``); each runs in a
process group of its own, so a Ctrl-C in the terminal reaches only the program that owns it, which
then stops them in order.

Label Studio 1.23 facts this relies on (measured, see the README): ``DJANGO_DB=default`` means
PostgreSQL from the ``POSTGRE_*`` variables; LS reads unprefixed ``USERNAME``/``PASSWORD``/``HOST``/...
as fallbacks, so those are stripped; it moves to port+1 without a word when its port is taken; and
it blocks ML backends on loopback unless both SSRF settings are off.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

# What Label Studio gets from the caller's environment: the basics of running a program, nothing
# else. Not our secrets (OPENAI_API_KEY, LABEL_STUDIO_API_KEY, BASIC_AUTH_PASS...), and not the
# unprefixed USERNAME/PASSWORD/HOST/PORT/... its get_env falls back to.
_PASS = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM")
_PASS_PREFIXES = ("LC_",)


def base_env() -> dict:
    """The caller's environment cut down to the basics of running a program: what Label Studio and
    PostgreSQL get (plus their own settings), so no secret of ours reaches them."""
    return {k: v for k, v in os.environ.items() if k in _PASS or k.startswith(_PASS_PREFIXES)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ls_env(
    data_dir: Path,
    port: int,
    *,
    username: str,
    password: str,
    token: str,
    postgres: Postgres | None = None,
    database: str = "ls",
) -> dict:
    """The environment of a headless, loopback-only Label Studio with a known admin and legacy token."""
    env = base_env()
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        LABEL_STUDIO_USERNAME=username,
        LABEL_STUDIO_PASSWORD=password,
        LABEL_STUDIO_USER_TOKEN=token,
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
        # LS 1.23 refuses ML backends and webhooks on loopback/private addresses unless both are off.
        LABEL_STUDIO_ML_BLOCK_LOCAL_IP="false",
        LABEL_STUDIO_SSRF_PROTECTION_ENABLED="false",
        LABEL_STUDIO_HOST=f"http://127.0.0.1:{port}",
        # No calls out: the PyPI version check, telemetry and the baked-in Sentry DSNs.
        LABEL_STUDIO_LATEST_VERSION_CHECK="false",
        LABEL_STUDIO_COLLECT_ANALYTICS="false",
        LABEL_STUDIO_SENTRY_DSN="",
        LABEL_STUDIO_FRONTEND_SENTRY_DSN="",
    )
    if postgres is None:
        env["DJANGO_DB"] = "sqlite"
    else:
        env.update(
            DJANGO_DB="default",
            POSTGRE_HOST="127.0.0.1",
            POSTGRE_PORT=str(postgres.port),
            POSTGRE_USER="postgres",
            POSTGRE_PASSWORD="",
            POSTGRE_NAME=database,
        )
    return env


def stop_process(
    proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 30
) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def pg_bin() -> Path:
    """The folder of initdb/postgres/psql: $PG_BIN, Debian's newest /usr/lib/postgresql/N/bin, or PATH."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if debian:
        return debian[-1].parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise RuntimeError(
        "PostgreSQL is not installed (no initdb): run scripts/install.sh test, or apt-get install postgresql"
    )


class Postgres:
    """A PostgreSQL cluster in a folder of its own under /tmp, listening on 127.0.0.1 only.

    Trust authentication and fsync off: throwaway data for demos and tests, never production.
    PostgreSQL refuses to run as root, so as root it runs as the ``postgres`` system user.
    """

    def __init__(self, data: Path):
        self.data = Path(data)
        self.bin = pg_bin()
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self._log = None

    @staticmethod
    def _user() -> str | None:
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError(
                "PostgreSQL cannot run as root and there is no 'postgres' user: run the tests as a normal user"
            ) from None
        return "postgres"

    @classmethod
    def workdir(cls) -> Path:
        """A fresh folder under /tmp that the server's user owns (short: it also holds the unix socket)."""
        d = Path(tempfile.mkdtemp(prefix="alllabel-pg-"))
        user = cls._user()
        if user:
            shutil.chown(d, user, user)
        return d

    @classmethod
    def init(cls, data: Path) -> Postgres:
        pg = cls(data)
        subprocess.run(
            [
                str(pg.bin / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            user=cls._user(),
            env=base_env(),
            timeout=300,
        )
        return pg

    @classmethod
    def copy_of(cls, template: Path, data: Path) -> Postgres:
        """A cluster started from a copy of a stopped one (``cp -a`` keeps the owner)."""
        subprocess.run(["cp", "-a", str(template), str(data)], check=True)
        return cls(data)

    def start(self, timeout: float = 60) -> Postgres:
        self.port = free_port()
        self._log = open(self.data.parent / "postgres.log", "ab")
        self.proc = subprocess.Popen(
            [
                str(self.bin / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-k",
                str(self.data.parent),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            user=self._user(),
            env=base_env(),
            process_group=0,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"PostgreSQL exited ({self.proc.returncode}); see {self.data.parent / 'postgres.log'}"
                )
            if (
                subprocess.run(
                    [str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                    env=base_env(),
                ).returncode
                == 0
            ):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"PostgreSQL did not start within {timeout}s; see {self.data.parent / 'postgres.log'}"
        )

    def psql(self, sql: str, database: str = "postgres") -> str:
        r = subprocess.run(
            [
                str(self.bin / "psql"),
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=base_env(),
        )
        if r.returncode:
            raise RuntimeError(f"psql failed: {r.stderr.strip()}")
        return r.stdout

    def stop(self) -> None:
        stop_process(
            self.proc, signal.SIGINT
        )  # "fast" shutdown: ends sessions, leaves a clean cluster
        if self._log:
            self._log.close()
            self._log = None


class LabelStudio:
    """``label-studio start`` (one Django process) on 127.0.0.1:port, stopped by its PID."""

    def __init__(self, ls_bin: Path, data: Path, port: int, env: dict):
        self.ls_bin, self.data, self.port, self.env = Path(ls_bin), Path(data), port, env
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self, timeout: float = 300) -> LabelStudio:
        if not self.ls_bin.exists():
            raise RuntimeError(
                f"{self.ls_bin} is missing: run scripts/install.sh (demo or test) first"
            )
        self.data.mkdir(parents=True, exist_ok=True)
        self._log = open(self.data / "ls.log", "ab")
        self.proc = subprocess.Popen(
            [
                str(self.ls_bin),
                "start",
                "--no-browser",
                "--internal-host",
                "127.0.0.1",
                "-p",
                str(self.port),
            ],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"Label Studio exited ({self.proc.returncode}); see {self.data / 'ls.log'}"
                )
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(
            f"Label Studio did not answer on {self.url} within {timeout}s; see {self.data / 'ls.log'}"
        )

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM)
        if self._log:
            self._log.close()
            self._log = None
