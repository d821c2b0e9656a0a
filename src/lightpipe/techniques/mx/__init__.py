"""Rotation crystallography (MX): DIALS's dispersion spot finding, spread over workers as Spark-DIALS spreads it.

Modules, one job each:

* ``dispersion``: the spot finder on one image (strong pixels from local
  statistics, 2-D spots), NumPy and SciPy only;
* ``pixels``: the pixels it may use (detector mask file, NaN, negative and
  saturated values);
* ``join``: strong pixels of consecutive images joined into 3-D spots, as
  ``dials.find_spots`` joins them by default;
* ``rotation``: each image's rotation angle, from even steps or each image's own;
* ``stages``: ``dispersion_spots`` (per image) and ``spot_table`` (the scan's
  spots, per image and joined across images, and the spot count per image);
* ``simulate`` (a rotation series of a known cell and orientation, spots from
  the Ewald construction), ``sim_source`` (the ``rotation_sim`` source) and
  ``writers`` (the series as an NXmx master file or as miniCBF files);
* ``dials``: DIALS's own command-line programs run on the same images, for
  comparisons (Debian's ``python3-dials``, in its own Python).

SciPy is an optional dependency (``pip install 'lightpipe[mx]'``), imported
where it is used.
"""
