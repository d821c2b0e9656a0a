"""Peak finding against the simulator's truth: recall, precision and centroid error.

A found peak matches a true peak within ``tolerance_px``, each at most once,
nearest pairs first. Recall counts the true peaks at ``min_snr`` or above that
were found; precision counts the found peaks that match any true peak (a
weak true peak found is not a false one); the centroid error is the rms
distance of the matched pairs whose true peak is at ``min_snr`` or above.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["PeakScore", "match_peaks"]


@dataclass
class PeakScore:
    """Counts summed over frames; :attr:`recall`, :attr:`precision` and :attr:`centroid_rms_px` from them."""

    true_strong: int = 0
    found_strong: int = 0
    found: int = 0
    found_true: int = 0
    squared_error: list[float] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.found_strong / self.true_strong if self.true_strong else 1.0

    @property
    def precision(self) -> float:
        return self.found_true / self.found if self.found else 1.0

    @property
    def centroid_rms_px(self) -> float:
        return float(np.sqrt(np.mean(self.squared_error))) if self.squared_error else 0.0

    def add(self, other: PeakScore) -> PeakScore:
        return PeakScore(self.true_strong + other.true_strong, self.found_strong + other.found_strong,
                         self.found + other.found, self.found_true + other.found_true,
                         self.squared_error + other.squared_error)

    def as_dict(self) -> dict[str, float]:
        return {"recall": self.recall, "precision": self.precision, "centroid_rms_px": self.centroid_rms_px,
                "true_peaks": self.true_strong, "found_peaks": self.found}


def match_peaks(found_x: np.ndarray, found_y: np.ndarray, true_x: np.ndarray, true_y: np.ndarray,
                true_snr: np.ndarray, *, min_snr: float = 6.0, tolerance_px: float = 2.0) -> PeakScore:
    """Score one frame's found peaks against its true peaks (see the module description)."""
    found = np.column_stack([found_x, found_y]).astype(np.float64)
    true = np.column_stack([true_x, true_y]).astype(np.float64)
    strong = np.asarray(true_snr) >= min_snr
    score = PeakScore(true_strong=int(strong.sum()), found=len(found))
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
