"""Ptychography stages, one module per job.

* :mod:`~.preprocess`: the pre-processing steps of Nanosurveyor's section 4.1
  (``diffraction_centre``, ``overscan_offset``, ``background_filter``,
  ``beamstop_correction``, ``centred_crop``);
* :mod:`~.initial_probe`: ``initial_probe``, a probe from the mean diffraction pattern;
* :mod:`~.streaming`: ``ptycho_reconstruction``, a reconstruction that starts while the scan is acquired;
* :mod:`~.distributed`: ``ptycho_distributed``, the scan split into parts reconstructed at once and merged.

Stages that place frames on the object take the detector window their frames
span from the pipeline's frame geometry (``stage.input_geometry``); see
:mod:`lightpipe.techniques.ptychography.geometry`.
"""
