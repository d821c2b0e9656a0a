"""The linear fit of XRF spectra: PyMca's model, solved for many spectra at once.

PyMca's ``ClassMcaTheory`` builds the model from a fit configuration: one
column per line group (``Fe K``, ``Pb L``, the elastic and Compton scatter
peaks), each the sum of that group's lines with their relative intensities,
escape peaks and hypermet shape, at the configured calibration and detector
resolution. :class:`XrfModel` takes those columns from PyMca (the same call
PyMca's ``FastXRFLinearFit`` makes) and does the rest itself, on a block of
spectra at a time:

1. the continuum of each spectrum: SNIP (PyMca's ``snip1d``, on every
   spectrum of the block in one call, with the anchors PyMca uses) or strip
   (PyMca's ``subac``, spectrum by spectrum: slow, as in PyMca), subtracted;
2. the peak areas by linear least squares: unweighted through one SVD of the
   model, or weighted by each spectrum's Poisson uncertainty (``fitweight``)
   through the normal equations of all spectra at once: one matrix product
   gives every spectrum's normal matrix, then one batched inversion;
3. negative areas: ``refit`` (each spectrum on its own: its most negative
   peak is fixed at zero and the rest refitted, until none is negative),
   ``pymca`` (PyMca's rule over the whole block: refit the spectra a peak is
   negative in, together, unless they are fewer than 0.25 % of the block,
   whose areas are then set to zero), ``zero`` or ``keep``.

With ``negative="pymca"`` and a whole map as the block, the areas and their
uncertainties are those of ``FastXRFLinearFit.fitMultipleSpectra`` with the
same configuration (the tests compare them). A pipeline fits spectrum by
spectrum, where ``refit`` keeps every point independent of the others.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np

from lightpipe.techniques.xrf.config import FitConfig, XrfConfigError, pymca_missing, read_config

__all__ = ["LinearFit", "XrfModel", "model_for", "peak_groups", "common_groups", "NegativeAreas"]

NegativeAreas = Literal["refit", "pymca", "zero", "keep"]
#: Fewest spectra, as a fraction of the block, that PyMca refits for a negative peak; fewer are set to zero.
PYMCA_REFIT_FRACTION = 0.0025


@dataclass
class LinearFit:
    """Fitted peak areas of a block of spectra.

    Attributes
    ----------
    areas, sigmas
        Area of each peak group and its standard uncertainty, ``(spectra, peaks)``, counts.
    background
        The continuum subtracted before the fit, ``(spectra, fitted channels)``.
    continuum
        Fitted polynomial continuum parameters, ``(spectra, n)`` (none unless the configuration fits one).
    """

    areas: np.ndarray
    sigmas: np.ndarray
    background: np.ndarray
    continuum: np.ndarray


class XrfModel:
    """PyMca's linear XRF model of one configuration and spectrum length, and its fit.

    Parameters
    ----------
    config
        A checked configuration (:func:`~lightpipe.techniques.xrf.config.read_config`).
    channels
        Channels per spectrum.

    Examples
    --------
    >>> import numpy as np
    >>> from PyMca5 import PyMcaDataDir
    >>> model = XrfModel.from_file(PyMcaDataDir.PYMCA_DATA_DIR + "/Steel.cfg", 2048)
    >>> model.peaks[:3]
    ['V K', 'Cr K', 'Mn K']
    """

    def __init__(self, config: FitConfig, channels: int) -> None:
        try:
            from PyMca5.PyMcaPhysics.xrf import ClassMcaTheory
        except ImportError as exc:
            raise pymca_missing() from exc
        self.config = config
        self.channels = channels
        cfg = config.config
        # no times are given with the spectra: PyMca's fast fit drops the automatic time the same way
        cfg.setdefault("concentrations", {})["useautotime"] = 0
        theory = ClassMcaTheory.McaTheory()
        try:
            theory.setConfiguration(cfg)
            theory.enableOptimizedLinearFit()
            xmin, xmax = config.channel_range
            theory.setData(x=np.arange(channels), y=np.ones(channels), xmin=xmin, xmax=xmax)
            theory.estimate()
        except (ValueError, KeyError, IndexError) as exc:
            raise XrfConfigError(f"{config.path}: PyMca cannot build the fit model for {channels}-channel spectra: "
                                 f"{exc}; check [peaks] against the incident energy and [fit] xmin, xmax") from exc
        fixed = ClassMcaTheory.Gefit.CFIXED
        free = [i for i, _ in enumerate(theory.PARAMETERS) if theory.codes[0][i] != fixed]
        if not any(i >= theory.NGLOBAL for i in free):
            raise XrfConfigError(f"{config.path}: no peak lies between channels {xmin} and {xmax}; widen [fit] xmin, "
                                 "xmax or check the energy calibration")
        self.groups = list(theory.PARAMETERS[theory.NGLOBAL:])
        self.names = [theory.PARAMETERS[i] for i in free]
        self.n_continuum = sum(1 for i in free if i < theory.NGLOBAL)
        columns = [np.ravel(theory.linearMcaTheoryDerivative(theory.parameters, i, theory.xdata)) for i in free]
        self.basis = np.ascontiguousarray(np.stack(columns, axis=1), dtype=np.float64)
        x = np.ravel(theory.xdata).astype(np.int64)
        self.first, self.stop = int(x[0]), int(x[-1]) + 1
        zero, gain = float(theory.parameters[0]), float(theory.parameters[1])
        self.energy_kev = zero + gain * np.arange(channels, dtype=np.float64)
        self._anchors = self._anchor_list(np.ravel(theory.xdata))
        self._inverses: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
        self._pair_products: dict[tuple[int, ...], Any] = {}

    @classmethod
    def from_file(cls, path: str, channels: int) -> XrfModel:
        """The model of the configuration file ``path`` for ``channels``-channel spectra."""
        return cls(read_config(path), channels)

    @property
    def peaks(self) -> list[str]:
        """Names of the fitted peak groups, in the order of :attr:`LinearFit.areas` (``Fe K``, ``Scatter Peak000``)."""
        return self.names[self.n_continuum:]

    @property
    def group_index(self) -> np.ndarray:
        """Position of each fitted peak among all the configuration's peak groups (:attr:`groups`)."""
        return np.array([self.groups.index(name) for name in self.peaks], dtype=np.intp)

    @property
    def fitted(self) -> slice:
        """The channels the fit uses."""
        return slice(self.first, self.stop)

    def _anchor_list(self, xdata: np.ndarray) -> list[int]:
        """Indices within the fitted channels where the continuum is pinned (PyMca's ``stripanchorslist``)."""
        fit = self.config.config["fit"]
        anchors: list[int] = []
        if fit.get("stripanchorsflag") and fit.get("stripanchorslist") is not None:
            for channel in fit["stripanchorslist"]:
                if channel <= xdata[0]:
                    continue
                above = np.flatnonzero(xdata >= channel)
                if len(above) and above[0] > 0:
                    anchors.append(int(above[0]))
        return sorted(anchors)

    # -- the continuum -------------------------------------------------------------------------------

    def background(self, counts: np.ndarray) -> np.ndarray:
        """The continuum of each spectrum, ``(spectra, fitted channels)``, from its fitted channels ``counts``."""
        kind = self.config.background
        if kind == "none":
            return np.zeros_like(counts)
        from PyMca5.PyMcaMath.fitting import SpecfitFuns

        fit = self.config.config["fit"]
        width = int(fit.get("stripfilterwidth", 1))
        smooth = counts if width <= 1 else np.stack([SpecfitFuns.SavitskyGolay(row, width) for row in counts])
        if kind == "snip":
            return self._snip(SpecfitFuns, np.ascontiguousarray(smooth, dtype=np.float64), fit["snipwidth"])
        return np.stack([self._strip(SpecfitFuns, row, fit) for row in smooth])

    def _snip(self, funcs: Any, smooth: np.ndarray, width: Any) -> np.ndarray:
        # PyMca runs SNIP on the segments between anchors; with none, the last channel is a segment of its own
        anchors = self._anchors or [0, smooth.shape[1] - 1]
        out = np.empty_like(smooth)
        last = 0
        for anchor in anchors:
            if last < anchor < smooth.shape[1]:
                out[:, last:anchor] = funcs.snip1d(np.ascontiguousarray(smooth[:, last:anchor]), width, 0)
                last = anchor
        out[:, last:] = funcs.snip1d(np.ascontiguousarray(smooth[:, last:]), width, 0)
        return out

    def _strip(self, funcs: Any, row: np.ndarray, fit: Any) -> np.ndarray:
        """PyMca's strip continuum of one spectrum (``ClassMcaTheory``: smoothed, then ``subac`` twice)."""
        if len(row) > 2:  # the extra [1/4, 1/2, 1/4] smoothing of ClassMcaTheory
            smoothed = row.astype(np.float64).copy()
            smoothed[1:-1] = np.convolve(row, [0.25, 0.5, 0.25], mode="valid")
            smoothed[0] = 0.5 * (smoothed[0] + smoothed[1])
            smoothed[-1] = 0.5 * (smoothed[-1] + smoothed[-2])
            row = smoothed
        iterations, width, constant = int(fit["stripiterations"]), int(fit["stripwidth"]), fit["stripconstant"]
        if iterations <= 0:
            return np.full_like(row, row.min())
        anchors = list(self._anchors)
        if iterations > 1000 and width == 1:
            zz = funcs.subac(row, constant, iterations / 20, 4, anchors)
            return np.asarray(funcs.subac(zz, constant, iterations / 4, width, anchors))
        zz = funcs.subac(row, constant, iterations, width, anchors)
        return np.asarray(funcs.subac(zz, constant, 500 if iterations > 1000 else 2 * width, 1, anchors))

    # -- least squares -------------------------------------------------------------------------------

    def _pseudo_inverse(self, columns: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Unweighted solution operator and parameter uncertainties for these model columns (PyMca's SVD cut-off)."""
        if columns not in self._inverses:
            self._inverses[columns] = self._svd_solution(columns)
        return self._inverses[columns]

    def _svd_solution(self, columns: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        a = self.basis[:, columns]
        u, s, vt = np.linalg.svd(a, full_matrices=False)
        s = s.copy()
        s[s < max(a.shape) * np.finfo(np.float64).eps] = np.inf
        scaled = vt.T / s
        return scaled @ u.T, np.sqrt(np.sum(scaled * scaled, axis=1))

    def _solve(self, counts: np.ndarray, columns: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Parameters and uncertainties of ``columns`` of the model for continuum-free ``counts`` ``(n, channels)``."""
        if not self.config.weighted:
            solve, sigma = self._pseudo_inverse(columns)
            return counts @ solve.T, np.broadcast_to(sigma, (len(counts), len(columns))).copy()
        # weights as PyMca's lstsq gives them: 1/sigma^2 with sigma = sqrt(|counts|), 1 where that is 0
        variance = np.abs(counts)
        variance[variance == 0] = 1.0
        inverse = np.reciprocal(variance, out=variance)
        a, products, upper = self._products(columns)
        k = len(columns)
        alpha = np.empty((len(counts), k, k))
        alpha[:, upper[0], upper[1]] = inverse @ products  # every spectrum's normal matrix from one product
        alpha[:, upper[1], upper[0]] = alpha[:, upper[0], upper[1]]
        beta = (counts * inverse) @ a
        covariance = _inverse(alpha)
        params = np.matmul(covariance, beta[:, :, None])[:, :, 0]
        return params, np.sqrt(np.abs(np.diagonal(covariance, axis1=1, axis2=2)))

    def _products(self, columns: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """The model's columns, the products of each pair of them (upper triangle) and the pairs' indices."""
        if columns not in self._pair_products:
            a = np.ascontiguousarray(self.basis[:, columns])
            upper = np.triu_indices(len(columns))
            self._pair_products[columns] = a, np.ascontiguousarray(a[:, upper[0]] * a[:, upper[1]]), upper
        return self._pair_products[columns]

    def fit(self, spectra: np.ndarray, negative: NegativeAreas = "refit") -> LinearFit:
        """Fit a block of spectra.

        Parameters
        ----------
        spectra
            ``(spectra, channels)`` or one spectrum ``(channels,)``, counts (any real dtype).
        negative
            What to do with negative peak areas (see the module description).

        Raises
        ------
        ValueError
            When the spectra are not :attr:`channels` long, or hold negative or non-finite counts.
        """
        spectra = np.asarray(spectra)
        block = spectra.reshape(1, -1) if spectra.ndim == 1 else spectra
        if block.ndim != 2 or block.shape[1] != self.channels:
            raise ValueError(f"spectra of {block.shape[-1]} channels, but the model is for {self.channels}-channel "
                             "spectra; check the detector's channel count against the configuration")
        counts = block[:, self.fitted].astype(np.float64)
        if not np.isfinite(counts).all():
            raise ValueError("a spectrum holds NaN or infinite counts; a detector reading failed")
        if (counts < 0).any():
            raise ValueError(f"a spectrum holds negative counts (lowest {counts.min():g}); counts are never "
                             "negative: check that the spectra were not background-subtracted or overflowed")
        background = self.background(counts)
        net = counts - background
        every = tuple(range(self.basis.shape[1]))
        params, sigmas = self._solve(net, every)
        if negative == "refit":
            self._refit_each(net, params, sigmas)
        elif negative == "pymca":
            self._refit_pymca(net, params, sigmas)
        elif negative == "zero":
            peaks = params[:, self.n_continuum:]
            sigmas[:, self.n_continuum:][peaks < 0] = 0.0
            peaks[peaks < 0] = 0.0
        c = self.n_continuum
        return LinearFit(params[:, c:], sigmas[:, c:], background, params[:, :c])

    def _refit_subset(self, net: np.ndarray, params: np.ndarray, sigmas: np.ndarray, rows: np.ndarray,
                      dropped: tuple[int, ...]) -> None:
        keep = tuple(j for j in range(self.basis.shape[1]) if j not in dropped)
        params[np.ix_(rows, dropped)] = 0.0
        sigmas[np.ix_(rows, dropped)] = 0.0
        if keep:
            p, s = self._solve(net[rows], keep)
            params[np.ix_(rows, keep)] = p
            sigmas[np.ix_(rows, keep)] = s

    def _refit_each(self, net: np.ndarray, params: np.ndarray, sigmas: np.ndarray) -> None:
        """Per spectrum: fix its most negative peak at zero and refit the others, until none is negative."""
        c = self.n_continuum
        dropped = np.zeros(params.shape, dtype=bool)
        while True:
            peaks = np.where(dropped[:, c:], 0.0, params[:, c:])
            rows = np.flatnonzero((peaks < 0).any(axis=1))
            if not len(rows):
                return
            dropped[rows, c + np.argmin(peaks[rows], axis=1)] = True
            # spectra that dropped the same peaks are refitted together
            patterns, groups = np.unique(dropped[rows], axis=0, return_inverse=True)
            for g, pattern in enumerate(patterns):
                self._refit_subset(net, params, sigmas, rows[np.ravel(groups) == g], tuple(np.flatnonzero(pattern)))

    def _refit_pymca(self, net: np.ndarray, params: np.ndarray, sigmas: np.ndarray) -> None:
        """PyMca's rule over the whole block (``FastXRFLinearFit._fitLstSqNegative``), restated."""
        c, k = self.n_continuum, params.shape[1]
        rounds, most = 1, 2 * (k - c) + 1
        while True:
            negative = [(int(m.sum()), j, m) for j in range(c, k) if (m := params[:, j] < 0).any()]
            if not negative:
                return
            if rounds > most:
                for _, j, m in negative:
                    params[m, j] = 0.0
                return
            # the peak negative in most spectra first (ties: the later peak), with the peaks also negative there
            negative.sort(key=lambda item: (item[0], item[1]), reverse=True)
            bad, mask = [negative[0][1]], negative[0][2]
            for count, j, m in negative:
                if j not in bad and count and (mask & m).any():
                    bad.append(j)
                    mask = mask & m
            rows = np.flatnonzero(mask)
            if len(rows) < PYMCA_REFIT_FRACTION * len(params):
                params[np.ix_(rows, bad)] = 0.0
                sigmas[np.ix_(rows, bad)] = 0.0
            else:
                self._refit_subset(net, params, sigmas, rows, tuple(bad))
            rounds += 1

    def poisson_sigmas(self, spectra: np.ndarray) -> np.ndarray:
        """Uncertainties of an unweighted fit's areas propagated from each spectrum's Poisson noise, ``(n, peaks)``.

        PyMca's unweighted fit reports the uncertainties of unit-variance data,
        the same for every spectrum; these follow each spectrum's counts (a
        channel's variance is its counts, at least 1), without the refit of
        negative areas.
        """
        block = np.asarray(spectra, dtype=np.float64).reshape(-1, self.channels)[:, self.fitted]
        solve, _ = self._pseudo_inverse(tuple(range(self.basis.shape[1])))
        variance = np.maximum(block, 1.0) @ (solve * solve).T
        return np.sqrt(variance[:, self.n_continuum:])

    def model(self, result: LinearFit) -> np.ndarray:
        """The fitted spectra on the fitted channels: continuum plus peaks (and the fitted polynomial, if any)."""
        params = np.concatenate([result.continuum, result.areas], axis=1)
        return result.background + params @ self.basis.T


def _inverse(alpha: np.ndarray) -> np.ndarray:
    """Batched matrix inverse; a singular matrix gives zeros (PyMca leaves that spectrum's results at zero)."""
    try:
        return np.linalg.inv(alpha)
    except np.linalg.LinAlgError:
        out = np.zeros_like(alpha)
        for n, a in enumerate(alpha):
            try:
                out[n] = np.linalg.inv(a)
            except np.linalg.LinAlgError:
                pass
        return out


@lru_cache(maxsize=16)
def peak_groups(path: str) -> tuple[str, ...]:
    """Every peak group of the configuration file ``path``, in PyMca's order (``Fe K``, ``Scatter Peak000``, ...).

    The fitted areas of a pipeline are given in this order; a group outside
    the fitted channels has a NaN area.
    """
    from PyMca5.PyMcaPhysics.xrf import ClassMcaTheory

    config = read_config(path)
    theory = ClassMcaTheory.McaTheory()
    try:
        theory.setConfiguration(config.config)
    except (ValueError, KeyError, IndexError) as exc:
        raise XrfConfigError(f"{path}: PyMca cannot build the fit model: {exc}; check [peaks] against the incident "
                             "energy ([fit] energy)") from exc
    return tuple(theory.PARAMETERS[theory.NGLOBAL:])


def common_groups(groups: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The peak groups of the configurations of the detector elements, which must all fit the same ones.

    Parameters
    ----------
    groups
        Where each configuration comes from (a file) -> its peak groups (:func:`peak_groups`).

    Returns
    -------
    tuple of str
        The first configuration's groups, in its order (the order of the areas).

    Raises
    ------
    XrfConfigError
        Naming the configuration that differs from the first and the groups it lacks or adds.
    """
    if not groups:
        raise XrfConfigError("an empty list of configurations; give one .cfg file, or one per detector element")
    (first, reference), *others = groups.items()
    for where, other in others:
        missing = [g for g in reference if g not in other]
        extra = [g for g in other if g not in reference]
        if missing or extra:
            differences = ([f"lacks {', '.join(missing)}"] if missing else []) + (
                [f"adds {', '.join(extra)}"] if extra else [])
            raise XrfConfigError(f"the detector elements' configurations must fit the same peak groups, but {where} "
                                 f"{' and '.join(differences)} against {first}; give every element the same [peaks] "
                                 "(and scatter peaks), only its calibration and resolution of its own")
    return reference


@lru_cache(maxsize=8)
def model_for(path: str, channels: int) -> XrfModel:
    """The model of configuration file ``path`` for ``channels``-channel spectra, built once per process."""
    return XrfModel.from_file(path, channels)
