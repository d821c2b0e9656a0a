"""What every reconstruction algorithm provides: the :class:`Algorithm` base class."""
from __future__ import annotations

from lightpipe.techniques.ptychography.algorithms.state import ReconstructionState


class Algorithm:
    """What every reconstruction algorithm provides; parameters are keyword arguments of the constructor.

    Subclasses set :attr:`name` and implement :meth:`iteration`; :meth:`start` runs
    when the algorithm takes over a state that another algorithm (or none) ran last.
    """

    #: Short name used in chains (``"DM:100,ML:50"``) and in the history.
    name: str = ""

    def start(self, state: ReconstructionState) -> None:
        """Prepare ``state`` for this algorithm (called before its first iteration on that state)."""

    def iteration(self, state: ReconstructionState, update_probe: bool) -> tuple[float, float | None]:
        """Run one iteration in place.

        Returns the numerator of the Fourier error, ``sum(w * mask * (|model| - sqrt(n))**2)``,
        of the estimate entering the iteration, and for ML its NLL per pixel (see
        :class:`~.state.IterationRecord`); ``None`` for algorithms without one.
        """
        raise NotImplementedError

    def stall(self, state: ReconstructionState) -> str | None:
        """Why the iterations on ``state`` have stopped changing it, or ``None`` while they make progress.

        Called after every iteration; an algorithm that can tell (ML: its line search found
        no step that lowers the likelihood, several iterations in a row) returns a sentence
        saying why, and the iteration is recorded as stalled.
        """
        return None
