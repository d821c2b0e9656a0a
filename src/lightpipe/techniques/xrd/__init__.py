"""Powder and scanning X-ray diffraction: azimuthal integration with pyFAI from a PONI calibration.

pyFAI does every integration; this package gives it lightpipe's shape: stages
with declared ports and checked parameters, one integrator per worker, and a
powder simulator with known ring positions.

Modules, one job each:

* ``geometry``: PONI files (read and checked against the frames), the corrections
  read from files (mask, dark, flat), the per-process integrator cache;
* ``stages``: ``azimuthal_integration`` and ``cake_integration`` (with their
  ``_dark`` variants that take the scan's own dark and bad-pixel mask),
  ``xrd_pattern`` (the scan's mean curve) and ``roi_intensity`` (a peak's
  integrated intensity per event, for maps);
* ``simulate`` (powder frames of pyFAI's calibrants at a known geometry, and
  their ring positions) and ``sim_source`` (the ``powder_sim`` source).

pyFAI is an optional dependency (``pip install 'lightpipe[xrd]'``); it is
imported where it is used, so importing this package stays cheap.
"""
