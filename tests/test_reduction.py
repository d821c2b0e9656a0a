"""The canonical reduction tree: bit-identical results for any chunking."""
from __future__ import annotations

import numpy as np
import pytest

from lightpipe.core.reduction import Block, TreeReducer
from lightpipe.stages.maps import ScanMap
from lightpipe.techniques.ptychography.scan_patterns import scan_pattern


def _reduce_in_chunks(values: list[float | None], bounds: list[int]) -> float | None:
    """Reduce like the engine does: each chunk ships blocks, the driver carries on."""
    driver: TreeReducer[float] = TreeReducer(lambda a, b: a + b)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        chunk: TreeReducer[float] = TreeReducer(lambda a, b: a + b, start=lo)
        for v in values[lo:hi]:
            chunk.push_leaf(v)
        for block in chunk.blocks():
            driver.push(block)
    return driver.result()


@pytest.mark.parametrize("n", [1, 2, 7, 64, 100, 257])
def test_float_sum_is_bit_identical_for_any_chunking(n: int) -> None:
    rng = np.random.default_rng(n)
    # magnitudes spread over 12 decades, so a different summation order changes the bits
    values = list(rng.standard_normal(n) * 10.0 ** rng.integers(-6, 6, n))
    reference = _reduce_in_chunks(values, [0, n])
    for trial in range(20):
        cuts = sorted(set(rng.integers(1, n, size=rng.integers(0, 6)).tolist())) if n > 1 else []
        assert _reduce_in_chunks(values, [0, *cuts, n]) == reference
    assert reference == pytest.approx(sum(values), rel=1e-9, abs=1e-9)


def test_sequential_sum_would_differ() -> None:
    """The tree matters: a left-to-right sum of the same data gives other bits."""
    rng = np.random.default_rng(1)
    values = list(rng.standard_normal(100) * 10.0 ** rng.integers(-6, 6, 100))
    sequential = 0.0
    for v in values:
        sequential += v
    assert _reduce_in_chunks(values, [0, 100]) != sequential


def test_missing_leaves_are_skipped() -> None:
    values: list[float | None] = [1.0, None, 3.0, None, None, 6.0]
    assert _reduce_in_chunks(values, [0, 2, 5, 6]) == 10.0
    assert _reduce_in_chunks([None, None], [0, 2]) is None


def test_push_out_of_order_is_refused() -> None:
    tree: TreeReducer[float] = TreeReducer(lambda a, b: a + b)
    tree.push_leaf(1.0)
    with pytest.raises(ValueError, match="expected"):
        tree.push(Block(3, 1, 2.0))


def test_scan_map_is_bit_identical_for_any_chunking() -> None:
    """A regridded map (interpolated from cell means) gets the same bits however the events were chunked."""
    rng = np.random.default_rng(11)
    yx = scan_pattern("fermat", 120, 1e-7)
    yx = np.concatenate([yx, yx[:20]])  # revisited positions: their events are averaged
    values = rng.standard_normal(len(yx)) * 10.0 ** rng.integers(-6, 6, len(yx))
    stage = ScanMap()

    def reduce(bounds: list[int]) -> dict[str, np.ndarray]:
        driver: TreeReducer[np.ndarray] = TreeReducer(stage.merge)
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            chunk: TreeReducer[np.ndarray] = TreeReducer(stage.merge, start=lo)
            for (y, x), v in zip(yx[lo:hi], values[lo:hi]):
                chunk.push_leaf(stage.partial(value=v, y=y, x=x))
            for block in chunk.blocks():
                driver.push(block)
        return stage.finish(driver.result())

    reference = reduce([0, len(yx)])
    assert reference["regridded"] and np.isfinite(reference["map"]).sum() > 50
    for cuts in ([1], [7, 64], sorted(set(rng.integers(1, len(yx), 5).tolist()))):
        other = reduce([0, *cuts, len(yx)])
        for key, value in reference.items():
            np.testing.assert_array_equal(other[key], value, err_msg=key)
