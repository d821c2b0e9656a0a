"""Alternating projections: the parallel (all frames at once) form of ePIE.

One iteration:

1. Fourier pass, per chunk of frames: ``psi_j = project(P O_j)``, the model's
   exit wave with its Fourier modulus replaced by the measured one; the pass
   adds ``w_j conj(P) psi_j`` and ``w_j |P|^2`` at each window.
2. Object update: ``O += object_step * (O_ls - O)`` with ``O_ls`` the
   least-squares object ``sum w conj(P) psi / sum w |P|^2``.
3. Probe update (from ``probe_update_start`` on), a second pass:
   ``P += probe_step * (P_ls - P)`` with ``P_ls`` the least-squares probe for
   the new object.

Which form, and why
    ePIE (Maiden & Rodenburg 2009) updates object and probe after each frame in
    turn. Here every frame is projected from the same object and probe and the
    updates are averaged, weighted by illumination: the update that PyNX calls
    AP. It is one batched pass (FFTs over whole chunks, the same code on a GPU)
    where the sequential form is a Python loop of one small FFT per frame, and
    its result does not depend on the frame order. It converges more slowly
    per iteration than sequential ePIE and does not escape stagnation as well
    as DM; it is the cheap refinement between them. With ``object_step`` and
    ``probe_step`` 1 it is the alternating projection between the measured
    moduli and the overlap constraint (DM with ``alpha = 0``); steps below 1
    damp it, like ePIE's alpha and beta.
"""
from __future__ import annotations

from lightpipe.techniques.ptychography.algorithms.base import Algorithm
from lightpipe.techniques.ptychography.algorithms.common import (
    Chunk,
    beam_intensity,
    far_modulus,
    modulus_error,
    object_from_parts,
    orthogonalize_modes,
    positive,
    project_modulus,
    sum_parts,
)
from lightpipe.techniques.ptychography.algorithms.overlap import (
    ObjectSums,
    add_overlap,
    new_object_sums,
    probe_from_exit_waves,
)
from lightpipe.techniques.ptychography.algorithms.state import ReconstructionState


class AlternatingProjections(Algorithm):
    """Parallel alternating projections (ePIE-style updates of every frame at once).

    Parameters
    ----------
    object_step, probe_step
        Fraction of the way from the current object (probe) to its least-squares
        update; 1 is the plain projection. Values above 1 over-relax; far above 1 diverge.
    object_inertia, probe_inertia
        As for :class:`~lightpipe.techniques.ptychography.algorithms.dm.DifferenceMap`.
    """

    name = "AP"

    def __init__(self, object_step: float = 1.0, probe_step: float = 1.0, object_inertia: float = 1e-4,
                 probe_inertia: float = 1e-4) -> None:
        self.object_step = positive("AP object_step", object_step)
        self.probe_step = positive("AP probe_step", probe_step)
        self.object_inertia = positive("AP object_inertia", object_inertia)
        self.probe_inertia = positive("AP probe_inertia", probe_inertia)

    def iteration(self, state: ReconstructionState, update_probe: bool) -> tuple[float, float | None]:
        xp, fft = state.xp, state.fft
        obj, probe = state.object, state.probe
        conj_probe, beam = xp.conj(probe), beam_intensity(xp, probe)
        amplitudes, mask = state.amplitudes, state.mask
        if update_probe and (state.exit_waves is None or state.exit_waves.shape[1] != state.modes):
            state.exit_waves = state.fft.empty((state.n_frames, state.modes, *state.frame_shape))

        def work(acc: ObjectSums, chunk: Chunk) -> None:
            w = state.frame_weights(chunk)
            measured = chunk.take(xp, amplitudes)
            waves = fft.forward(fft.product(state.windows.extract(obj, chunk.frames)[:, None], probe[None]))
            modulus = far_modulus(xp, waves)
            acc.error += modulus_error(xp, modulus, measured, mask, w)
            waves = fft.backward(project_modulus(xp, waves, modulus, measured, mask))
            if update_probe:  # the probe update needs every frame's projected wave
                if chunk.span is not None:
                    state.exit_waves[chunk.span] = waves
                else:
                    chunk.put(xp, state.exit_waves, waves)
            add_overlap(state, acc, chunk, conj_probe, beam, waves)

        parts = state.run_chunks(work, lambda: new_object_sums(state))
        error = sum(p.error for p in parts)
        target = object_from_parts(xp, obj, sum_parts([p.num for p in parts]), sum_parts([p.den for p in parts]),
                                   self.object_inertia)
        state.object = target if self.object_step == 1.0 else obj + self.object_step * (target - obj)
        if update_probe:
            state.exit_waves_valid[:] = False  # projected waves, not DM's exit waves
            target = probe_from_exit_waves(state, state.object, self.probe_inertia)
            step = self.probe_step
            state.probe = orthogonalize_modes(xp, target if step == 1.0 else probe + step * (target - probe))
        return error, None
