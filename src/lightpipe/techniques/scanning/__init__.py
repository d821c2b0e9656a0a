"""Scanning maps: transmission, absorption, differential phase contrast, dark field, XBIC and counters.

Modules, one job each:

* ``stages``: ``diffraction_signals`` (total, bright- and dark-field counts and
  centre of mass of each detector frame), ``transmission_counters``
  (It / I0 and -ln(It / I0) from ion chambers), ``flux_normalise`` (any
  counter, an XBIC current, per incident flux) and ``dpc_phase`` (phase
  gradients from the centre-of-mass maps and their Fourier integration);
  the maps themselves are ``scan_map`` and ``scan_map_live`` (``lightpipe.stages.maps``);
* ``simulate`` (a scan of a known transmission and phase object with its
  counters) and ``sim_source`` (the ``scanning_sim`` source).
"""
