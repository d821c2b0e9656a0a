"""Probe guesses: the mean diffraction amplitude taken back to the sample, or a probe read from a file."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from lightpipe.core.xp import to_numpy

__all__ = ["load_probe_guess", "probe_from_intensity"]


def probe_from_intensity(mean: Any, defocus_m: float = 0.0, wavelength: float | None = None,
                         pixel_size_m: Sequence[float] | None = None) -> np.ndarray:
    """A probe guess: the inverse FFT of the mean diffraction amplitude with a flat phase, moved ``defocus_m``.

    The mean diffraction pattern of a scan is close to the far field of the
    probe alone (the object scatters a little of it away). Its square root
    with a flat phase is the probe at focus; the Fresnel phase
    ``exp(-i pi wavelength defocus |f|^2)`` takes it to a sample ``defocus_m``
    downstream, where a defocused beam is much larger than at focus.

    Parameters
    ----------
    mean
        Mean diffraction intensity (ny, nx), zero frequency at the centre; negative values count as 0.
    defocus_m
        Distance from the focus to the sample, m (positive downstream).
    wavelength, pixel_size_m
        Photon wavelength and object pixel size (y, x), m; needed when ``defocus_m`` is not 0.

    Returns
    -------
    numpy.ndarray
        complex64 (ny, nx), centred in the window, with ``sum(|probe|**2) == sum(mean)``: its far
        field holds the mean photon count of a frame.

    Raises
    ------
    ValueError
        When ``mean`` is not 2-D or holds no photon, or the geometry is missing for a defocus.
    """
    intensity = np.asarray(to_numpy(mean), dtype=np.float64)
    if intensity.ndim != 2:
        raise ValueError(f"the mean diffraction pattern must be 2-D, got shape {intensity.shape}")
    amplitude = np.sqrt(np.clip(np.nan_to_num(intensity), 0.0, None))
    if not amplitude.any():
        raise ValueError("the frames hold no photon: there is no diffraction to estimate the probe from")
    spectrum = np.fft.ifftshift(amplitude).astype(np.complex128)
    if defocus_m:
        if wavelength is None or pixel_size_m is None:
            raise ValueError("a defocused probe needs the wavelength and the object pixel size; the scan's metadata "
                             "gives neither energy_ev nor wavelength_m: set defocus_m to 0 or add them")
        fy = np.fft.fftfreq(intensity.shape[0], d=pixel_size_m[0])[:, None]
        fx = np.fft.fftfreq(intensity.shape[1], d=pixel_size_m[1])[None, :]
        spectrum *= np.exp(-1j * np.pi * wavelength * defocus_m * (fy**2 + fx**2))
    return np.fft.fftshift(np.fft.ifft2(spectrum, norm="ortho")).astype(np.complex64)


def load_probe_guess(path: str) -> np.ndarray:
    """The probe of a ``.npy`` file or of a CXI file, as complex64 (ny, nx) or (M, ny, nx).

    From a CXI file: the probe it keeps for a reconstruction to start from
    (``source_1/illumination``), else the probe of its reconstruction (``image_1/probe``).
    """
    if path.endswith(".npy"):
        probe = np.load(path)
    else:
        from lightpipe.techniques.ptychography.cxi import read_cxi

        data = read_cxi(path, frames=False)
        if data.probe is not None:
            probe = data.probe
        elif data.reconstruction is not None:
            probe = data.reconstruction.probe
        else:
            raise ValueError(f"probe_guess {path!r} holds no probe: neither an illumination "
                             "(/entry_1/instrument_1/source_1/illumination) nor a reconstruction (/entry_1/image_1)")
    probe = np.asarray(probe, dtype=np.complex64)
    if probe.ndim not in (2, 3):
        raise ValueError(f"probe_guess {path!r} holds a {probe.ndim}-D array; give (ny, nx) or modes (M, ny, nx)")
    return probe
