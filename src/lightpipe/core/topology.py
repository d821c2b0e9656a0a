"""The topology: every running component of a pipeline, its state, heartbeat and progress.

A running pipeline registers its parts (source or receiver, buffers, stages,
workers, sinks, the engine) in one :class:`Topology`. Each part updates its
:class:`Component` as it works: counters per chunk or per event, a heartbeat
while it waits, its state when it changes. :meth:`Topology.snapshot` turns
all of it into one JSON-able dict for ``lightpipe status``, the control
channel and the service. A component that stops beating is reported as
failed, whatever it last said about itself.

Example
-------
>>> topology = Topology("powder")
>>> receiver = topology.add("receiver", "receiver", {"endpoint": "tcp://eiger:9999"})
>>> receiver.set_state("running")
>>> receiver.add_out(16)
>>> [c["events_out"] for c in topology.snapshot()["components"]]
[16]
"""
from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from pathlib import PurePath
from typing import Any, Callable, Literal, get_args

from lightpipe.core.ledger import END_STATES

log = logging.getLogger(__name__)

Kind = Literal["source", "receiver", "buffer", "stage", "worker", "sink", "engine"]
State = Literal["starting", "running", "idle", "stopping", "stopped", "failed", "aborted"]
KINDS: tuple[str, ...] = get_args(Kind)
STATES: tuple[str, ...] = get_args(State)

# States in which a component is expected to beat; a stopped, failed or aborted one is not.
LIVE_STATES = frozenset({"starting", "running", "idle", "stopping"})

Observer = Callable[[dict[str, Any]], None]


