import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """One real Label Studio on PostgreSQL for the session's end-to-end tests (a project per test)."""
    from tests.label_studio import LabelStudioServer

    with LabelStudioServer(tmp_path_factory.mktemp("ls"), db="postgresql") as server:
        yield server


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """One real llama.cpp server (SmolLM2-135M, one completion at a time) for the session's real-LLM
    tests: loaded once, and each test's client starts from scratch (its own cache file)."""
    from tests.llama_server import LlamaServer

    with LlamaServer(tmp_path_factory.mktemp("llama")) as server:
        yield server
