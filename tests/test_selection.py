"""select() against the literal reference implementation, plus the error contract."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alllabel import DenseSimilarity, Selection, select, stage_sizes
from tests import reference_selection as ref


@st.composite
def problems(draw, max_n=14):
    n = draw(st.integers(2, max_n))
    # Few distinct values -> many ties, which is where tie-breaking bugs live.
    levels = draw(st.sampled_from([2, 3, 5, 17]))
    cells = draw(st.lists(st.integers(0, levels - 1), min_size=n * n, max_size=n * n))
    U = np.array(cells, dtype=float).reshape(n, n) / (levels - 1)
    m = draw(st.integers(1, n))
    k = draw(st.integers(1, 4))
    return U, m, k


settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci")


@given(problems())
def test_matches_reference_dsu(p):
    U, m, k = p
    sel = select(U, budget=m, k=k)
    assert (sel.indices, sel.stages) == ref.select(U.tolist(), m, k)
    assert len(sel.indices) == m and len(set(sel.indices)) == m


@given(
    problems(),
    st.sampled_from(["SDU", "SUD"]),
    st.sampled_from([(1, 3, 1), (1, 1, 1), (2, 1, 2), (0, 1, 1)]),
)
def test_matches_reference_other_orders_and_ratios(p, order, ratios):
    U, m, k = p
    sel = select(U, budget=m, k=k, ratios=ratios, order=order)
    assert (sel.indices, sel.stages) == ref.select(U.tolist(), m, k, ratios, order)


@given(problems(), st.data())
def test_matches_reference_with_pre_chosen(p, data):
    U, m, k = p
    n = len(U)
    pre = data.draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n - 1))
    m = min(m, n - len(pre))
    sel = select(U, budget=m, k=k, pre_chosen=pre)
    assert (sel.indices, sel.stages) == ref.select(U.tolist(), m, k, pre=pre)
    assert not set(sel.indices) & set(pre)


@given(st.integers(2, 40), st.integers(0, 2**32 - 1), st.data())
def test_random_real_valued_matrices(n, seed, data):
    U = np.random.default_rng(seed).random((n, n))
    m = data.draw(st.integers(1, n))
    assert select(U, m).indices == ref.select(U.tolist(), m)[0]


@given(st.integers(1, 60), st.sampled_from([(1, 3, 1), (1, 1, 1), (1, 5, 1), (2, 3, 0)]))
def test_stage_sizes(m, ratios):
    s = stage_sizes(m, ratios)
    assert (s["diversity"], s["similarity"], s["uncertainty"]) == ref.sizes(m, ratios)
    assert sum(s.values()) == m


def test_paper_split_example():
    assert stage_sizes(10) == {"diversity": 2, "similarity": 6, "uncertainty": 2}
    assert stage_sizes(1000) == {"diversity": 200, "similarity": 600, "uncertainty": 200}


def test_streamed_blocks_equal_one_block():
    U = np.round(np.random.default_rng(3).random((60, 60)), 1)  # rounded: plenty of ties
    whole = select(U, 20)
    for rows in (1, 7, 64):
        assert select(U, 20, block_rows=rows).indices == whole.indices


def test_deterministic_and_shaped():
    U = np.random.default_rng(0).random((30, 30))
    a, b = select(U, 10), select(U, 10)
    assert isinstance(a, Selection) and a.indices == b.indices and a.stages == b.stages
    assert a.stages == ["diversity"] * 2 + ["similarity"] * 6 + ["uncertainty"] * 2


def test_baselines():
    U = np.random.default_rng(1).random((40, 40))
    r1, r2 = select(U, 10, method="random", seed=1), select(U, 10, method="random", seed=2)
    assert r1.indices == select(U, 10, method="random", seed=1).indices
    assert r1.indices != r2.indices and set(r1.stages) == {"random"}
    c = select(U, 10, method="coreset", seed=5)
    assert (
        len(set(c.indices)) == 10 and c.indices == select(U, 10, method="coreset", seed=5).indices
    )
    # After its random seed, the cold-start core-set is farthest-first.
    assert c.indices[1:] == ref.diversity(U.tolist(), [c.indices[0]], 9)
    pre = [0, 1, 2]
    assert not set(select(U, 10, method="random", pre_chosen=pre).indices) & set(pre)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(similarity=np.zeros((3, 3)), budget=0), "budget must be between 1"),
        (dict(similarity=np.zeros((3, 3)), budget=4), "budget must be between 1"),
        (dict(similarity=np.zeros((3, 3)), budget=1.5), "whole number"),
        (dict(similarity=np.zeros((3, 4)), budget=1), "square"),
        (dict(similarity=np.zeros((0, 0)), budget=1), "empty"),
        (dict(similarity=np.array([[1, np.nan], [0, 1]]), budget=1), r"NaN.*U\[0, 1\]"),
        (dict(similarity=np.zeros((3, 3)), budget=1, k=0), "k .* >= 1"),
        (dict(similarity=np.zeros((3, 3)), budget=1, order="UDS"), "stage order"),
        (dict(similarity=np.zeros((3, 3)), budget=1, ratios=(1, 1)), "three numbers"),
        (dict(similarity=np.zeros((3, 3)), budget=1, ratios=(-1, 1, 1)), "non-negative"),
        (dict(similarity=np.zeros((3, 3)), budget=3, pre_chosen=[0]), r"selectable items \(2 of 3"),
        (dict(similarity=np.zeros((3, 3)), budget=1, method="perplexity"), "unknown method"),
    ],
)
def test_bad_input_is_explained(kwargs, message):
    with pytest.raises(ValueError, match=message):
        select(**kwargs)


def test_nan_on_diagonal_is_ignored():
    U = np.random.default_rng(2).random((8, 8))
    np.fill_diagonal(U, np.nan)
    V = U.copy()
    np.fill_diagonal(V, 0.0)
    assert select(U, 4).indices == select(V, 4).indices == ref.select(V.tolist(), 4)[0]


def test_dense_backend_object_accepted():
    U = np.random.default_rng(4).random((12, 12))
    assert select(DenseSimilarity(U), 5).indices == select(U, 5).indices


@pytest.mark.parametrize("m, decimals", [(6, 1), (15, 2), (15, 6)])
def test_truncated_rank_lists_match_reference(m, decimals):
    """N much larger than the budget: the scan keeps short top lists, and the uncertainty stage
    must fall back to full rows for queries whose first D1 item lies beyond them."""
    U = np.round(np.random.default_rng(m + decimals).random((150, 150)), decimals)
    sel = select(U, m, block_rows=32)
    assert (sel.indices, sel.stages) == ref.select(U.tolist(), m)


# --- exclusions (near-duplicates, outliers): the reference's extended rules ---------------------
@given(problems(), st.data(), st.sampled_from(["DSU", "SDU", "SUD"]))
def test_matches_reference_with_exclusions(p, data, order):
    U, m, k = p
    n = len(U)
    pre = data.draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n - 1))
    exclude = data.draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n))
    free = n - len(set(pre) | set(exclude))
    if free < 1:
        return
    m = min(m, free)
    sel = select(U, budget=m, k=k, order=order, pre_chosen=pre, exclude=exclude)
    assert (sel.indices, sel.stages) == ref.select(
        U.tolist(), m, k, order=order, pre=pre, exclude=exclude
    )
    assert not set(sel.indices) & (set(exclude) | set(pre))
    mask = np.zeros(n, dtype=bool)
    mask[exclude] = True
    assert (
        select(U, budget=m, k=k, order=order, pre_chosen=pre, exclude=mask).indices == sel.indices
    )


def test_empty_exclusion_is_the_paper():
    U = np.round(np.random.default_rng(7).random((40, 40)), 1)
    assert (
        select(U, 12, exclude=[]).indices == select(U, 12).indices == ref.select(U.tolist(), 12)[0]
    )


@pytest.mark.parametrize("m, decimals", [(6, 1), (15, 2)])
def test_truncated_rank_lists_with_exclusions_match_reference(m, decimals):
    rng = np.random.default_rng(m * decimals)
    U = np.round(rng.random((150, 150)), decimals)
    exclude = rng.choice(150, size=40, replace=False).tolist()
    pre = [i for i in range(150) if i not in exclude][:3]
    whole = ref.select(U.tolist(), m, pre=pre, exclude=exclude)
    for rows in (32, 150):
        sel = select(U, m, block_rows=rows, pre_chosen=pre, exclude=exclude)
        assert (sel.indices, sel.stages) == whole


def test_threads_and_blocks_give_the_same_picks():
    from alllabel.selection.blocks import LocalRunner

    U = np.round(np.random.default_rng(11).random((300, 300)), 2)
    base = select(U, 30, runner=LocalRunner(1))
    for rows, workers in ((7, 2), (64, 3), (300, 2)):
        assert select(U, 30, block_rows=rows, runner=LocalRunner(workers)).indices == base.indices


def test_exclusion_errors_are_explained():
    U = np.zeros((4, 4))
    with pytest.raises(ValueError, match=r"selectable items \(1 of 4, the rest are excluded"):
        select(U, 2, exclude=[0, 1, 2])
    with pytest.raises(ValueError, match="one entry per item"):
        select(U, 1, exclude=np.zeros(3, dtype=bool))
    with pytest.raises(ValueError, match="out of range"):
        select(U, 1, exclude=[4])
