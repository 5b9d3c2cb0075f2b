"""A periodic background job with a clean stop.

The job's function returns how long to wait before its next run, so it
can back off after a failure and return to its period after a success.
:meth:`PeriodicJob.stop` wakes the thread and joins it: when it returns,
the function is not running and will not run again (the original design
let its jobs race with stop; this does not).

Tests can :meth:`pause` a job to simulate a stalled process (a GC pause,
SIGSTOP) without waiting for real time to pass.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)


class PeriodicJob:
    """Run ``tick()`` on a daemon thread until stopped.

    ``tick`` returns the delay in seconds before the next run. An
    exception escaping ``tick`` is logged and the job waits
    ``error_delay`` before trying again: a job never dies on its own.
    """

    def __init__(
        self,
        name: str,
        tick: Callable[[], float],
        *,
        first_delay: float = 0.0,
        error_delay: float = 1.0,
    ) -> None:
        self.name = name
        self._tick = tick
        self._first_delay = first_delay
        self._error_delay = error_delay
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._thread = threading.Thread(
            target=self._run, name=name, daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the job and wait for its thread; idempotent."""
        self._stopping.set()
        self._running.set()
        self._wake.set()
        if (
            self._thread.is_alive()
            and threading.current_thread() is not self._thread
        ):
            self._thread.join(timeout)

    def trigger(self) -> None:
        """Run the next tick now instead of at its scheduled time."""
        self._wake.set()

    def pause(self) -> None:
        """Hold the job before its next tick (test hook)."""
        self._running.clear()

    def resume(self) -> None:
        """Undo :meth:`pause` and run a tick right away."""
        self._running.set()
        self._wake.set()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        delay = self._first_delay
        while not self._stopping.is_set():
            self._wake.wait(delay)
            self._wake.clear()
            self._running.wait()
            if self._stopping.is_set():
                return
            try:
                delay = self._tick()
            except Exception:
                logger.exception("job %s failed; retrying", self.name)
                delay = self._error_delay


class Backoff:
    """Capped exponential backoff with jitter.

    Each :meth:`next` doubles the delay from ``base`` up to ``cap`` and
    returns a random value between half of it and all of it, so many pods
    retrying after the same outage do not hit etcd in the same instant.
    """

    def __init__(
        self,
        base: float,
        cap: float,
        *,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self._base = base
        self._cap = cap
        self._uniform = uniform
        self._attempts = 0

    def next(self) -> float:
        delay = min(self._cap, self._base * 2**self._attempts)
        self._attempts = min(self._attempts + 1, 32)
        return self._uniform(delay / 2, delay)

    def reset(self) -> None:
        self._attempts = 0
