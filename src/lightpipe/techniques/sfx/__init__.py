"""Serial crystallography: Bragg peak finding, hits and hit rate, powder sums, CXI peak lists, a simulator with truth.

Modules, one job each: ``geometry`` (CrystFEL ``.geom``, pyFAI PONI and NeXus
geometry, masks), ``peakfinder`` (the peakfinder8-class algorithm),
``stages`` (``peakfinder8``, ``hit_powder``, ``hit_rate``), ``simulate`` and
``sim_source`` (the ``sfx_sim`` source, NeXus runs with truth), ``cxi_sink``
(the ``cxi_peaks`` sink), ``quality`` (recall, precision and centroid error
against the truth). Peak positions are slab pixels, fs along x (columns) and
ss along y (rows), the first pixel's centre at 0.
"""
