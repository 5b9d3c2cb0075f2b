"""A local mirror of a few etcd prefixes: list, then watch from list + 1.

:class:`PrefixMirror` feeds *sinks* (the router's pod table and link
cache) from one snapshot and then from watches, and keeps them coherent
by itself:

* **No gap between list and watch.** Every prefix is read at one
  revision R and every watch starts at R + 1, so a change committed
  between the two is delivered by the watch.
* **One writer.** Watch threads only queue what they receive; a single
  writer thread applies batches in order, requests progress and runs
  every recovery. Sinks never see two writers.
* **Bounded staleness.** The writer asks etcd for a progress
  notification every ``progress_interval``. A notification answering a
  request sent at time t proves the mirror held every change committed
  before t, so :meth:`PrefixMirror.staleness` is ``now - t`` for the
  oldest stream. A paused etcd answers nothing and the staleness grows
  (FR10).
* **Recovery.** A stream that ends (etcd restart, member gone: FR08,
  FR17) is rebuilt on the same multi-endpoint store, with capped
  backoff, forever: every prefix is listed again and watched from the
  new list revision + 1 (see below for why it does not resume). A compacted
  revision (FR07) means changes were missed: the mirror is marked
  RESYNCING (lookups must bypass it), every prefix is listed again and
  watched from the new list revision + 1. A refused watch or lost
  permission (FR09) makes it DEGRADED (bypassed) until a full resync
  succeeds.

etcd before 3.5.8 may answer a progress request for a watch that is
still replaying history (it started behind the current revision) with
the current revision, *before* the replayed events (etcd issue 15220;
seen with the bundled 3.5.1). The mirror therefore ignores progress
notifications for ``PROGRESS_GRACE`` seconds after creating a watch,
and never resumes a lost watch from an old revision: it lists again, so
a new watch only has the few changes between list and watch to replay.

Known shortcoming: while RECONNECTING the mirror still counts as usable
within the staleness bound, because nothing proves a change was missed;
once the bound passes it is bypassed like a paused etcd.
"""

from __future__ import annotations

import enum
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from etcdroute.errors import (
    CompactedError,
    LifecycleError,
    PermissionDeniedError,
    StoreError,
    StoreUnavailableError,
    WatchRefusedError,
)
from etcdroute.jobs import Backoff
from etcdroute.store import EtcdStore, WatchBatch, WatchEvent, WatchStream

logger = logging.getLogger(__name__)


class MirrorSink(Protocol):
    """What a mirror feeds: a snapshot, then ordered batches."""

    def reset_from(self, store: EtcdStore, prefix: str, revision: int) -> None:
        """Replace the contents with the prefix as of ``revision``."""

    def apply(self, events: list[WatchEvent], revision: int) -> None:
        """Apply changes; every change up to ``revision`` is included."""


class MirrorState(enum.Enum):
    """Where a mirror stands.

    ``LIVE`` and ``RECONNECTING`` may serve within the staleness bound;
    ``RESYNCING`` and ``DEGRADED`` must be bypassed.
    """

    NEW = "new"
    LIVE = "live"
    RECONNECTING = "reconnecting"
    RESYNCING = "resyncing"
    DEGRADED = "degraded"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Feed:
    """One watched prefix and the sink it feeds."""

    prefix: str
    sink: MirrorSink


@dataclass
class _Stream:
    """Book-keeping of one feed's current watch."""

    watch: WatchStream | None = None
    revision: int = 0
    confirmed_at: float = -math.inf
    pending_since: float | None = None
    trusted_from: float = math.inf


#: Seconds after a watch is created during which its progress
#: notifications are not trusted (see the module docstring).
PROGRESS_GRACE = 0.5

# Queue items: (generation, feed index, batch or error), or a command.
_PROGRESS = "progress"
_STOP = "stop"


