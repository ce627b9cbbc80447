"""A real Label Studio (from .venv-ls, installed by scripts/install.sh) on 127.0.0.1 for the tests.

PostgreSQL by default, as production Label Studio runs (task locks only work there); SQLite on request.
A migrated template (database + admin user + legacy token + the data dir's SECRET_KEY) is built once
with ``label-studio init`` (about a minute) and copied for each server: the SQLite file, or for
PostgreSQL a whole stopped cluster that is copied and started on a free loopback port.
"""

import fcntl
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import requests

from scripts.local_studio import LabelStudio, Postgres, free_port, ls_env, pg_bin

__all__ = ["LabelStudioServer", "add_annotator", "free_port", "TOKEN"]

ROOT = Path(__file__).resolve().parents[1]
LS_BIN = ROOT / ".venv-ls" / "bin" / "label-studio"
CACHE = ROOT / ".cache"
USERNAME, PASSWORD = "admin@example.com", "adminpass123"
TOKEN = "0123456789abcdef0123456789abcdef01234567"


def _env(data: Path, port: int, postgres: Postgres | None = None) -> dict:
    return ls_env(data, port, username=USERNAME, password=PASSWORD, token=TOKEN, postgres=postgres)


@contextmanager
def _locked():
    CACHE.mkdir(exist_ok=True)
    with open(
        CACHE / "ls-template.lock", "w"
    ) as lock:  # two test runs never build a template at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _init(data: Path, env: dict) -> None:
    r = subprocess.run([str(LS_BIN), "init"], env=env, capture_output=True, text=True, timeout=900)
    if r.returncode:
        raise RuntimeError(
            f"label-studio init failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        )


def ensure_template(db: str = "postgresql") -> Path:
    """The cached migrated template for ``db`` ("postgresql" or "sqlite"), built on first use."""
    if not LS_BIN.exists():
        raise RuntimeError(f"{LS_BIN} is missing: run scripts/install.sh first")
    with _locked():
        if db == "sqlite":
            template = CACHE / "ls-template"
            if not (template / "label_studio.sqlite3").exists():
                shutil.rmtree(template, ignore_errors=True)
                template.mkdir(parents=True)
                _init(template, _env(template, 8080))
            return template
        # The cluster is tied to the PostgreSQL major version that made it.
        template = CACHE / f"ls-template-pg{(pg_bin() / 'initdb').resolve().parent.parent.name}"
        if not (template / "ready").exists():
            shutil.rmtree(template, ignore_errors=True)
            work = (
                Postgres.workdir()
            )  # PostgreSQL runs in /tmp (owned by its user), then the result is copied
            try:
                pg = Postgres.init(work / "pgdata").start()
                try:
                    pg.psql("CREATE DATABASE ls")
                    _init(work / "ls-data", _env(work / "ls-data", 8080, pg))
                finally:
                    pg.stop()
                staging = Path(str(template) + ".tmp")
                shutil.rmtree(staging, ignore_errors=True)
                staging.mkdir(parents=True)
                subprocess.run(
                    ["cp", "-a", str(work / "pgdata"), str(work / "ls-data"), str(staging)],
                    check=True,
                )
                (staging / "ready").touch()
                staging.rename(template)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        return template


class LabelStudioServer:
    """One Label Studio (and, on PostgreSQL, its own cluster) for a test module or session."""

    def __init__(self, workdir: Path, db: str = "postgresql"):
        self.db = db
        self.data = Path(workdir) / "ls-data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = TOKEN
        self.pg: Postgres | None = None
        self.pg_dir: Path | None = None
        self.ls: LabelStudio | None = None

    @property
    def proc(self):
        return self.ls.proc if self.ls else None

    def start(self, timeout: float = 300) -> "LabelStudioServer":
        template = ensure_template(self.db)
        try:
            if self.db == "sqlite":
                shutil.copytree(template, self.data)
            else:
                shutil.copytree(template / "ls-data", self.data)
                self.pg_dir = Postgres.workdir()
                self.pg = Postgres.copy_of(template / "pgdata", self.pg_dir / "pgdata").start()
            self.ls = LabelStudio(
                LS_BIN, self.data, self.port, _env(self.data, self.port, self.pg)
            ).start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop_label_studio(self) -> None:
        """Stop only the Label Studio process, as in an outage: its data and database stay."""
        if self.ls:
            self.ls.stop()

    def start_label_studio(self, timeout: float = 300) -> None:
        """Start Label Studio again on the same port, data and database."""
        self.ls = LabelStudio(
            LS_BIN, self.data, self.port, _env(self.data, self.port, self.pg)
        ).start(timeout)

    def stop(self) -> None:
        if self.ls:
            self.ls.stop()
        if self.pg:
            self.pg.stop()
        if self.pg_dir:
            shutil.rmtree(self.pg_dir, ignore_errors=True)
            self.pg_dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def add_annotator(server: LabelStudioServer, email: str, password: str = "annotate-me-123") -> str:
    """Sign a new user up through the organisation's invite link, as a person would; return their legacy token."""
    admin = {"Authorization": f"Token {server.token}"}
    invite = requests.get(f"{server.url}/api/invite", headers=admin, timeout=30).json()[
        "invite_url"
    ]
    s = requests.Session()
    page = server.url + invite
    s.get(page, timeout=30)
    r = s.post(
        page,
        data={"email": email, "password": password, "csrfmiddlewaretoken": s.cookies["csrftoken"]},
        headers={"Referer": page},
        allow_redirects=False,
        timeout=30,
    )
    assert r.status_code == 302, f"sign-up of {email} failed: HTTP {r.status_code}"
    return s.get(f"{server.url}/api/current-user/token", timeout=30).json()["token"]
