"""Metrics exactly as SLDBench defines them."""
import numpy as np
import pytest

from evaluators.metrics import FAILURE_NMSE, score


def test_single_target_matches_hand_computation():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([1.1, 1.9, 3.2, 3.7])
    s = score(y, p)
    nmse = np.mean((p - y) ** 2) / np.var(y)
    nmae = np.mean(np.abs(p - y)) / np.mean(np.abs(y - y.mean()))
    assert s.nmse == pytest.approx(nmse)
    assert s.nmae == pytest.approx(nmae)
    assert s.r2 == pytest.approx(1 - nmse)


def test_multi_target_r2_is_one_minus_mean_nmse_over_dimensions():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(30, 5)) * np.arange(1, 6)
    p = y + rng.normal(scale=0.3, size=y.shape)
    s = score(y, p)
    per_dim = np.mean((p - y) ** 2, axis=0) / np.var(y, axis=0)
    assert s.r2 == pytest.approx(1 - per_dim.mean())
    assert s.nmse == pytest.approx(per_dim.mean())


def test_nan_or_inf_prediction_scores_as_failure():
    y = np.array([1.0, 2.0, 3.0])
    for bad in (np.nan, np.inf):
        s = score(y, np.array([1.0, bad, 3.0]))
        assert s.failed and s.r2 == -1.0 and s.nmse == FAILURE_NMSE


def test_clip_matches_published_table_convention():
    y = np.array([1.0, 2.0, 3.0])
    p = np.array([10.0, -5.0, 30.0])
    assert score(y, p).r2 < -1
    assert score(y, p, clip=True).r2 == -1.0


def test_block_scores_catch_a_level_error_that_pooled_scores_hide():
    """Two model sizes, each a valley in learning rate, far apart in level. A law with the right levels and
    a flat valley scores well pooled (the level gap dominates the spread) but not block by block, where
    each block is judged against its own spread, as a test split of one model size is."""
    from evaluators.metrics import score_blocks

    x = np.linspace(-1, 1, 20)
    y = np.concatenate([3.0 + 0.05 * x**2, 2.0 + 0.05 * x**2])
    flat = np.concatenate([np.full(20, 3.0 + 0.05 / 3), np.full(20, 2.0 + 0.05 / 3)])
    blocks = np.repeat([0, 1], 20)
    assert score(y, flat).r2 > 0.99
    assert score_blocks(y, flat, blocks).r2 < 0.01
    assert score_blocks(y, y, blocks).r2 == 1.0
    assert score_blocks(y, flat, None) == score(y, flat)
    assert score_blocks(y, np.where(blocks == 1, np.nan, y), blocks).failed
