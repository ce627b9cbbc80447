"""How many Label Studio requests a connected project costs: at connect, and per minute when idle.

Starts a real Label Studio (from .venv-ls, as the end-to-end tests do), imports N tasks built
from MOF sentences, connects the backend with its default settings (ALLABEL_SYNC_INTERVAL 30 s),
then counts the requests the backend makes while nobody annotates.

    .venv/bin/python bench/idle_requests.py                 # 10,000 tasks, 3 idle minutes
    .venv/bin/python bench/idle_requests.py --tasks 2000 --minutes 1
"""

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

from _wsgi import create_app  # noqa: E402
from alllabel.backend.ls_client import LabelStudioAPI  # noqa: E402
from alllabel.backend.settings import Settings  # noqa: E402
from alllabel.llm.client import LLMConfig  # noqa: E402
from bench.ls_project import headers, new_project  # noqa: E402
from model import ALLabelBackend  # noqa: E402
from tests.label_studio import LabelStudioServer, free_port  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=10000)
    ap.add_argument("--minutes", type=float, default=3.0)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="alllabel-idle-"))
    with LabelStudioServer(work) as ls:
        h = headers(ls)
        pid, took = new_project(ls, "idle cost", a.tasks)
        print(f"imported {a.tasks} tasks in {took:.0f}s")
        settings = Settings(
            state_dir=work / "state", model_version="alllabel", annotator="projection"
        )
        backend = ALLabelBackend(
            settings, ls_factory=lambda: LabelStudioAPI(ls.url, ls.token), llm_config=LLMConfig()
        )
        port = free_port()
        server = make_server("127.0.0.1", port, create_app(backend), threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        orch = backend.orchestrator
        t = time.perf_counter()
        r = requests.post(
            f"{ls.url}/api/ml",
            headers=h,
            json={"project": pid, "url": f"http://127.0.0.1:{port}", "title": "alllabel"},
        )
        r.raise_for_status()
        assert orch.wait_idle(pid, 600), orch.status(pid)
        st = orch.status(pid)["projects"][0]
        connect_requests = orch.ls().requests
        print(
            f"connect: {time.perf_counter() - t:.1f}s, {connect_requests} Label Studio requests "
            f"(queue of {st['queue']['selected']} pushed: {st['queue']['pushed']})"
        )
        time.sleep(a.minutes * 60)
        idle = orch.ls().requests - connect_requests
        print(
            f"idle: {idle} requests in {a.minutes:g} min = {idle / a.minutes:.1f} requests per minute "
            f"(ALLABEL_SYNC_INTERVAL {settings.sync_interval:g}s)"
        )
        server.shutdown()
        orch.close()


if __name__ == "__main__":
    main()
