"""X-ray optics of a far-field ptychography set-up: wavelength, object-plane sampling, zone-plate probe.

The probe of a Fresnel zone plate (FZP) is modelled in the paraxial
approximation. In its focal plane the field is the Fourier transform of the
lens pupil: an annulus of spatial frequencies out to ``NA / wavelength``
(``NA = wavelength / (2 * outer_zone_width)``) with the central stop cut out,
which gives the Airy-like spot with strong side lobes of an FZP. A sample a
distance ``defocus`` downstream of the focus sees that field propagated with the
Fresnel transfer function ``exp(-i pi wavelength defocus |f|^2)``: a ring or
disc about ``defocus * wavelength / outer_zone_width`` across. Because the
pupil is a band limit, the probe is band-limited too, and shifting it by a
fraction of a pixel with a Fourier phase ramp is exact.
"""
from __future__ import annotations

import numpy as np

#: h * c in eV m: wavelength [m] = HC_EV_M / energy [eV].
HC_EV_M = 1.239841984e-6
#: Elementary charge: energy [J] = energy [eV] * ELECTRON_VOLT_J.
ELECTRON_VOLT_J = 1.602176634e-19


def wavelength_m(energy_ev: float) -> float:
    """Photon wavelength in metres for an energy in eV.

    Examples
    --------
    >>> round(wavelength_m(12398.41984) * 1e10, 6)
    1.0
    """
    if energy_ev <= 0:
        raise ValueError(f"photon energy must be positive, got {energy_ev} eV")
    return HC_EV_M / energy_ev


def object_pixel_size_m(
    energy_ev: float, distance_m: float, pixel_size_m: float | tuple[float, float], frame_shape: tuple[int, int]
) -> tuple[float, float]:
    """Pixel size (y, x) of the object plane in metres: ``wavelength * distance / (n * detector_pixel)``.

    Parameters
    ----------
    energy_ev
        Photon energy.
    distance_m
        Sample-detector distance.
    pixel_size_m
        Detector pixel size, one value for square pixels or a (y, x) pair.
    frame_shape
        Shape (ny, nx) of the diffraction patterns.
    """
    lam = wavelength_m(energy_ev)
    py, px = (pixel_size_m, pixel_size_m) if np.isscalar(pixel_size_m) else pixel_size_m  # type: ignore[misc]
    ny, nx = frame_shape
    return lam * distance_m / (ny * float(py)), lam * distance_m / (nx * float(px))


def zone_plate_probe(
    shape: tuple[int, int],
    object_pixel_m: tuple[float, float],
    energy_ev: float,
    outer_zone_width_m: float,
    central_stop_fraction: float,
    defocus_m: float,
) -> np.ndarray:
    """Complex probe of a zone plate with a central stop, ``defocus_m`` from its focus.

    Parameters
    ----------
    shape
        Probe window (ny, nx), the shape of the diffraction patterns.
    object_pixel_m
        Object-plane pixel size (y, x).
    energy_ev
        Photon energy.
    outer_zone_width_m
        Outermost zone width of the FZP; sets the numerical aperture
        ``wavelength / (2 * outer_zone_width_m)`` and the focus size (about
        ``1.22 * outer_zone_width_m``).
    central_stop_fraction
        Central-stop diameter as a fraction of the zone-plate diameter (0 for none).
    defocus_m
        Distance from the focus to the sample, positive downstream.

    Returns
    -------
    numpy.ndarray
        complex128 (ny, nx), centred at pixel (ny // 2, nx // 2), normalised so
        that ``sum(|probe|**2) == 1``.
    """
    ny, nx = shape
    lam = wavelength_m(energy_ev)
    fy = np.fft.fftfreq(ny, d=object_pixel_m[0])[:, None]
    fx = np.fft.fftfreq(nx, d=object_pixel_m[1])[None, :]
    f2 = fy**2 + fx**2
    cutoff = 1.0 / (2.0 * outer_zone_width_m)  # NA / wavelength
    pupil = (f2 <= cutoff**2) & (f2 >= (central_stop_fraction * cutoff) ** 2)
    if not pupil.any():
        raise ValueError("the zone-plate pupil covers no detector pixel: increase outer_zone_width_m or frame_shape")
    spectrum = pupil * np.exp(-1j * np.pi * lam * defocus_m * f2)
    probe = np.fft.fftshift(np.fft.ifft2(spectrum))
    return probe / np.sqrt(np.sum(np.abs(probe) ** 2))


def bright_field_radius_px(
    energy_ev: float, distance_m: float, pixel_size_m: float, outer_zone_width_m: float
) -> float:
    """Radius in detector pixels of the zone plate's bright-field disc (the direct beam's cone)."""
    return wavelength_m(energy_ev) * distance_m / (2.0 * outer_zone_width_m * pixel_size_m)


def encircled_diameter_px(probe: np.ndarray, fraction: float = 0.9) -> float:
    """Diameter in pixels of the disc about the probe's intensity centroid holding ``fraction`` of its intensity.

    This is the probe's support as used for the overlap of neighbouring scan
    positions.
    """
    intensity = np.abs(probe) ** 2
    total = intensity.sum()
    if total <= 0:
        raise ValueError("the probe has no intensity")
    y, x = np.indices(intensity.shape)
    cy, cx = (intensity * y).sum() / total, (intensity * x).sum() / total
    radius = np.hypot(y - cy, x - cx).ravel()
    order = np.argsort(radius)
    inside = np.cumsum(intensity.ravel()[order]) / total
    return 2.0 * float(radius[order][np.searchsorted(inside, fraction)])


def shift_probe(probe: np.ndarray, shift_px: tuple[float, float] | np.ndarray) -> np.ndarray:
    """The probe moved by ``shift_px`` (y, x) pixels with a Fourier phase ramp (exact for a band-limited probe)."""
    ny, nx = probe.shape
    ky = np.fft.fftfreq(ny)[:, None]
    kx = np.fft.fftfreq(nx)[None, :]
    ramp = np.exp(-2j * np.pi * (ky * shift_px[0] + kx * shift_px[1]))
    return np.fft.ifft2(np.fft.fft2(probe) * ramp)