class PrefixMirror:
    """List-and-watch of ``feeds`` on ``store`` with one writer thread."""

    def __init__(
        self,
        store: EtcdStore,
        feeds: Sequence[Feed],
        *,
        name: str,
        progress_interval: float = 0.5,
        max_backoff: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        on_listed: Callable[[int], None] | None = None,
    ) -> None:
        self._store = store
        self._feeds = list(feeds)
        self._name = name
        self._progress_interval = progress_interval
        self._max_backoff = max_backoff
        self._clock = clock
        self._on_listed = on_listed
        self._lock = threading.Condition()
        self._streams = [_Stream() for _ in self._feeds]
        self._generation = 0
        self._state = MirrorState.NEW
        # Derived from the above for the lock-free hot path.
        self._serving = False
        self._oldest_confirmation = -math.inf
        self._queue: queue.Queue[tuple[int, int, object] | str] = queue.Queue()
        self._stopping = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self.resyncs = 0
        self.reconnects = 0
        self._thread = threading.Thread(
            target=self._run, name=f"etcdroute-mirror {name}", daemon=True
        )

    # --------------------------------------------------------- lifecycle

    def start(self) -> None:
        """List and watch every feed; raise if etcd refuses (FR09)."""
        if self._state is not MirrorState.NEW:
            raise LifecycleError(f"mirror {self._name} already started")
        try:
            self._sync()
        except BaseException:
            self._cancel_watches()
            self._state = MirrorState.STOPPED
            raise
        self._set_state(MirrorState.LIVE)
        self._thread.start()

    def stop(self) -> None:
        """Stop the writer and every watch; idempotent."""
        self._stopping.set()
        self._running.set()
        self._queue.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._cancel_watches()
        self._set_state(MirrorState.STOPPED)

    # ------------------------------------------------------------ state

    @property
    def state(self) -> MirrorState:
        return self._state

    def staleness(self) -> float:
        """Seconds since last proven current (inf if unusable)."""
        if not self._serving:
            return math.inf
        return max(0.0, self._clock() - self._oldest_confirmation)

    def usable(self, max_staleness: float) -> bool:
        """True if lookups may use the sinks within ``max_staleness``.

        The hot path of every cached lookup: two attribute reads and a
        clock call, no lock (each attribute is replaced atomically).
        """
        return (
            self._serving
            and self._clock() - self._oldest_confirmation <= max_staleness
        )

    def revision(self, index: int) -> int:
        """Revision up to which feed ``index`` holds every change."""
        with self._lock:
            return self._streams[index].revision

    def wait_current(self, timeout: float) -> bool:
        """Wait until the mirror is proven to hold every change committed
        before this call; False if that did not happen within
        ``timeout`` seconds."""
        since = self._clock()
        deadline = since + timeout
        with self._lock:
            while not (self._serving and self._oldest_confirmation >= since):
                left = deadline - self._clock()
                if left <= 0:
                    return False
                self._queue.put(_PROGRESS)
                self._lock.wait(min(left, 0.1))
        return True

    # ----------------------------------------------------- test hooks

    def pause(self) -> None:
        """Hold the writer before its next item (test hook)."""
        self._running.clear()

    def resume(self) -> None:
        """Undo :meth:`pause`."""
        self._running.set()

    def drop_watch(self) -> None:
        """Cut the current watches as a lost connection would (test hook)."""
        self._cancel_watches()
        with self._lock:
            generation = self._generation
        self._queue.put(
            (generation, 0, StoreUnavailableError("watch dropped by test"))
        )

    # ----------------------------------------------------------- writer

    def _run(self) -> None:
        next_progress = self._clock()
        while not self._stopping.is_set():
            wait = max(0.0, next_progress - self._clock())
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None
            self._running.wait()
            if self._stopping.is_set():
                return
            try:
                if item == _PROGRESS:
                    next_progress = self._clock()
                elif isinstance(item, tuple):
                    self._handle(*item)
                if self._clock() >= next_progress:
                    self._request_progress()
                    next_progress = self._clock() + self._progress_interval
            except Exception:
                # A bug in a sink must not end the only writer; the next
                # recovery lists everything again.
                logger.exception("mirror %s: writer failed", self._name)
                self._recover(StoreError("writer failed"))

    def _handle(self, generation: int, index: int, payload: object) -> None:
        with self._lock:
            if generation != self._generation:
                return  # from a watch that has been replaced
        if isinstance(payload, WatchBatch):
            self._apply(index, payload)
        elif isinstance(payload, StoreError):
            self._recover(payload)

    def _apply(self, index: int, batch: WatchBatch) -> None:
        stream = self._streams[index]
        if not batch.events and self._clock() < stream.trusted_from:
            # A progress notification we cannot trust yet; the next
            # request starts a new proof.
            with self._lock:
                stream.pending_since = None
            return
        # A batch of events proves only its own events: while a watch
        # replays history etcd stamps it with the current revision even
        # if more history follows. Progress notifications prove more.
        revision = batch.revision
        if batch.events:
            revision = max(event.kv.mod_revision for event in batch.events)
        self._feeds[index].sink.apply(batch.events, revision)
        with self._lock:
            stream.revision = max(stream.revision, revision)
            if not batch.events and stream.pending_since is not None:
                # A progress notification answers the oldest open request.
                stream.confirmed_at = stream.pending_since
                stream.pending_since = None
                self._oldest_confirmation = min(
                    s.confirmed_at for s in self._streams
                )
            self._lock.notify_all()

    def _request_progress(self) -> None:
        now = self._clock()
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            if stream.watch is None:
                continue
            if stream.pending_since is None:
                stream.pending_since = now
            stream.watch.request_progress()

    # --------------------------------------------------------- recovery

    def _recover(self, error: StoreError) -> None:
        """Rebuild the watches; list again if changes may be lost."""
        self._cancel_watches()
        if isinstance(error, CompactedError):
            self._set_state(MirrorState.RESYNCING)
            logger.info(
                "mirror %s: watch revision compacted; listing again",
                self._name,
            )
        elif isinstance(error, (WatchRefusedError, PermissionDeniedError)):
            self._set_state(MirrorState.DEGRADED)
            logger.warning(
                "mirror %s: %s; lookups bypass the cache until it is back",
                self._name,
                error,
            )
        else:
            # Listing again rather than resuming from the last revision:
            # a resumed watch replays history, and etcd before 3.5.8 may
            # send a progress notification for the current revision in the
            # middle of that replay; trusting it would skip the rest.
            self._set_state(MirrorState.RECONNECTING)
            logger.info(
                "mirror %s: watch lost (%s); listing again and rebuilding it",
                self._name,
                error,
            )
        backoff = Backoff(0.1, self._max_backoff)
        while not self._stopping.is_set():
            try:
                self._sync()
                self.resyncs += 1
                self.reconnects += 1
                logger.info(
                    "mirror %s: watching again from revision %d",
                    self._name,
                    min(s.revision for s in self._streams) + 1,
                )
                self._set_state(MirrorState.LIVE)
                return
            except CompactedError:
                self._cancel_watches()
                if self._state is not MirrorState.RESYNCING:
                    logger.info(
                        "mirror %s: missed revisions were compacted; "
                        "listing again",
                        self._name,
                    )
                self._set_state(MirrorState.RESYNCING)
                continue
            except (WatchRefusedError, PermissionDeniedError) as exc:
                self._cancel_watches()
                if self._state is not MirrorState.DEGRADED:
                    logger.warning(
                        "mirror %s: %s; lookups bypass the cache",
                        self._name,
                        exc,
                    )
                self._set_state(MirrorState.DEGRADED)
            except StoreError as exc:
                self._cancel_watches()
                logger.debug("mirror %s: retry failed: %s", self._name, exc)
            self._stopping.wait(backoff.next())

    def _sync(self) -> None:
        """List every feed at one revision, then watch from it + 1."""
        listed_at = self._clock()
        _, revision = self._store.count_prefix(self._feeds[0].prefix)
        if self._state is MirrorState.RECONNECTING:
            # etcd answers again; until the new listing is in, the old
            # entries may be older than changes made meanwhile: bypass.
            self._set_state(MirrorState.RESYNCING)
        for feed in self._feeds:
            feed.sink.reset_from(self._store, feed.prefix, revision)
        if self._on_listed is not None:
            self._on_listed(revision)
        with self._lock:
            for stream in self._streams:
                stream.revision = revision
                stream.confirmed_at = listed_at
                stream.pending_since = None
            self._oldest_confirmation = listed_at
        self._start_watches()

    def _start_watches(self) -> None:
        with self._lock:
            self._generation += 1
            generation = self._generation
            starts = [stream.revision + 1 for stream in self._streams]
        for index, feed in enumerate(self._feeds):
            watch = self._store.watch_prefix(
                feed.prefix,
                start_revision=starts[index],
                on_batch=self._enqueue(generation, index),
                on_error=self._enqueue(generation, index),
            )
            with self._lock:
                self._streams[index].watch = watch
                self._streams[index].trusted_from = (
                    self._clock() + PROGRESS_GRACE
                )

    def _enqueue(
        self, generation: int, index: int
    ) -> Callable[[object], None]:
        def put(payload: object) -> None:
            self._queue.put((generation, index, payload))

        return put

    def _cancel_watches(self) -> None:
        with self._lock:
            self._generation += 1
            watches = [s.watch for s in self._streams]
            for stream in self._streams:
                stream.watch = None
                stream.pending_since = None
        for watch in watches:
            if watch is not None:
                watch.cancel()

    def _set_state(self, state: MirrorState) -> None:
        with self._lock:
            self._state = state
            self._serving = state in (
                MirrorState.LIVE,
                MirrorState.RECONNECTING,
            )
            self._lock.notify_all()
