"""The README's first command when LABEL_STUDIO_URL is not set: from nothing to a working demo.

1. Label Studio (from .venv-ls) on 127.0.0.1:$ALLABEL_DEMO_LS_PORT (8080), SQLite, data in
   $ALLABEL_DEMO_DIR (data/demo). Its first start migrates the database (about a minute). The admin's
   login and API token are made on the first run and kept in data/demo/login.json.
2. The backend (gunicorn _wsgi:app, one worker) on $ALLABEL_BIND (127.0.0.1:9090), with that Label
   Studio's URL and the admin's token; state in data/demo/state.
3. The project "ALLabel demo" with examples/mof_sample.jsonl (NER), or with ALLABEL_DEMO=classification
   "ALLabel classification demo" with the first 150 of examples/mof_classify.jsonl (<Choices>:
   with/without modulator), connected to the backend with title = the model version (reused when
   it exists).
4. Once the backend has pushed its queue, it prints the URL, the login and what to do, and waits.
Ctrl-C (SIGINT) or SIGTERM stops the backend and Label Studio, by their PIDs.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # scripts.local_studio: the repository's, not the installed package's

from alllabel.backend.settings import Settings  # noqa: E402
from alllabel.text.jsonl import read_jsonl  # noqa: E402
from scripts.local_studio import LabelStudio, ls_env, stop_process  # noqa: E402

# ALLABEL_DEMO=classification: a <Choices> project on examples/mof_classify.jsonl instead.
DEMOS = {
    "ner": (ROOT / "examples" / "mof_sample.jsonl", "ALLabel demo"),
    "classification": (ROOT / "examples" / "mof_classify.jsonl", "ALLabel classification demo"),
}
DEMO_SIZE = 150  # paragraphs in either demo project
CHOICES = ("with modulator", "without modulator")


def say(msg: str) -> None:
    print(msg, flush=True)


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


def login(demo_dir: Path) -> dict:
    """The demo admin's credentials: made once, then reused (Label Studio keeps the first ones)."""
    path = demo_dir / "login.json"
    if path.exists():
        return json.loads(path.read_text())
    creds = {
        "username": "admin@example.com",
        "password": secrets.token_urlsafe(12),
        "token": secrets.token_hex(20),
    }
    demo_dir.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(json.dumps(creds, indent=2))
    return creds


def demo_kind() -> str:
    kind = os.environ.get("ALLABEL_DEMO", "ner")
    if kind not in DEMOS:
        raise ValueError(f"ALLABEL_DEMO must be one of {', '.join(DEMOS)} (got {kind!r})")
    return kind


def label_config(records: list[dict], kind: str = "ner") -> str:
    if kind == "classification":
        return (
            '<View><Text name="text" value="$text"/>'
            '<Choices name="modulator" toName="text" choice="single-radio">'
            '<Choice value="with modulator" hint="the synthesis adds a modulator"/>'
            '<Choice value="without modulator"/></Choices></View>'
        )
    labels = sorted({e["label"] for r in records for e in r.get("entities") or []})
    return (
        '<View><Labels name="label" toName="text">'
        + "".join(f'<Label value="{lab}"/>' for lab in labels)
        + '</Labels><Text name="text" value="$text"/></View>'
    )


def wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode})")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not answer on {url} within {timeout}s")


def demo_project(client, records: list[dict], kind: str) -> int:
    title = DEMOS[kind][1]
    for p in client.projects.list():
        if p.title == title:
            return p.id
    p = client.projects.create(
        title=title,
        label_config=label_config(records, kind),
        description="MOF synthesis paragraphs (MIT (c) 2023 zw-SIMM), ordered by ALLabel",
    )
    client.projects.import_tasks(
        id=p.id, request=[{"text": r["text"], "source_id": r["id"]} for r in records]
    )
    return p.id


def basic_auth(settings: Settings) -> tuple[str, str] | None:
    if settings.basic_auth_user and settings.basic_auth_pass:
        return settings.basic_auth_user, settings.basic_auth_pass
    return None


def connect(client, pid: int, url: str, title: str, auth: tuple[str, str] | None = None) -> None:
    """Connect the backend (title = model version, so Label Studio asks it and uses its predictions),
    with the backend's basic auth when it has one."""
    fields = {}
    if auth:
        fields = dict(auth_method="BASIC_AUTH", basic_auth_user=auth[0], basic_auth_pass=auth[1])
    existing = list(client.ml.list(project=pid))
    if any(m.url == url and m.title == title for m in existing) and not auth:
        return
    if existing:  # e.g. the backend moved to another port since the last run
        client.ml.update(id=existing[0].id, url=url, project=pid, title=title, **fields)
    else:
        client.ml.create(project=pid, url=url, title=title, **fields)


