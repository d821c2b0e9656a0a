"""Peak finding scores: what precision counts, and the false peaks per megapixel that do not depend on the detector."""
from __future__ import annotations

import numpy as np
import pytest

from lightpipe.techniques.sfx.peakfinder import PeakLayout, find_peaks
from lightpipe.techniques.sfx.quality import PeakScore, match_peaks
from lightpipe.techniques.sfx.simulate import SfxSimParams, SfxSimulation
from lightpipe.techniques.sfx.stages import PeakFinderParams


def test_a_weak_true_peak_found_is_right_and_a_lone_one_is_false_per_megapixel() -> None:
    true_x, true_y = np.array([10.0, 40.0, 70.0]), np.array([10.0, 40.0, 70.0])
    true_snr = np.array([20.0, 3.0, 8.0])  # the second is below SNR 6: not needed, but not false when found
    found_x, found_y = np.array([10.4, 40.0, 200.0, 300.0]), np.array([10.0, 41.0, 200.0, 5.0])
    score = match_peaks(found_x, found_y, true_x, true_y, true_snr, pixels=500_000)
    assert (score.true_strong, score.found_strong, score.found_true, score.false_peaks) == (2, 1, 2, 2)
    assert score.recall == 0.5 and score.precision == 0.5
    assert score.false_per_mpx == pytest.approx(4.0)  # 2 false peaks on half a megapixel
    two_frames = score.add(score)
    assert two_frames.false_per_mpx == pytest.approx(4.0) and two_frames.pixels == 1_000_000
    assert np.isnan(match_peaks(found_x, found_y, true_x, true_y, true_snr).false_per_mpx)  # pixels not given
    assert two_frames.as_dict()["false_per_mpx"] == pytest.approx(4.0)
    with pytest.raises(ValueError, match="valid pixel count"):
        match_peaks(found_x, found_y, true_x, true_y, true_snr, pixels=-1)


def _score(modules: tuple[int, int], frames: int) -> PeakScore:
    sim = SfxSimulation(SfxSimParams(frames=frames, hit_fraction=1.0, seed=5, module_shape_px=(256, 256),
                                     modules=modules, module_gap_px=(10, 10)))
    geometry = sim.geometry()
    layout = PeakLayout(geometry.radius_px(), geometry.mask(), geometry.panel_index())
    total = PeakScore()
    for i in range(frames):
        frame, truth = sim.frame(i), sim.truth(i)
        peaks = find_peaks(frame, layout, PeakFinderParams().settings(), low=0, high=65534)
        total = total.add(match_peaks(peaks.x, peaks.y, truth["x"], truth["y"], truth["snr"],
                                      pixels=layout.valid_pixels))
    return total


def test_false_peaks_per_megapixel_stay_when_the_detector_grows_and_precision_falls() -> None:
    """Noise passes the thresholds at a rate per pixel: 16 modules find 4 times the false peaks of 4, per frame."""
    small, large = _score((2, 2), 48), _score((4, 4), 12)
    assert small.pixels == pytest.approx(large.pixels, rel=1e-3)  # as many pixels searched in all (hot ones aside)
    assert small.false_peaks >= 10 and large.false_peaks >= 10
    assert 0.5 <= large.false_per_mpx / small.false_per_mpx <= 2.0, (small.as_dict(), large.as_dict())
    assert large.precision < small.precision, (small.as_dict(), large.as_dict())
    assert min(small.recall, large.recall) >= 0.98
