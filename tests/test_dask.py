"""The selection scan on a Dask cluster (loopback LocalCluster): identical picks."""

import numpy as np
import pytest

from alllabel import BM25Similarity, select
from alllabel.selection.blocks import DaskRunner
from alllabel.selection.screening import screen
from tests.data import mof_texts

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    c = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=40,
    )
    try:
        yield c
    finally:
        c.close()


def test_dask_scan_gives_identical_picks(cluster):
    texts = mof_texts(400)
    excluded = screen(texts).excluded
    local = select(BM25Similarity(texts), 40, exclude=excluded)
    with DaskRunner(cluster.scheduler_address) as runner:
        sim = BM25Similarity(texts)
        remote = select(sim, 40, exclude=excluded, block_rows=37, runner=runner)
        # Row maxima computed on the workers came back: columns and retrieval need them here.
        assert not np.isnan(sim._rowmax).any()
        assert (remote.indices, remote.stages) == (local.indices, local.stages)
        # Short top lists force the re-ranking and exact-depth passes onto the cluster as well.
        U = np.round(np.random.default_rng(3).random((150, 150)), 1)
        assert select(U, 15, block_rows=16, runner=runner).indices == select(U, 15).indices