def jsonable(value: Any) -> Any:
    """``value`` made of dicts, lists, strings, numbers, booleans and ``None`` only.

    Paths become strings and NumPy scalars Python numbers, so a component's
    configuration can be shown as it was given; anything else becomes its ``str``.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # a NumPy scalar or 0-d array
        return jsonable(value.item())
    return str(value)


class Component:
    """One running part of a pipeline: what it is, its state, heartbeat and counters.

    Every method is thread-safe and O(1), cheap enough to call per event at
    kHz rates. Any counter update also counts as a heartbeat: a component that
    makes progress is alive. A component that waits (a receiver with no
    detector data) calls :meth:`beat` at least every ``heartbeat_s``.

    Parameters
    ----------
    name
        Unique within its topology, e.g. ``receiver``, ``buffer``, ``stage:correct``.
    kind
        One of ``source``, ``receiver``, ``buffer``, ``stage``, ``worker``, ``sink``, ``engine``.
    config
        What the component was configured with; shown as given (made JSON-able).
    heartbeat_s
        Expected interval between beats; ``None`` for a passive part (a buffer
        updated by others) that is never reported as missing beats.
    rate_window_s
        The rate is ``events_out`` per second over this many recent seconds.
    rate_buckets
        Time buckets the window is divided into; the rate is exact to one bucket.
    """

    def __init__(
        self,
        name: str,
        kind: str,
        config: dict[str, Any] | None = None,
        heartbeat_s: float | None = 1.0,
        rate_window_s: float = 5.0,
        rate_buckets: int = 20,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"component {name!r}: unknown kind {kind!r}; use one of {', '.join(KINDS)}")
        if heartbeat_s is not None and heartbeat_s <= 0:
            raise ValueError(f"component {name!r}: heartbeat_s must be positive (or None for no heartbeat), "
                             f"got {heartbeat_s}")
        if rate_window_s <= 0 or rate_buckets < 1:
            raise ValueError(f"component {name!r}: rate_window_s must be positive and rate_buckets at least 1")
        self.name = name
        self.kind = kind
        self.config = jsonable(config or {})
        self.heartbeat_s = heartbeat_s
        self.rate_window_s = rate_window_s
        self._lock = threading.Lock()
        self._notify: Observer | None = None
        self.state: str = "starting"
        self.detail = ""
        self.events_in = 0
        self.events_out = 0
        self.failed = 0
        self.fill: float | None = None
        now = time.monotonic()
        self._counting_since = now
        self._last_beat = now
        # A ring of time buckets: bucket b (time // period) lives in slot b % n. A slot whose
        # bucket id is older than the window is simply ignored, so nothing needs zeroing.
        self._period = rate_window_s / rate_buckets
        self._bucket_ids = [-1] * rate_buckets
        self._bucket_counts = [0] * rate_buckets

    def __repr__(self) -> str:
        return f"Component({self.name!r}, {self.kind!r}, state={self.state!r})"

    def beat(self) -> None:
        """Say that this component is alive."""
        # a single attribute store is atomic in CPython: no lock needed
        self._last_beat = time.monotonic()

    def add_in(self, n: int = 1) -> None:
        """Count ``n`` events taken in."""
        now = time.monotonic()
        with self._lock:
            self.events_in += n
            self._last_beat = now

    def add_out(self, n: int = 1) -> None:
        """Count ``n`` events passed on (or written, for a sink); they make up the rate."""
        now = time.monotonic()
        bucket = int(now / self._period)
        slot = bucket % len(self._bucket_ids)
        with self._lock:
            self.events_out += n
            self._last_beat = now
            if self._bucket_ids[slot] == bucket:
                self._bucket_counts[slot] += n
            else:
                self._bucket_ids[slot] = bucket
                self._bucket_counts[slot] = n

    def add_failed(self, n: int = 1) -> None:
        """Count ``n`` events that failed here."""
        now = time.monotonic()
        with self._lock:
            self.failed += n
            self._last_beat = now

    def set_fill(self, fill: float) -> None:
        """Set the fraction of capacity in use (buffers), between 0 and 1."""
        if not 0.0 <= fill <= 1.0:
            raise ValueError(f"component {self.name!r}: fill must be between 0 and 1, got {fill}")
        now = time.monotonic()
        with self._lock:
            self.fill = fill
            self._last_beat = now

    def set_state(self, state: str, detail: str = "") -> None:
        """Change the state (and say why in ``detail``); also a heartbeat."""
        if state not in STATES:
            raise ValueError(f"component {self.name!r}: unknown state {state!r}; use one of {', '.join(STATES)}")
        now = time.monotonic()
        with self._lock:
            changed = state != self.state or detail != self.detail
            self.state = state
            self.detail = detail
            self._last_beat = now
            notify = self._notify
        if changed and notify is not None:
            notify({"type": "state", "component": self.name, "kind": self.kind, "state": state, "detail": detail})

    def reset(self) -> None:
        """Zero the counters, fill and rate (a new scan); state and heartbeat stay."""
        with self._lock:
            self.events_in = self.events_out = self.failed = 0
            self.fill = None if self.fill is None else 0.0
            self._bucket_ids = [-1] * len(self._bucket_ids)
            self._bucket_counts = [0] * len(self._bucket_counts)
            self._counting_since = time.monotonic()

    def _rate(self, now: float) -> float:
        # called with the lock held
        n = len(self._bucket_ids)
        current = int(now / self._period)
        events = sum(c for b, c in zip(self._bucket_ids, self._bucket_counts) if current - n < b <= current)
        # the window: n - 1 whole buckets plus the running part of the current one, or less
        # if the counters are younger than that, but never under one bucket, so that the
        # first chunk after a start does not show as a spike
        span = max(min(now - (current - n + 1) * self._period, now - self._counting_since), self._period)
        return events / span

    def snapshot(self, missed: float = 3.0, now: float | None = None) -> dict[str, Any]:
        """This component as a JSON-able dict.

        Parameters
        ----------
        missed
            A component in a live state whose last beat is older than
            ``missed`` x ``heartbeat_s`` is reported as ``failed``.
        now
            ``time.monotonic()`` at which to evaluate ages and the rate.
        """
        now = time.monotonic() if now is None else now
        with self._lock:
            age = max(0.0, now - self._last_beat)
            state, detail = self.state, self.detail
            if self.heartbeat_s is not None and state in LIVE_STATES and age > missed * self.heartbeat_s:
                was = f"; was {state}" + (f": {detail}" if detail else "")
                state, detail = "failed", f"missed heartbeats: last {age:.1f} s ago{was}"
            return {
                "name": self.name,
                "kind": self.kind,
                "config": self.config,
                "state": state,
                "detail": detail,
                "heartbeat_s": self.heartbeat_s,
                "heartbeat_age_s": round(age, 3),
                "events_in": self.events_in,
                "events_out": self.events_out,
                "failed": self.failed,
                "fill": self.fill,
                "rate": round(self._rate(now), 3),
            }


class Topology:
    """The components of one running pipeline, with its current scan and its abort and stop requests.

    Parameters
    ----------
    pipeline
        The pipeline's name.
    missed
        Beats a component may miss before it is reported as failed.

    Notes
    -----
    Observers registered with :meth:`subscribe` hear about structural
    changes only (components added and removed, state changes, scans
    beginning and ending, abort and stop requests), never about counters, so they
    cost nothing per event. They are called in the thread that made the
    change; an observer that raises is logged and skipped.
    """

    def __init__(self, pipeline: str, missed: float = 3.0) -> None:
        if missed <= 0:
            raise ValueError(f"missed must be positive, got {missed}")
        self.pipeline = pipeline
        self.missed = missed
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.started_at = time.time()
        self._components: dict[str, Component] = {}
        self._lock = threading.Lock()
        self._observers: list[Observer] = []
        self._scan: str | None = None
        self._scan_state = "waiting"
        self._scan_started_at: float | None = None
        self._scans_done = 0
        self._abort = threading.Event()
        self._abort_reason = ""
        self._abort_at: float | None = None
        self._stop = threading.Event()
        self._stop_reason = ""
        self._stop_at: float | None = None

    # -- components --------------------------------------------------------------------
    def add(
        self, name: str, kind: str, config: dict[str, Any] | None = None, heartbeat_s: float | None = 1.0,
        **options: Any,
    ) -> Component:
        """Register and return a new component (state ``starting``).

        ``options`` go to :class:`Component` (``rate_window_s``, ``rate_buckets``).
        """
        component = Component(name, kind, config, heartbeat_s, **options)
        with self._lock:
            if name in self._components:
                raise ValueError(f"a component named {name!r} is already registered in pipeline "
                                 f"{self.pipeline!r}; remove it first or choose another name")
            self._components[name] = component
            component._notify = self._publish
        self._publish({"type": "added", "component": name, "kind": kind})
        return component

    def remove(self, name: str) -> Component | None:
        """Unregister the component ``name``; returns it, or ``None`` if there was none."""
        with self._lock:
            component = self._components.pop(name, None)
        if component is not None:
            component._notify = None
            self._publish({"type": "removed", "component": name, "kind": component.kind})
        return component

    def __getitem__(self, name: str) -> Component:
        with self._lock:
            try:
                return self._components[name]
            except KeyError:
                raise KeyError(f"no component {name!r} in pipeline {self.pipeline!r}; "
                               f"registered: {', '.join(self._components) or 'none'}") from None

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._components

    @property
    def components(self) -> list[Component]:
        """The registered components, in the order they were added."""
        with self._lock:
            return list(self._components.values())

    # -- scans -------------------------------------------------------------------------
    @property
    def scan(self) -> str | None:
        """The scan being processed, or ``None`` between scans."""
        return self._scan

    def begin_scan(self, name: str) -> None:
        """A new scan starts; any abort request left from before is dropped.

        After a stop request the new scan is aborted at once (a scan the engine
        had already taken when the stop came), so that no scan runs once the
        run was asked to end.
        """
        with self._lock:
            self._scan, self._scan_state, self._scan_started_at = name, "running", time.time()
            self._clear_abort()
            stopping = self._stop.is_set()
            if stopping:
                self._set_abort(self._stop_reason)
        self._publish({"type": "scan", "scan": name, "state": "running"})
        if stopping:
            self._publish({"type": "abort", "scan": name, "reason": self._stop_reason})

    def end_scan(self, state: str = "completed") -> None:
        """The current scan ended as one of ``END_STATES`` (``interrupted``: SIGINT, SIGTERM); the abort is cleared."""
        if state not in END_STATES:
            raise ValueError(f"a scan ends as 'completed', 'failed' or 'aborted' (or 'interrupted' by a signal), "
                             f"not {state!r}")
        with self._lock:
            name = self._scan
            self._scan, self._scan_state, self._scan_started_at = None, "waiting", None
            self._scans_done += 1
            self._clear_abort()
        self._publish({"type": "scan", "scan": name, "state": state})

    # -- abort -------------------------------------------------------------------------
    def request_abort(self, reason: str = "") -> str | None:
        """Ask the pipeline to stop the current scan; returns that scan's name, or ``None`` if none runs.

        Between scans nothing is set, so that a late abort cannot stop the
        next scan. The engine checks :attr:`abort_requested` (or waits on
        :attr:`abort_event`), stops feeding the scan, clears its buffers and
        calls :meth:`end_scan` with ``"aborted"``.
        """
        with self._lock:
            scan = self._scan
            if scan is None:
                return None
            self._set_abort(reason)
        self._publish({"type": "abort", "scan": scan, "reason": reason})
        return scan

    @property
    def abort_requested(self) -> bool:
        """Whether an abort of the current scan was requested."""
        return self._abort.is_set()

    @property
    def abort_event(self) -> threading.Event:
        """The abort flag itself, for a thread that wants to wait on it."""
        return self._abort

    @property
    def abort_reason(self) -> str:
        """Why the abort was requested (empty if none was, or none was given)."""
        return self._abort_reason

    def clear_abort(self) -> None:
        """Drop the abort request."""
        with self._lock:
            self._clear_abort()

    def _set_abort(self, reason: str) -> None:
        # called with the lock held
        self._abort_reason, self._abort_at = reason, time.time()
        self._abort.set()

    def _clear_abort(self) -> None:
        self._abort.clear()
        self._abort_reason, self._abort_at = "", None

    # -- stop --------------------------------------------------------------------------
    def request_stop(self, reason: str = "") -> str | None:
        """Ask the run to end: abort the current scan, if any, and start no other.

        Returns the name of the scan being aborted, or ``None`` between scans.
        Unlike an abort, the request stays: the engine checks
        :attr:`stop_requested` after each scan and before it starts one, a
        source that waits for the next scan stops waiting
        (:meth:`lightpipe.core.source.Source.scans`), and the run ends with
        the report of the scans done. A second request changes nothing.
        """
        with self._lock:
            if self._stop.is_set():
                return self._scan
            self._stop_reason, self._stop_at = reason, time.time()
            self._stop.set()
            scan = self._scan
            if scan is not None:
                self._set_abort(reason)
        self._publish({"type": "stop", "scan": scan, "reason": reason})
        if scan is not None:
            self._publish({"type": "abort", "scan": scan, "reason": reason})
        return scan

    @property
    def stop_requested(self) -> bool:
        """Whether the run was asked to end."""
        return self._stop.is_set()

    @property
    def stop_event(self) -> threading.Event:
        """The stop flag itself, for a thread (a source waiting for scans) that wants to wait on it."""
        return self._stop

    @property
    def stop_reason(self) -> str:
        """Why the run was asked to end (empty if it was not, or no reason was given)."""
        return self._stop_reason

    # -- observers ---------------------------------------------------------------------
    def subscribe(self, callback: Observer) -> Callable[[], None]:
        """Call ``callback(change)`` on every structural change; returns a function that unsubscribes."""
        with self._lock:
            self._observers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._observers:
                    self._observers.remove(callback)

        return unsubscribe

    def _publish(self, change: dict[str, Any]) -> None:
        change["pipeline"] = self.pipeline
        with self._lock:
            observers = list(self._observers)
        for callback in observers:
            try:
                callback(change)
            except Exception:  # an observer must never break the pipeline that it watches
                log.exception("topology observer %r failed on %s", callback, change)

    # -- the view ----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The whole topology as a JSON-able dict.

        Keys: ``pipeline``, ``pid``, ``host``, ``started_at`` (Unix time),
        ``uptime_s``, ``scan`` (``name``, ``state``: ``running`` or ``waiting``,
        ``started_at``, ``scans_done``), ``abort`` (``requested``, ``reason``,
        ``at``: of the current scan), ``stop`` (``requested``, ``reason``,
        ``at``: of the run) and ``components``: one dict per component with ``name``,
        ``kind``, ``config``, ``state``, ``detail``, ``heartbeat_s``,
        ``heartbeat_age_s``, ``events_in``, ``events_out``, ``failed``,
        ``fill`` and ``rate`` (events out per second).
        """
        now = time.monotonic()
        with self._lock:
            components = list(self._components.values())
            scan = {"name": self._scan, "state": self._scan_state, "started_at": self._scan_started_at,
                    "scans_done": self._scans_done}
            abort = {"requested": self._abort.is_set(), "reason": self._abort_reason, "at": self._abort_at}
            stop = {"requested": self._stop.is_set(), "reason": self._stop_reason, "at": self._stop_at}
        return {
            "pipeline": self.pipeline,
            "pid": self.pid,
            "host": self.host,
            "started_at": self.started_at,
            "uptime_s": round(time.time() - self.started_at, 3),
            "scan": scan,
            "abort": abort,
            "stop": stop,
            "components": [c.snapshot(self.missed, now) for c in components],
        }
