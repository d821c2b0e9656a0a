"""Peak finding against the simulator's truth: recall, precision, false peaks per megapixel and centroid error.

A found peak matches a true peak within ``tolerance_px``, each at most once,
nearest pairs first. Recall counts the true peaks at ``min_snr`` or above that
were found; precision counts the found peaks that match any true peak (a
weak true peak found is not a false one); the centroid error is the rms
distance of the matched pairs whose true peak is at ``min_snr`` or above.

Precision depends on the detector as much as on the finder: a finder's false
peaks are background fluctuations that pass its thresholds, so their number
grows with the pixels searched, while a crystal gives the same peaks to a
small detector and to a large one. The false peaks per megapixel per frame
(:attr:`PeakScore.false_per_mpx`) is the finder's own figure, the same on
any detector at the same background; give ``pixels`` (the frame's valid
pixels) to have it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["PeakScore", "match_peaks"]


@dataclass
class PeakScore:
    """Counts summed over frames; recall, precision, false peaks per megapixel and centroid error from them.

    Attributes
    ----------
    true_strong
        True peaks at ``min_snr`` or above.
    found_strong
        Of those, the ones found.
    found
        Peaks found.
    found_true
        Found peaks that match a true peak, at any SNR.
    pixels
        Valid pixels searched, summed over the frames (0: not given).
    squared_error
        Squared distance of each found strong peak from its true position, px^2.
    """

    true_strong: int = 0
    found_strong: int = 0
    found: int = 0
    found_true: int = 0
    pixels: int = 0
    squared_error: list[float] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.found_strong / self.true_strong if self.true_strong else 1.0

    @property
    def precision(self) -> float:
        return self.found_true / self.found if self.found else 1.0

    @property
    def false_peaks(self) -> int:
        """Found peaks that match no true peak."""
        return self.found - self.found_true

    @property
    def false_per_mpx(self) -> float:
        """False peaks per million valid pixels of one frame; NaN when the pixels were not given."""
        return self.false_peaks / (self.pixels / 1e6) if self.pixels else float("nan")

    @property
    def centroid_rms_px(self) -> float:
        return float(np.sqrt(np.mean(self.squared_error))) if self.squared_error else 0.0

    def add(self, other: PeakScore) -> PeakScore:
        return PeakScore(self.true_strong + other.true_strong, self.found_strong + other.found_strong,
                         self.found + other.found, self.found_true + other.found_true, self.pixels + other.pixels,
                         self.squared_error + other.squared_error)

    def as_dict(self) -> dict[str, float]:
        return {"recall": self.recall, "precision": self.precision, "false_per_mpx": self.false_per_mpx,
                "centroid_rms_px": self.centroid_rms_px, "true_peaks": self.true_strong, "found_peaks": self.found}


def match_peaks(found_x: np.ndarray, found_y: np.ndarray, true_x: np.ndarray, true_y: np.ndarray,
                true_snr: np.ndarray, *, min_snr: float = 6.0, tolerance_px: float = 2.0,
                pixels: int = 0) -> PeakScore:
    """Score one frame's found peaks against its true peaks (see the module description).

    ``pixels`` is the number of valid pixels of the frame (those the finder
    searched), for :attr:`PeakScore.false_per_mpx`; 0 leaves that figure out.
    """
    if pixels < 0:
        raise ValueError(f"pixels is {pixels}; give the frame's valid pixel count (0 when not known)")
    found = np.column_stack([found_x, found_y]).astype(np.float64)
    true = np.column_stack([true_x, true_y]).astype(np.float64)
    strong = np.asarray(true_snr) >= min_snr
    score = PeakScore(true_strong=int(strong.sum()), found=len(found), pixels=int(pixels))
    if len(found) == 0 or len(true) == 0:
        return score
    pairs = cKDTree(found).sparse_distance_matrix(cKDTree(true), tolerance_px, output_type="coo_matrix")
    order = np.argsort(pairs.data, kind="stable")
    used_found: set[int] = set()
    used_true: set[int] = set()
    for k in order:
        i, j = int(pairs.row[k]), int(pairs.col[k])
        if i in used_found or j in used_true:
            continue
        used_found.add(i)
        used_true.add(j)
        score.found_true += 1
        if strong[j]:
            score.found_strong += 1
            score.squared_error.append(float(pairs.data[k]) ** 2)
    return score
