"""The server driver: what runs inside each pod of a stateful service.

A :class:`ServerDriver` registers its pod on an etcd lease, keeps the
lease alive, publishes the pod's load and routing state, and creates and
removes links ``uid -> pod`` with compare-and-set transactions. It serves
one namespace only.

Lifecycle: constructing a driver checks every argument (the original
design's ``Init``); :meth:`ServerDriver.start` registers the pod and
starts two background jobs; :meth:`ServerDriver.stop` stops and joins the
jobs, revokes the lease and closes the connection it opened. Starting
twice, or after stop, raises :class:`LifecycleError`; stop is idempotent.

Background jobs:

* the **state job** (every ``state_interval``) renews the lease, moves
  the session between registered / degraded / lost (see
  :mod:`etcdroute.session`), re-registers after a lost lease, and
  republishes the load report when it changed;
* the **workload job** (every ``workload_interval``) publishes the pod's
  workload: the application's value if it gave a ``workload`` function,
  else its number of links.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence

from etcdroute.config import DriverConfig
from etcdroute.errors import (
    InvalidArgumentError,
    LeaseLostError,
    LifecycleError,
    PodIdConflictError,
    StoreError,
)
from etcdroute.fencing import Ownership
from etcdroute.jobs import Backoff, PeriodicJob
from etcdroute.keys import Keyspace, check_name, check_pod_id, check_uid
from etcdroute.links import LinkTable
from etcdroute.models import (
    Link,
    LinkResult,
    PodInfo,
    RoutingState,
    encode_load,
)
from etcdroute.session import Listener, PodSession, SessionState
from etcdroute.store import Credentials, EtcdStore, open_store

logger = logging.getLogger(__name__)

_NEW, _RUNNING, _STOPPED = "new", "running", "stopped"


def _check_address(address: object) -> None:
    """An address is printable text of at most 256 characters."""
    if not isinstance(address, str) or len(address) > 256:
        raise InvalidArgumentError("address", "must be text of <= 256 chars")
    if not address.isprintable():
        raise InvalidArgumentError("address", "must be printable text")
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError("address", "is not valid UTF-8") from None


class ServerDriver:
    """Registration and link operations of one pod.

    ``etcd`` is an :class:`EtcdStore` (shared, not closed by the driver)
    or endpoints such as ``"127.0.0.1:2379"`` (the driver opens and closes
    its own store, with ``timeout`` and ``credentials``).
    """

    def __init__(
        self,
        etcd: EtcdStore | str | Sequence[str],
        *,
        namespace: str,
        service: str,
        pod_id: int,
        address: str = "",
        config: DriverConfig | None = None,
        workload: Callable[[], int] | None = None,
        timeout: float = 5.0,
        credentials: Credentials | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Check everything before opening anything.
        self.namespace = check_name("namespace", namespace)
        self.service = check_name("service", service)
        self.pod_id = check_pod_id(pod_id)
        _check_address(address)
        if workload is not None and not callable(workload):
            raise InvalidArgumentError("workload", "must be callable or None")
        if not callable(clock):
            raise InvalidArgumentError("clock", "must be callable")
        self.config = config if config is not None else DriverConfig()
        if not isinstance(self.config, DriverConfig):
            raise InvalidArgumentError("config", "must be a DriverConfig")
        self.keyspace = Keyspace(self.config.prefix, self.namespace)

        self._store, self._owns_store = open_store(
            etcd, timeout=timeout, credentials=credentials
        )
        failover = 2 * self._store.timeout + self.config.state_interval
        if self.config.lease_ttl <= failover:
            logger.warning(
                "lease_ttl %d s is not above 2 x call timeout + "
                "state_interval (%.1f s): a frozen etcd member can cost "
                "this pod its lease before keepalives move to another",
                self.config.lease_ttl,
                failover,
            )

        self._links = LinkTable(
            self._store, self.keyspace, persistent=self.config.persistent_links
        )
        self._session = PodSession(
            self._store,
            self.keyspace,
            self.service,
            self.pod_id,
            address,
            lease_ttl=self.config.lease_ttl,
            fencing_margin=self.config.fencing_margin,
            clock=clock,
        )
        #: Links this pod owns, fencing and the ownership-lost signal.
        self.ownership = Ownership(
            self._store,
            self.keyspace,
            self._session,
            persistent=self.config.persistent_links,
            clock=clock,
        )
        self._workload_fn = workload
        self._lock = threading.Lock()
        self._lifecycle = _NEW
        self._load = 0
        self._workload = 0
        self._published: tuple[int, int] | None = None
        self._backoff = Backoff(0.2, self.config.max_backoff)
        self._state_job = PeriodicJob(
            f"etcdroute-state pod={pod_id}",
            self._state_tick,
            first_delay=self.config.state_interval,
        )
        self._workload_job = PeriodicJob(
            f"etcdroute-workload pod={pod_id}",
            self._workload_tick,
            first_delay=0.0,
            error_delay=self.config.workload_interval,
        )

    # ------------------------------------------------------- lifecycle

    def start(self) -> ServerDriver:
        """Register the pod and start the background jobs.

        Raises :class:`PodIdConflictError` if the pod id is held by
        another live process (the driver stays startable), and
        :class:`LifecycleError` if already started or stopped.
        """
        with self._lock:
            if self._lifecycle != _NEW:
                raise LifecycleError(
                    f"driver of pod {self.pod_id} is {self._lifecycle}; "
                    "start() is allowed once"
                )
            self._session.register(self._load_value())
            self._published = (self._load, self._workload)
            self._lifecycle = _RUNNING
        self._state_job.start()
        self._workload_job.start()
        return self

    def stop(self) -> None:
        """Stop jobs, revoke the lease, close owned connections.

        Idempotent and safe to call from any thread. Lease-bound links
        end with the lease; persistent links stay.
        """
        with self._lock:
            if self._lifecycle == _STOPPED:
                return
            was_running = self._lifecycle == _RUNNING
            self._lifecycle = _STOPPED
        self._state_job.stop()
        self._workload_job.stop()
        if was_running:
            self._session.close(revoke=True)
            logger.info("pod %d of %r stopped", self.pod_id, self.service)
        else:
            self._session.close(revoke=False)
        if self._owns_store:
            self._store.close()

    def __enter__(self) -> ServerDriver:
        try:
            return self.start()
        except BaseException:
            # __exit__ does not run when __enter__ fails: close here.
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ----------------------------------------------------------- state

    @property
    def state(self) -> SessionState:
        """State of the pod's registration (see :mod:`etcdroute.session`)."""
        return self._session.state

    @property
    def lease_id(self) -> int:
        return self._session.lease_id

    @property
    def epoch(self) -> int:
        """This incarnation of the pod: its registration's create revision."""
        return self._session.epoch

    @property
    def store(self) -> EtcdStore:
        return self._store

    @property
    def session(self) -> PodSession:
        return self._session

    def lease_valid(self) -> bool:
        """Whether this pod may still act as owner (local lease deadline)."""
        return self._session.lease_valid()

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(transition)`` on every session state change."""
        if not callable(listener):
            raise InvalidArgumentError("listener", "must be callable")
        self._session.add_listener(listener)

    def get_load_state(self) -> int:
        return self._load

    def set_load_state(self, load: int) -> None:
        """Set the pod's load; the state job publishes it when it changed."""
        if isinstance(load, bool) or not isinstance(load, int) or load < 0:
            raise InvalidArgumentError("load", f"{load!r} must be an int >= 0")
        with self._lock:
            self._require_not_stopped()
            self._load = load

    def get_routing_state(self) -> RoutingState:
        return self._session.routing_state

    def set_routing_state(self, routing_state: RoutingState | str) -> None:
        """Change the routing state, synchronously once started.

        When this returns, etcd holds the new state: a pod set to
        ``DRAINING`` or ``OFFLINE`` receives no new link from then on.
        Before start it only sets the state the pod will register with.
        While the pod is re-registering after a lost lease it raises
        :class:`LeaseLostError`, but the state is kept and the pod
        registers again with it.
        """
        state = RoutingState.parse(routing_state)
        with self._lock:
            running = self._lifecycle == _RUNNING
            if not running:
                self._require_not_stopped()
                self._session.routing_state = state
                return
        revision = self._session.publish(routing_state=state)
        logger.info(
            "pod %d routing state is now %s (revision %d)",
            self.pod_id,
            state.value,
            revision,
        )

    def pods(self, service: str | None = None) -> list[PodInfo]:
        """Every registered pod of a service (this one's by default)."""
        self._require_running()
        pods, _ = self._links.pods(self._service_arg(service))
        return pods

    # ----------------------------------------------------------- links

    def try_set_linked_pod(
        self,
        uid: str,
        pod_id: int | None = None,
        *,
        service: str | None = None,
        namespace: str | None = None,
    ) -> LinkResult:
        """Link ``uid`` to ``pod_id`` (this pod by default) if unlinked.

        One transaction: create-if-absent, target registered and
        accepting. If ``uid`` is linked already nothing changes and the
        result names the current owner with ``created=False``. Raises
        :class:`PodNotRegisteredError` or :class:`PodNotAcceptingError`
        when the target cannot take the link.
        """
        service, uid, target = self._link_args(uid, pod_id, service, namespace)
        if self._is_own(service, target):
            self._session.require_owner()
            epoch = self._session.epoch
            result = self._links.try_set(
                service,
                uid,
                target,
                target=self._session.registration,
                epoch=epoch,
            )
        else:
            epoch = None
            result = self._links.try_set(service, uid, target)
        self._remember(service, result, epoch)
        return result

    def set_linked_pod(
        self,
        uid: str,
        pod_id: int | None = None,
        *,
        service: str | None = None,
        namespace: str | None = None,
    ) -> LinkResult:
        """Link ``uid`` to ``pod_id`` whatever held it (admin, migration)."""
        service, uid, target = self._link_args(uid, pod_id, service, namespace)
        epoch = None
        if self._is_own(service, target):
            self._session.require_owner()
            epoch = self._session.epoch
        result = self._links.set(service, uid, target, epoch=epoch)
        logger.debug("uid %r forced to pod %d", uid, target)
        self._remember(service, result, epoch)
        return result

    def remove_linked_pod(
        self,
        uid: str,
        *,
        service: str | None = None,
        namespace: str | None = None,
    ) -> bool:
        """Remove the link of ``uid``; True if one existed."""
        service, uid, _ = self._link_args(uid, self.pod_id, service, namespace)
        self.ownership.forget(service, uid)
        return self._links.remove(service, uid)

    def remove_linked_pod_with_id(
        self,
        uid: str,
        pod_id: int | None = None,
        *,
        service: str | None = None,
        namespace: str | None = None,
    ) -> bool:
        """Remove the link of ``uid`` only if it names ``pod_id``.

        For this pod's own id the comparison includes the epoch: a link
        made by a later life of this pod id is never removed by this
        process. Returns True if this call removed the link.
        """
        service, uid, target = self._link_args(uid, pod_id, service, namespace)
        own = self._is_own(service, target)
        epoch = self._session.epoch if own else None
        removed = self._links.remove_with_id(service, uid, target, epoch=epoch)
        if own:
            self.ownership.forget(service, uid)
        return removed

    def get_linked_pod(
        self,
        uid: str,
        *,
        service: str | None = None,
        namespace: str | None = None,
    ) -> Link | None:
        """The current link of ``uid`` (a linearizable read), or None."""
        service, uid, _ = self._link_args(uid, self.pod_id, service, namespace)
        return self._links.get(service, uid)

    def linked_uids(
        self, pod_id: int | None = None, *, service: str | None = None
    ) -> list[str]:
        """Every uid linked to ``pod_id`` (this pod by default).

        Scans the service's links: an admin call, not a hot path.
        """
        self._require_running()
        target = self.pod_id if pod_id is None else check_pod_id(pod_id)
        return self._links.uids_of(self._service_arg(service), target)

    # ------------------------------------------------------- internals

    def _link_args(
        self,
        uid: object,
        pod_id: object | None,
        service: str | None,
        namespace: str | None,
    ) -> tuple[str, str, int]:
        """Validate link arguments before any I/O."""
        if namespace is not None:
            check_name("namespace", namespace)
            if namespace != self.namespace:
                raise InvalidArgumentError(
                    "namespace",
                    f"{namespace!r} is not this driver's namespace "
                    f"{self.namespace!r}",
                )
        resolved_service = self._service_arg(service)
        checked_uid = check_uid(uid)
        target = self.pod_id if pod_id is None else check_pod_id(pod_id)
        self._require_running()
        return resolved_service, checked_uid, target

    def _service_arg(self, service: str | None) -> str:
        return (
            self.service if service is None else check_name("service", service)
        )

    def _is_own(self, service: str, pod_id: int) -> bool:
        return service == self.service and pod_id == self.pod_id

    def _remember(
        self, service: str, result: LinkResult, epoch: int | None
    ) -> None:
        """Record a link to this pod for fencing, or forget a moved one.

        ``epoch`` is the incarnation the call pinned (None if it linked
        another pod, and the answer named this one anyway). Recorded only
        for this pod's current epoch: a link of another life is not this
        life's to claim.
        """
        if not self._is_own(service, result.pod_id):
            self.ownership.forget(service, result.uid)
            return
        current = self._session.epoch
        if epoch is None or epoch == current:
            self.ownership.record(
                service, result.uid, self.pod_id, current, result.revision
            )

    def _require_running(self) -> None:
        if self._lifecycle != _RUNNING:
            raise LifecycleError(
                f"driver of pod {self.pod_id} is {self._lifecycle}; "
                "call start() first"
            )

    def _require_not_stopped(self) -> None:
        if self._lifecycle == _STOPPED:
            raise LifecycleError(f"driver of pod {self.pod_id} is stopped")

    def _load_value(self) -> bytes:
        return encode_load(self._load, self._workload)

    def _publish_load_if_changed(self) -> None:
        with self._lock:
            current = (self._load, self._workload)
            if current == self._published:
                return
        self._session.publish_load(*current)
        with self._lock:
            self._published = current
        logger.debug("pod %d load report %s published", self.pod_id, current)

    def _state_tick(self) -> float:
        """Renew the lease; re-register if lost; publish load changes."""
        interval = self.config.state_interval
        self.ownership.check_deadline()
        if self._session.state is SessionState.LOST:
            return self._reregister()

        try:
            alive = self._session.renew() and self._session.verify()
        except (StoreError, LifecycleError) as exc:
            self._session.mark_degraded(exc)
            return min(self._backoff.next(), interval)
        except LeaseLostError:
            alive = False
        if not alive:
            # Many pods can lose their leases at once (FR05): spread the
            # re-registrations instead of hitting etcd together.
            return random.uniform(0.0, min(1.0, interval / 2))

        self._backoff.reset()
        try:
            self._publish_load_if_changed()
        except (StoreError, LeaseLostError) as exc:
            logger.debug("load report not published: %s", exc)
        return interval

    def _reregister(self) -> float:
        try:
            self._session.recover(self._load_value())
        except PodIdConflictError as exc:
            logger.error("cannot register again: %s; retrying", exc)
            return self._backoff.next()
        except (StoreError, LifecycleError) as exc:
            logger.debug("re-registration failed: %s", exc)
            return self._backoff.next()
        with self._lock:
            self._published = (self._load, self._workload)
        self._backoff.reset()
        return self.config.state_interval

    def _workload_tick(self) -> float:
        """Measure and publish the workload."""
        if self._session.state is not SessionState.REGISTERED:
            return self.config.workload_interval
        try:
            workload = self._measure_workload()
            with self._lock:
                self._workload = workload
            self._publish_load_if_changed()
        except (StoreError, LeaseLostError, LifecycleError) as exc:
            # The state job notices and reports outages; retry sooner.
            logger.debug("workload not published: %s", exc)
            return min(
                self.config.workload_interval, self.config.state_interval
            )
        return self.config.workload_interval

    def _measure_workload(self) -> int:
        if self._workload_fn is not None:
            value = self._workload_fn()
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < 0
            ):
                logger.warning("workload function returned %r; ignored", value)
                return self._workload
            return value
        if self.config.persistent_links:
            return len(self._links.uids_of(self.service, self.pod_id))
        keys = self._store.lease_keys(self._session.lease_id) or []
        prefix = self.keyspace.links_prefix(self.service)
        return sum(1 for key in keys if key.startswith(prefix))
