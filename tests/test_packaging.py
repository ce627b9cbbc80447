"""What can be checked of the Docker files without a Docker engine, and the two README commands."""
import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_compose_wires_backend_to_label_studio():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    ls, backend = compose["services"]["label-studio"], compose["services"]["alllabel"]
    assert ls["environment"]["LABEL_STUDIO_ML_BLOCK_LOCAL_IP"] == "false"
    assert ls["environment"]["LABEL_STUDIO_SSRF_PROTECTION_ENABLED"] == "false"
    assert backend["environment"]["LABEL_STUDIO_URL"] == "http://label-studio:8080"
    assert backend["environment"]["ALLABEL_STATE_DIR"].startswith("/data")
    assert "alllabel-data:/data" in backend["volumes"] and backend["build"] == "."
    assert "9090:9090" in backend["ports"]


def test_dockerfile_runs_what_the_tests_run():
    docker = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", docker, re.M)
    assert "pip install --no-cache-dir -r requirements.txt" in docker
    assert re.search(r"^USER alllabel$", docker, re.M)  # not root
    cmd = re.search(r'^CMD \["sh", "-c", "exec (.*)"\]$', docker, re.M).group(1)
    argv = shlex.split(cmd)
    assert argv[0] == "gunicorn" and argv[-1] == "_wsgi:app" and argv[argv.index("--workers") + 1] == "1"
    for path in re.findall(r"^COPY (\S+)", docker, re.M):  # everything it copies exists
        assert (ROOT / path.rstrip("/")).exists(), path
    start = (ROOT / "scripts" / "start.sh").read_text()
    assert "--workers 1" in start and "_wsgi:app" in start


def test_readme_has_the_two_commands_ci_runs():
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/start.sh" in readme and "bash scripts/test.sh" in readme
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
