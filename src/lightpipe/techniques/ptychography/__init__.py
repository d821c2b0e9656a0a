"""Ptychography: scan simulation with known truth, CXI files, quality metrics and reconstruction.

Conventions shared by every module of this package:

* ``positions_px``: array (N, 2) of the (y, x) top-left corner of the probe
  window in the object array, in object pixels (float; may be sub-pixel).
* diffraction intensities: float32 (N, ny, nx), zero frequency at the centre,
  ``np.fft.fftshift(np.abs(np.fft.fft2(probe * object_patch, norm="ortho")) ** 2)``.
* probe: complex64 (ny, nx); object: complex64 (Hy, Hx).
* object pixel size: ``wavelength * distance / (n * detector_pixel)`` per axis,
  given as a (y, x) pair in metres.

Submodules are imported on use (``from lightpipe.techniques.ptychography.metrics
import object_error``) so that importing the package stays cheap.
"""
