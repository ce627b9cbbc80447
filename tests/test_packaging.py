"""The installable package, what can be checked of the Docker files without a Docker engine, and the
two README commands."""

import email
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def requirement_lines(name: str) -> list[str]:
    lines = [ln.split("#", 1)[0].strip() for ln in (ROOT / name).read_text().splitlines()]
    return sorted(str(Requirement(ln)) for ln in lines if ln)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`pip wheel .` of a copy of the checkout, offline (the test venv has setuptools)."""
    src = tmp_path_factory.mktemp("src") / "alllabel"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv*",
            ".cache",
            "data",
            "out",
            "__pycache__",
            "*.egg-info",
            "build",
            ".pytest_cache",
            ".hypothesis",
        ),
    )
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(dist),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (whl,) = dist.glob("alllabel-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel installed into a folder of its own (dependencies come from the test venv)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


def run_installed(installed: Path, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run from a directory that is not the checkout, with only the installed copy importable."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "OPENAI_API_KEY", "OPENAI_BASE_URL")
    }
    env["PYTHONPATH"] = str(installed)
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_wheel_has_the_package_its_data_and_the_requirements_files_dependencies(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "alllabel/cli/__init__.py" in names and "alllabel/examples/mof_sample.jsonl" in names
    for package in ("text", "selection", "llm", "prelabel", "evaluation", "backend"):
        assert f"alllabel/{package}/__init__.py" in names
    assert not [n for n in names if "local_studio" in n]  # test and demo infrastructure stays out
    assert "alllabel/examples/NOTICE.md" in names  # the MIT notice travels with the data
    assert not [
        n for n in names if n.startswith(("tests/", "bench/", "examples/", "model.py", "_wsgi.py"))
    ]
    meta = email.message_from_bytes(
        zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA")))
    )
    requires = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    assert sorted(str(r) for r in requires if not r.marker) == requirement_lines("requirements.txt")
    sbert = [r for r in requires if r.marker and r.marker.evaluate({"extra": "sbert"})]
    assert sorted(str(Requirement(f"{r.name}{r.specifier}")) for r in sbert) == requirement_lines(
        "requirements-sbert.txt"
    )
    entry = (
        zipfile.ZipFile(wheel)
        .read(next(n for n in names if n.endswith("entry_points.txt")))
        .decode()
    )
    assert "alllabel = alllabel.cli:main" in entry


def test_installed_console_script_works_from_any_directory(installed, tmp_path):
    r = run_installed(installed, [str(installed / "bin" / "alllabel"), "--help"], tmp_path)
    assert r.returncode == 0 and "usage: alllabel" in r.stdout and "status" in r.stdout, r.stderr
    # The demo's default data is the packaged copy.
    r = run_installed(
        installed,
        [
            str(installed / "bin" / "alllabel"),
            "demo",
            "--out-dir",
            str(tmp_path / "demo"),
            "--quiet",
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "150 tasks" in r.stderr and "ALLabel  pool of 15" in r.stdout


def test_readme_python_example_runs_on_the_installed_package(installed, tmp_path):
    readme = (ROOT / "README.md").read_text()
    example = re.search(
        r"The library works without Label Studio:\n\n```python\n(.*?)```", readme, re.S
    ).group(1)
    texts = [
        json.loads(line)["text"]
        for line in (ROOT / "examples" / "mof_sample.jsonl").read_text().splitlines()
    ][:120]
    code = f"import alllabel\nassert alllabel.__file__.startswith({str(installed)!r}), alllabel.__file__\ntexts = {texts!r}\n{example}\nprint(len(sel.indices), sorted(set(sel.stages)))\n"
    r = run_installed(installed, [sys.executable, "-c", code], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "50" and "diversity" in r.stdout


def test_compose_wires_backend_to_label_studio():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    ls, backend = compose["services"]["label-studio"], compose["services"]["alllabel"]
    assert ls["environment"]["LABEL_STUDIO_ML_BLOCK_LOCAL_IP"] == "false"
    assert ls["environment"]["LABEL_STUDIO_SSRF_PROTECTION_ENABLED"] == "false"
    assert backend["environment"]["LABEL_STUDIO_URL"] == "http://label-studio:8080"
    assert backend["environment"]["ALLABEL_STATE_DIR"].startswith("/data")
    assert "alllabel-data:/data" in backend["volumes"] and backend["build"] == "."
    assert backend["ports"] == ["127.0.0.1:9090:9090"]  # the host's loopback only


def test_compose_requires_the_backends_credentials():
    """The backend binds 0.0.0.0 in its container: compose must refuse to start without both
    credentials (``${VAR:?message}``), not pass empty ones."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env = compose["services"]["alllabel"]["environment"]
    for name in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS", "LABEL_STUDIO_API_KEY"):
        assert re.fullmatch(rf"\$\{{{name}(:\?.+)?\}}", env[name]), env[name]
    for name in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS"):
        assert env[name].startswith(f"${{{name}:?set BASIC_AUTH_USER and BASIC_AUTH_PASS")
    docker = (ROOT / "Dockerfile").read_text()
    assert "--bind 0.0.0.0" in docker and "COPY model.py _wsgi.py gunicorn.conf.py" in docker


def test_compose_runs_label_studio_on_postgresql():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    db, ls = compose["services"]["db"], compose["services"]["label-studio"]
    env = ls["environment"]
    assert db["image"].startswith("postgres:") and "ports" not in db  # only on the compose network
    assert (
        env["DJANGO_DB"] == "default"
        and env["POSTGRE_HOST"] == "db"
        and env["POSTGRE_PORT"] == "5432"
    )
    assert (
        env["POSTGRE_NAME"] == db["environment"]["POSTGRES_DB"]
        and env["POSTGRE_USER"] == db["environment"]["POSTGRES_USER"]
    )
    assert env["POSTGRE_PASSWORD"] == "${POSTGRES_PASSWORD}" and db["environment"][
        "POSTGRES_PASSWORD"
    ].startswith("${POSTGRES_PASSWORD")
    assert ls["depends_on"]["db"]["condition"] == "service_healthy"
    assert (
        any(v.endswith(":/var/lib/postgresql/data") for v in db["volumes"])
        and "postgres-data" in compose["volumes"]
    )


def test_dockerfile_runs_what_the_tests_run():
    docker = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", docker, re.M)
    assert (
        "pip install --no-cache-dir -r requirements.txt" in docker
        and "pip install --no-cache-dir --no-deps ." in docker
    )
    assert re.search(r"^USER alllabel$", docker, re.M)  # not root
    cmd = re.search(r'^CMD \["sh", "-c", "exec (.*)"\]$', docker, re.M).group(1)
    argv = shlex.split(cmd)
    assert (
        argv[0] == "gunicorn"
        and argv[-1] == "_wsgi:app"
        and argv[argv.index("--workers") + 1] == "1"
    )
    for path in re.findall(r"^COPY (\S+)", docker, re.M):  # everything it copies exists
        assert (ROOT / path.rstrip("/")).exists(), path
    start = (ROOT / "scripts" / "start.sh").read_text()
    assert "--workers 1" in start and "_wsgi:app" in start


def test_readme_has_the_two_commands_ci_runs():
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/start.sh" in readme and "bash scripts/test.sh" in readme
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
