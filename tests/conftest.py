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
