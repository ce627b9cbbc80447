"""The README's first command with no LABEL_STUDIO_URL: from nothing to a connected demo, and Ctrl-C.

Runs `bash scripts/start.sh` as a user would (on free ports and a fresh data folder, so Label Studio
migrates its SQLite database from scratch), waits for the demo project's queue to be served through
/api/projects/ID/next, then sends SIGINT and checks that every process it started is gone.
"""

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.label_studio import free_port

ROOT = Path(__file__).resolve().parents[1]


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("kind", ["ner", "classification"])
def test_start_sh_brings_up_a_connected_demo_and_ctrl_c_stops_it(tmp_path, kind):
    ls_port, backend_port = free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LABEL_STUDIO_", "OPENAI_", "ALLABEL_"))
    }
    env.update(
        ALLABEL_DEMO_DIR=str(tmp_path / "demo"),
        ALLABEL_DEMO_LS_PORT=str(ls_port),
        ALLABEL_BIND=f"127.0.0.1:{backend_port}",
        ALLABEL_DEMO=kind,
    )
    proc = subprocess.Popen(
        ["bash", "scripts/start.sh"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines, ready = [], threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if "ALLabel demo is ready." in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    started = set()
    try:
        deadline = time.time() + 900  # the first start migrates Label Studio's database
        while not ready.is_set() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        time.sleep(1)  # the rest of the message
        out = "".join(lines)
        assert ready.is_set(), out
        started = descendants(proc.pid)
        assert len(started) >= 3, out  # Label Studio, gunicorn's master and its worker

        creds = json.loads((tmp_path / "demo" / "login.json").read_text())
        url = f"http://127.0.0.1:{ls_port}"
        assert (
            f"Label Studio   {url}" in out and f"{creds['username']} / {creds['password']}" in out
        )
        assert 'press "Label All Tasks"' in out
        pid = int(re.search(rf"{url}/projects/(\d+)/", out).group(1))
        h = {"Authorization": f"Token {creds['token']}"}

        project = requests.get(f"{url}/api/projects/{pid}", headers=h, timeout=30).json()
        assert (
            project["task_number"] == 150
            and project["sampling"] == "Uncertainty sampling"
            and project["model_version"] == "alllabel"
        )
        control = "<Choices" if kind == "classification" else "<Labels"
        assert control in project["label_config"]
        (ml,) = requests.get(f"{url}/api/ml", params={"project": pid}, headers=h, timeout=30).json()
        assert ml["url"] == f"http://127.0.0.1:{backend_port}" and ml["title"] == "alllabel"
        # The queue is served: /next gives the task at queue position 0 (score 0 of our model version),
        # without showing annotators the empty queue prediction.
        task = requests.get(f"{url}/api/projects/{pid}/next", headers=h, timeout=60).json()
        assert task["predictions"] == []
        ours = requests.get(
            f"{url}/api/predictions/", params={"task": task["id"]}, headers=h, timeout=30
        ).json()
        assert [(p["model_version"], p["score"]) for p in ours] == [("alllabel", 0.0)]
        status = requests.get(
            f"http://127.0.0.1:{backend_port}/status", params={"project": pid}, timeout=30
        ).json()
        st = status["projects"][0]
        assert (
            st["budget"] == 8 and st["queue"]["pushed"] == st["queue"]["selected"] == 8 + 5
        )  # 5 % of 150, and the reserve

        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(90) == 0
        time.sleep(0.5)
        assert not [p for p in started if alive(p)], "processes left running"
        for port in (ls_port, backend_port):
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", port)) != 0
        assert "stopped the backend and Label Studio" in "".join(lines)
    finally:
        for p in sorted(started | descendants(proc.pid), reverse=True):
            if alive(p):
                os.kill(p, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
