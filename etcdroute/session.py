"""A pod's registration on an etcd lease, as a small state machine.

::

              start()                 keepalive fails
    NEW ───────────────► REGISTERED ◄──────────────────► DEGRADED
                           ▲     │    keepalive works again   │
             re-registered │     │ lease or registration gone │
                           │     ▼                            │
                           └── LOST ◄─────────────────────────┘

    any state ── stop() ──► STOPPED   (final)

* ``REGISTERED``: the last keepalive succeeded; the registration is live.
* ``DEGRADED``: etcd did not answer the last renewal. The lease may still
  be alive; the pod keeps claiming ownership only until its *local lease
  deadline* (see below), then :meth:`PodSession.lease_valid` turns False.
* ``LOST``: etcd said the lease is gone (a keepalive answered TTL <= 0,
  field report FR01) or the registration key vanished. A lost lease id is
  never used again (FR02). Lease-bound links died with the lease; the
  session re-registers on a new lease with a new epoch.
* ``STOPPED``: the lease was revoked (or abandoned if etcd was down).

The local lease deadline is ``sent + TTL - margin`` on the monotonic
clock, where ``sent`` is when the last *successful* keepalive was sent
(not when its answer came back) and TTL is the granted TTL (an answered
TTL above it is ignored, FR06). The pod therefore stops claiming
ownership before etcd can expire the lease, as long as its clock rate is
sane and it is not paused longer than the margin between two checks.

Listeners registered with :meth:`PodSession.add_listener` are called on
every transition, from the thread that made it.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from etcdroute.errors import (
    LeaseLostError,
    LifecycleError,
    PodIdConflictError,
)
from etcdroute.keys import Keyspace
from etcdroute.links import pod_from_kv
from etcdroute.models import (
    PodInfo,
    RoutingState,
    encode_load,
    encode_registration,
)
from etcdroute.store import Compare, EtcdStore, Get, Put

logger = logging.getLogger(__name__)


class SessionState(enum.Enum):
    NEW = "new"
    REGISTERED = "registered"
    DEGRADED = "degraded"
    LOST = "lost"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Transition:
    """One change of session state, as given to listeners."""

    old: SessionState
    new: SessionState
    lease_id: int
    epoch: int
    reason: str


Listener = Callable[[Transition], None]


class PodSession:
    """Registration, lease and local lease deadline of one pod.

    All methods are thread-safe. The session does no background work on
    its own: the driver's state job calls :meth:`renew` and
    :meth:`recover`.
    """

    def __init__(
        self,
        store: EtcdStore,
        keyspace: Keyspace,
        service: str,
        pod_id: int,
        address: str,
        *,
        lease_ttl: int,
        fencing_margin: float,
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._keyspace = keyspace
        self.service = service
        self.pod_id = pod_id
        self.address = address
        self._ttl = lease_ttl
        self._margin = fencing_margin
        self._clock = clock
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._state = SessionState.NEW
        self._lease_id = 0
        self._granted_ttl = lease_ttl
        self._epoch = 0
        self._registration: PodInfo | None = None
        self._deadline = float("-inf")
        self._listeners: list[Listener] = []
        self.routing_state = RoutingState.ACCEPTING

    # -------------------------------------------------------- queries

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def lease_id(self) -> int:
        return self._lease_id

    @property
    def epoch(self) -> int:
        """Create revision of the current registration (0 before start)."""
        return self._epoch

    @property
    def registration(self) -> PodInfo | None:
        return self._registration

    @property
    def lease_deadline(self) -> float:
        """Monotonic time after which this pod claims nothing."""
        return self._deadline

    def lease_valid(self) -> bool:
        """True while the pod may still act as owner of its links."""
        with self._lock:
            live = self._state in (
                SessionState.REGISTERED,
                SessionState.DEGRADED,
            )
            return live and self._clock() < self._deadline

    def add_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def wait_for(
        self, states: set[SessionState], timeout: float | None = None
    ) -> bool:
        """Block until the state is one of ``states``; False on timeout."""
        with self._changed:
            return self._changed.wait_for(
                lambda: self._state in states, timeout
            )

    # ------------------------------------------------------ registration

    def register(self, load_value: bytes) -> None:
        """Grant a lease and create the registration and load report.

        Atomic: either both keys exist on the new lease, or nothing was
        created and the lease is revoked (no lease is leaked). A pod id
        held by another live lease raises :class:`PodIdConflictError`.
        """
        lease_id, granted = self._store.grant_lease(self._ttl)
        sent = self._clock()
        try:
            pod_key = self._keyspace.pod_key(self.service, self.pod_id)
            result = self._store.txn(
                [Compare(pod_key, "create", "==", 0)],
                success=[
                    Put(pod_key, self._registration_value(), lease_id),
                    Put(
                        self._keyspace.load_key(self.service, self.pod_id),
                        load_value,
                        lease_id,
                    ),
                    Get(pod_key),
                ],
                failure=[Get(pod_key)],
            )
        except BaseException:
            self._revoke_quietly(lease_id)
            raise
        if not result.succeeded:
            self._revoke_quietly(lease_id)
            holder = result.read(0)
            raise PodIdConflictError(
                self.service, self.pod_id, holder.lease if holder else 0
            )

        kv = result.read(2)
        assert kv is not None
        with self._lock:
            self._lease_id = lease_id
            self._granted_ttl = (
                min(granted, self._ttl) if granted > 0 else self._ttl
            )
            self._deadline = sent + self._granted_ttl - self._margin
            self._epoch = kv.create_revision
            self._registration = pod_from_kv(self.service, kv)
            self._set_state(SessionState.REGISTERED, "registered")
        logger.info(
            "pod %d of %r registered (lease %x, epoch %d, ttl %ds)",
            self.pod_id,
            self.service,
            lease_id,
            self._epoch,
            self._granted_ttl,
        )

    def renew(self) -> bool:
        """Send one keepalive. True if the lease is alive.

        Returns False (and moves to ``LOST``) if etcd says the lease is
        gone. Raises :class:`StoreError` if etcd did not answer; the
        caller then calls :meth:`mark_degraded`.
        """
        lease_id = self._lease_id
        sent = self._clock()
        ttl = self._store.keepalive(lease_id)
        with self._lock:
            if (
                lease_id != self._lease_id
                or self._state is SessionState.STOPPED
            ):
                return False
            if ttl <= 0:
                self._lose(f"keepalive answered ttl {ttl}")
                return False
            self._deadline = sent + min(ttl, self._granted_ttl) - self._margin
            if self._state is SessionState.DEGRADED:
                logger.info(
                    "pod %d: etcd reachable again, lease %x alive",
                    self.pod_id,
                    lease_id,
                )
            self._set_state(SessionState.REGISTERED, "keepalive ok")
        return True

    def mark_degraded(self, error: Exception) -> None:
        """Record that a renewal failed without an answer from etcd."""
        with self._lock:
            if self._state is SessionState.REGISTERED:
                remaining = self._deadline - self._clock()
                logger.warning(
                    "pod %d: lease renewal failed (%s); ownership is "
                    "dropped in %.1f s unless etcd answers",
                    self.pod_id,
                    error,
                    max(remaining, 0.0),
                )
                self._set_state(SessionState.DEGRADED, str(error))

    def mark_registration_gone(self, reason: str) -> None:
        """The registration vanished while the lease may live: re-register."""
        with self._lock:
            if self._state in (SessionState.REGISTERED, SessionState.DEGRADED):
                self._lose(reason)

    def recover(self, load_value: bytes) -> None:
        """Re-register after ``LOST`` on a brand-new lease.

        The old lease is revoked first (it may still exist if only the
        registration key was deleted) and never used again.
        """
        with self._lock:
            if self._state is not SessionState.LOST:
                return
            old = self._lease_id
        if old:
            # Usually already gone; revoking also covers a registration
            # deleted by hand while its lease lived on.
            self._revoke_quietly(old)
        self.register(load_value)

    def publish(self, *, routing_state: RoutingState | None = None) -> int:
        """Write the registration again (synchronously); returns revision.

        The write is guarded by the epoch: if the registration is not the
        one this session created, nothing is written and
        :class:`LeaseLostError` is raised (the state job re-registers).
        """
        with self._lock:
            # Record the wish first: if the pod is re-registering, it
            # registers again with this state.
            if routing_state is not None:
                self.routing_state = routing_state
            self._require_live()
            pod_key = self._keyspace.pod_key(self.service, self.pod_id)
            lease_id, epoch = self._lease_id, self._epoch
            value = self._registration_value()
        result = self._store.txn(
            [Compare(pod_key, "create", "==", epoch)],
            success=[Put(pod_key, value, lease_id), Get(pod_key)],
        )
        if not result.succeeded:
            self.mark_registration_gone("registration replaced or deleted")
            raise LeaseLostError(self.service, self.pod_id, lease_id)
        kv = result.read(1)
        with self._lock:
            if kv is not None and epoch == self._epoch:
                self._registration = pod_from_kv(self.service, kv)
        return result.revision

    def verify(self) -> bool:
        """Check that the registration is still this session's own.

        A read-only transaction comparing the epoch; if someone deleted
        or replaced the registration while the lease lives on, the session
        moves to ``LOST`` (and the state job registers again).
        """
        with self._lock:
            self._require_live()
            epoch = self._epoch
        pod_key = self._keyspace.pod_key(self.service, self.pod_id)
        result = self._store.txn([Compare(pod_key, "create", "==", epoch)])
        if not result.succeeded:
            self.mark_registration_gone("registration replaced or deleted")
        return result.succeeded

    def require_owner(self) -> None:
        """Raise :class:`LeaseLostError` unless this pod may act as owner.

        True while registered (or degraded) and before the local lease
        deadline: the pod stops claiming ownership before etcd can expire
        its lease.
        """
        with self._lock:
            self._require_live()
            if self._clock() >= self._deadline:
                raise LeaseLostError(
                    self.service,
                    self.pod_id,
                    self._lease_id,
                    "local lease deadline passed without a keepalive",
                )

    def publish_load(self, load: int, workload: int) -> None:
        """Write the load report, guarded by the epoch like :meth:`publish`."""
        with self._lock:
            self._require_live()
            lease_id, epoch = self._lease_id, self._epoch
        pod_key = self._keyspace.pod_key(self.service, self.pod_id)
        load_key = self._keyspace.load_key(self.service, self.pod_id)
        result = self._store.txn(
            [Compare(pod_key, "create", "==", epoch)],
            success=[Put(load_key, encode_load(load, workload), lease_id)],
        )
        if not result.succeeded:
            self.mark_registration_gone("registration replaced or deleted")
            raise LeaseLostError(self.service, self.pod_id, lease_id)

    def close(self, *, revoke: bool) -> None:
        """Move to ``STOPPED``; revoke the lease if asked and possible."""
        with self._lock:
            if self._state is SessionState.STOPPED:
                return
            lease_id = self._lease_id
            had_lease = self._state is not SessionState.NEW
            self._deadline = float("-inf")
            self._set_state(SessionState.STOPPED, "stopped")
        if revoke and had_lease:
            self._revoke_quietly(lease_id)

    # -------------------------------------------------------- internals

    def _registration_value(self) -> bytes:
        return encode_registration(
            self.pod_id, self.address, self.routing_state
        )

    def _require_live(self) -> None:
        if self._state in (SessionState.NEW, SessionState.STOPPED):
            raise LifecycleError(
                f"pod {self.pod_id} is {self._state.value}, not started"
            )
        if self._state is SessionState.LOST:
            raise LeaseLostError(self.service, self.pod_id, self._lease_id)

    def _lose(self, reason: str) -> None:
        """Move to LOST (lock held). Logged once per lost lease."""
        if self._state is SessionState.LOST:
            return
        self._deadline = float("-inf")
        logger.warning(
            "pod %d of %r lost lease %x (%s); its lease-bound links are "
            "gone; registering again",
            self.pod_id,
            self.service,
            self._lease_id,
            reason,
        )
        self._set_state(SessionState.LOST, reason)

    def _set_state(self, new: SessionState, reason: str) -> None:
        """Change state (lock held) and tell listeners."""
        old = self._state
        if old is new:
            return
        self._state = new
        self._changed.notify_all()
        transition = Transition(old, new, self._lease_id, self._epoch, reason)
        logger.debug(
            "pod %d: %s -> %s (%s)", self.pod_id, old.value, new.value, reason
        )
        for listener in list(self._listeners):
            try:
                listener(transition)
            except Exception:
                logger.exception("session listener failed")

    def _revoke_quietly(self, lease_id: int) -> None:
        try:
            self._store.revoke_lease(lease_id)
        except Exception as exc:
            logger.warning(
                "could not revoke lease %x (%s); etcd expires it after "
                "its TTL",
                lease_id,
                exc,
            )