def wait_for_queue(
    backend: str, pid: int, proc: subprocess.Popen, auth=None, timeout: float = 300
) -> dict:
    deadline = time.time() + timeout
    status = {}
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the backend exited ({proc.returncode})")
        status = httpx.get(
            f"{backend}/status", params={"project": pid}, auth=auth, timeout=10
        ).json()
        projects = status.get("projects") or []
        if (
            projects
            and projects[0]["queue"]["selected"]
            and projects[0]["queue"]["pushed"] == projects[0]["queue"]["selected"]
        ):
            return status
        time.sleep(0.5)
    raise RuntimeError(
        f"the backend did not push its queue within {timeout}s: {json.dumps(status)}"
    )


def main() -> int:
    demo_dir = Path(os.environ.get("ALLABEL_DEMO_DIR", ROOT / "data" / "demo")).resolve()
    ls_port = int(os.environ.get("ALLABEL_DEMO_LS_PORT", 8080))
    bind = os.environ.get("ALLABEL_BIND", "127.0.0.1:9090")
    host, _, bport = bind.rpartition(":")
    backend_url = f"http://{'127.0.0.1' if host in ('', '0.0.0.0') else host}:{bport}"
    settings = (
        Settings.from_env()
    )  # the backend's model version and budget, and early errors in ALLABEL_*
    for h, p, var in (
        ("127.0.0.1", ls_port, "ALLABEL_DEMO_LS_PORT"),
        (host or "127.0.0.1", int(bport), "ALLABEL_BIND"),
    ):
        if not port_free(h, p):
            raise RuntimeError(f"port {p} is in use: stop what runs there or set {var}")
    kind = demo_kind()
    creds = login(demo_dir)
    records = read_jsonl(DEMOS[kind][0])[:DEMO_SIZE]
    ls_data = demo_dir / "label-studio"
    first = not (ls_data / "label_studio.sqlite3").exists()

    ls = LabelStudio(
        ROOT / ".venv-ls" / "bin" / "label-studio",
        ls_data,
        ls_port,
        ls_env(
            ls_data,
            ls_port,
            username=creds["username"],
            password=creds["password"],
            token=creds["token"],
        ),
    )
    backend = None
    stopping = []

    def on_signal(signum, frame):
        stopping.append(signum)
        raise KeyboardInterrupt

    # Explicitly: a shell starts background jobs with SIGINT ignored, and Python would keep it so.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        say(
            f"starting Label Studio on {ls.url}"
            + (" (first start: migrating its database, about a minute)" if first else "")
            + f"; log {ls_data / 'ls.log'}"
        )
        ls.start(timeout=900)
        say(f"Label Studio is up (pid {ls.proc.pid})")

        from label_studio_sdk import LabelStudio as Client

        client = Client(base_url=ls.url, api_key=creds["token"])
        pid = demo_project(client, records, kind)

        env = {
            **os.environ,
            "LABEL_STUDIO_URL": ls.url,
            "LABEL_STUDIO_API_KEY": creds["token"],
            "ALLABEL_STATE_DIR": str(demo_dir / "state"),
        }
        log = open(demo_dir / "backend.log", "ab")
        backend = subprocess.Popen(
            [
                str(ROOT / ".venv" / "bin" / "gunicorn"),
                "--bind",
                bind,
                "--workers",
                "1",
                "--threads",
                os.environ.get("THREADS", "8"),
                "--timeout",
                "120",
                "_wsgi:app",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
        wait_http(f"{backend_url}/health", backend, "the backend", 120)
        say(f"backend is up on {backend_url} (pid {backend.pid}); log {demo_dir / 'backend.log'}")

        connect(client, pid, backend_url, settings.model_version, basic_auth(settings))
        status = wait_for_queue(backend_url, pid, backend, basic_auth(settings))
        p = status["projects"][0]
        say(f"""
ALLabel demo is ready.
  Label Studio   {ls.url}
  Login          {creds["username"]} / {creds["password"]}   (kept in {demo_dir / "login.json"})
  Project        "{DEMOS[kind][1]}": {p["total_tasks"]} MOF synthesis paragraphs, {ls.url}/projects/{pid}/
  Backend        {backend_url}, model version "{status["model_version"]}", annotator {status["annotator"]}

What to do: open the project and press "Label All Tasks". Tasks come in ALLabel's order
(diversity -> similarity -> uncertainty). After {p["budget"]} annotations the backend pre-annotates the
other tasks; they appear as predictions (review goes lowest confidence first).
Progress: .venv/bin/alllabel status --url {backend_url}
Stop: Ctrl-C (stops the backend and Label Studio).
""")
        while True:
            for proc, what in ((ls.proc, "Label Studio"), (backend, "the backend")):
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{what} exited ({proc.returncode}); see its log in {demo_dir}"
                    )
            time.sleep(1)
    except KeyboardInterrupt:
        say("stopping ...")
        return 0
    finally:
        signal.signal(
            signal.SIGINT, signal.SIG_IGN
        )  # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if backend is not None:
            stop_process(backend, signal.SIGTERM)
        ls.stop()
        say("stopped the backend and Label Studio")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, ValueError, OSError, httpx.HTTPError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
