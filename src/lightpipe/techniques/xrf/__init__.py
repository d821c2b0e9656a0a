"""X-ray fluorescence: spectra fitted to elemental maps with PyMca's model and configuration files.

Modules, one job each:

* ``config``: PyMca fit configurations (``.cfg``) read with PyMca's ``ConfigDict``
  and checked (elements, lines, fit strategy) before PyMca sees them;
* ``linear_fit``: the linear model PyMca builds from a configuration, fitted to
  many spectra at once (continuum, weighted or unweighted least squares,
  negative areas as PyMca's fast fit treats them);
* ``stages``: ``xrf_fit`` (one configuration, or one per detector element),
  ``xrf_normalise`` (flux and dead time, one or one per detector element),
  ``xrf_map`` (one peak group on the scan grid) and ``xrf_sum_spectrum``;
* ``simulate`` (spectra of a known composition map, lines from xraylib) and
  ``sim_source`` (the ``xrf_sim`` source).

PyMca5 and xraylib are optional dependencies (``pip install 'lightpipe[xrf]'``),
imported where they are used.
"""
