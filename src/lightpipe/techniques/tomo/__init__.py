"""Parallel-beam tomography: normalisation, ring removal, centre of rotation, FBP and SIRT, and a phantom simulator.

Conventions shared by every module of this package:

* a projection is a 2-D frame (rows z, detector columns u); a stack of
  sinograms is float32 ``(nz, n_angles, nu)``: slice, angle, column;
* angles are in degrees at the stages and in the source, radians inside the
  algorithms; the rotation axis is parallel to the detector columns, at
  column ``centre`` (0-based, fractional: ``(nu - 1) / 2`` is the middle);
* a reconstructed slice is ``n x n`` pixels of the detector's pixel size,
  centred on the rotation axis; pixel ``(i, j)`` sits at ``y = i - (n - 1) / 2``,
  ``x = j - (n - 1) / 2`` and the ray through it at angle ``theta`` meets the
  detector at ``u = centre + x cos(theta) + y sin(theta)``; a volume is
  ``(z, y, x)``.

Modules, one job each:

* ``geometry`` (pixel grid, reconstruction circle, angular weights);
* ``fbp`` (ramp filter with windows, back projection) and ``sirt`` (the
  linear-interpolation projector as a sparse matrix, SIRT);
* ``rings`` (Vo's sorting-based stripe filter) and ``centre`` (the rotation
  axis from projections 180 degrees apart);
* ``parts`` (slices reconstructed in blocks over the engine's workers);
* ``simulate`` (a 3-D phantom of ellipsoids, its exact projections, flats,
  darks and Poisson noise) and ``sim_source`` (the ``tomo_sim`` source);
* ``stages`` (``tomo_normalise``, ``minus_log``, ``rotation_centre``,
  ``tomo_reconstruction``, ``tomo_live``) and ``tiff_sink`` (the
  ``tiff_slices`` sink).

Submodules are imported on use, so importing the package stays cheap.
"""
