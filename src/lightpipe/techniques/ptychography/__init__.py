"""Ptychography: scan simulation with known truth, CXI files, quality metrics and reconstruction.

Conventions shared by every module of this package:

* ``positions_px``: array (N, 2) of the (y, x) top-left corner of the probe
  window in the object array, in object pixels (float; may be sub-pixel).
* diffraction intensities: float32 (N, ny, nx), zero frequency at the centre,
  ``np.fft.fftshift(np.abs(np.fft.fft2(probe * object_patch, norm="ortho")) ** 2)``.
* probe: complex64 (ny, nx), centred at pixel ``(ny // 2, nx // 2)``; object:
  complex64 (Hy, Hx), its rows and columns labelled in metres by the probe
  position that centres the probe on them (``geometry.object_axes``).
* object pixel size: ``wavelength * distance / (n * detector_pixel)`` per axis,
  given as a (y, x) pair in metres.

Modules, one job each:

* ``simulate`` (a scan with known truth), ``sim_source`` (the ``ptycho_sim``
  source), ``optics``, ``scan_patterns``, ``ports`` (fields sources share);
* ``cxi`` (CXI files and the ``cxi`` source), ``cxi_sink`` (the ``cxi`` sink);
* ``geometry`` (object pixel size from the frames' geometry), ``probe`` (probe guesses);
* ``algorithms`` (DM, AP, ML on a reconstruction state);
* ``partition``, ``parts``, ``merge``, ``distributed``: a reconstruction split
  into parts on several workers;
* ``stages`` (pre-processing, ``initial_probe``, ``ptycho_reconstruction``,
  ``ptycho_distributed``); ``metrics`` (errors against the truth, FRC).

Submodules are imported on use (``from lightpipe.techniques.ptychography.metrics
import object_error``) so that importing the package stays cheap.
"""
