"""Start a real Label Studio (from .venv-ls, installed by scripts/install.sh) on 127.0.0.1.

A migrated template data dir (DB + admin user + legacy token) is built once with
``label-studio init`` (~1 minute) and copied for each server (a few seconds to start).
"""
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
LS_BIN = ROOT / ".venv-ls" / "bin" / "label-studio"
TEMPLATE = ROOT / ".cache" / "ls-template"
TOKEN = "0123456789abcdef0123456789abcdef01234567"
# get_env falls back to these unprefixed names: never let the caller's shell leak in.
_STRIP = ("USERNAME", "PASSWORD", "HOST", "PORT", "USER_TOKEN", "DATABASE_NAME")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ls_env(data_dir: Path, port: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _STRIP}
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir), DJANGO_DB="sqlite",
        LABEL_STUDIO_USERNAME="admin@example.com", LABEL_STUDIO_PASSWORD="adminpass123",
        LABEL_STUDIO_USER_TOKEN=TOKEN, LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
        LABEL_STUDIO_ML_BLOCK_LOCAL_IP="false", LABEL_STUDIO_SSRF_PROTECTION_ENABLED="false",
        LABEL_STUDIO_HOST=f"http://127.0.0.1:{port}", LABEL_STUDIO_LATEST_VERSION_CHECK="false",
        LABEL_STUDIO_COLLECT_ANALYTICS="false", LABEL_STUDIO_SENTRY_DSN="", LABEL_STUDIO_FRONTEND_SENTRY_DSN="",
    )
    return env


def ensure_template() -> Path:
    if not LS_BIN.exists():
        raise RuntimeError(f"{LS_BIN} is missing: run scripts/install.sh first")
    if not (TEMPLATE / "label_studio.sqlite3").exists():
        shutil.rmtree(TEMPLATE, ignore_errors=True)
        TEMPLATE.mkdir(parents=True)
        subprocess.run([str(LS_BIN), "init"], env=ls_env(TEMPLATE, 8080), check=True, capture_output=True, timeout=600)
    return TEMPLATE


class LabelStudioServer:
    def __init__(self, workdir: Path):
        self.data = Path(workdir) / "ls-data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = TOKEN
        self.proc = None

    def start(self, timeout: float = 180) -> "LabelStudioServer":
        if not self.data.exists():
            shutil.copytree(ensure_template(), self.data)
        self.log = open(self.data / "ls.log", "a")
        self.proc = subprocess.Popen(
            [str(LS_BIN), "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(self.port)],
            env=ls_env(self.data, self.port), stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Label Studio exited ({self.proc.returncode}); see {self.data / 'ls.log'}")
            try:
                if requests.get(self.url + "/health", timeout=1).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"Label Studio did not answer on {self.url} within {timeout}s")

    def restart(self, down: float = 0.0) -> None:
        """Stop the server, stay down ``down`` seconds, start it again on the same port and data."""
        self.stop()
        time.sleep(down)
        self.start()

    def add_user(self, email: str, password: str = "annotator-pass-123") -> str:
        """A second annotator in the organisation (through an invite link); returns their legacy token."""
        invite = requests.get(f"{self.url}/api/invite", headers={"Authorization": f"Token {self.token}"}, timeout=10).json()["invite_url"]
        s = requests.Session()
        s.get(self.url + invite, timeout=10)
        r = s.post(self.url + invite, data={"email": email, "password": password, "csrfmiddlewaretoken": s.cookies.get("csrftoken")},
                   headers={"Referer": self.url + invite}, allow_redirects=False, timeout=10)
        if r.status_code != 302:
            raise RuntimeError(f"signing up {email} failed: HTTP {r.status_code}")
        return s.get(f"{self.url}/api/current-user/token", timeout=10).json()["token"]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "log", None):
            self.log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
