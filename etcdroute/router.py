"""The client router: "which pod serves uid X?", from memory, never wrong.

A :class:`Router` runs inside a caller (a gateway, another service). It
mirrors one service's registrations, load reports and links (see
:mod:`etcdroute.mirror`) and answers :meth:`Router.route`:

* **cached** (the default): from the link cache, if the mirror was proven
  current within the staleness bound, the uid is cached and its owner is
  in the pod table; otherwise as linearizable;
* **linearizable**: a quorum read of the link, then one transaction that
  reads the owner's registration while checking the link is unchanged.
  A uid without a link is claimed: a placement policy picks an accepting
  pod by load and :meth:`LinkTable.try_set` creates the link in one
  transaction; whatever it returns is the answer, so routers racing on a
  new uid agree (G2).

A link whose owner is no longer registered (persistent links, or a pod
that died) is taken over atomically: the transaction checks that the old
owner's registration is still absent (``create_revision == 0``) and that
the link is unchanged, so two routers cannot both move it.

Pods that receive a request for a uid they no longer own can hand back
the owner and link revision; :meth:`Router.correct` takes it only if it
is newer than the cached entry.

Lifecycle: :meth:`start` lists and watches (and fails if etcd refuses
the watch, naming the prefix); :meth:`stop` ends every thread;
starting twice or using a stopped router raises :class:`LifecycleError`.
Every public method is thread-safe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from etcdroute.errors import (
    CorruptValueError,
    InvalidArgumentError,
    LifecycleError,
    NoPodAvailableError,
    PodNotAcceptingError,
    PodNotRegisteredError,
    StoreError,
    StoreUnavailableError,
)
from etcdroute.keys import Keyspace, check_name, check_pod_id, check_uid
from etcdroute.linkcache import CachedLink, LinkCache
from etcdroute.links import LinkTable, link_from_kv, pod_from_kv
from etcdroute.mirror import Feed, MirrorState, PrefixMirror
from etcdroute.models import Link, PodInfo, encode_link
from etcdroute.podtable import PodTable
from etcdroute.routing import (
    Consistency,
    RouterConfig,
    RouteResult,
    Source,
    check_staleness,
)
from etcdroute.store import (
    Compare,
    Credentials,
    EtcdStore,
    Get,
    Put,
    open_store,
)

logger = logging.getLogger(__name__)

_NEW, _RUNNING, _STOPPED = "new", "running", "stopped"

#: Re-reads of a link that keeps changing under a call before giving up.
_MAX_ATTEMPTS = 8


class Router:
    """Routes uids of one service of one namespace to pods.

    ``etcd`` is an :class:`EtcdStore` (shared, not closed by the router)
    or endpoints such as ``"h1:2379,h2:2379"`` (the router opens and
    closes its own store with ``timeout`` and ``credentials``; give every
    member so a dead one is survived).
    """

    def __init__(
        self,
        etcd: EtcdStore | str | Sequence[str],
        *,
        namespace: str,
        service: str,
        config: RouterConfig | None = None,
        timeout: float = 5.0,
        credentials: Credentials | None = None,
        clock: Callable[[], float] = time.monotonic,
        _on_listed: Callable[[int], None] | None = None,
    ) -> None:
        # Check everything before opening anything.
        self.namespace = check_name("namespace", namespace)
        self.service = check_name("service", service)
        if not callable(clock):
            raise InvalidArgumentError("clock", "must be callable")
        self.config = config if config is not None else RouterConfig()
        if not isinstance(self.config, RouterConfig):
            raise InvalidArgumentError("config", "must be a RouterConfig")
        self.keyspace = Keyspace(self.config.prefix, self.namespace)

        self._store, self._owns_store = open_store(
            etcd, timeout=timeout, credentials=credentials
        )

        config = self.config
        self._links = LinkTable(
            self._store, self.keyspace, persistent=config.persistent_links
        )
        self._pods = PodTable(service, load_metric=config.load_metric)
        self._cache = LinkCache(
            self.keyspace,
            service,
            maxsize=config.cache_size,
            log_size=config.change_log_size,
        )
        self._mirror = PrefixMirror(
            self._store,
            [
                Feed(
                    self.keyspace.pods_prefix(service),
                    self._pods.registrations,
                ),
                Feed(
                    self.keyspace.load_prefix(service), self._pods.load_reports
                ),
                Feed(self.keyspace.links_prefix(service), self._cache),
            ],
            name=f"{namespace}/{service}",
            progress_interval=config.progress_interval,
            max_backoff=config.max_backoff,
            clock=clock,
            on_listed=_on_listed,
        )
        self._lifecycle_lock = threading.Lock()
        self._lifecycle = _NEW

    # --------------------------------------------------------- lifecycle

    def start(self) -> Router:
        """List and watch the service; raise if etcd refuses.

        Raises :class:`LifecycleError` if already started or stopped, and
        the store's error (for example :class:`WatchRefusedError` or
        :class:`PermissionDeniedError`, naming the prefix) if the initial
        list or watch fails; nothing keeps running then.
        """
        with self._lifecycle_lock:
            if self._lifecycle != _NEW:
                raise LifecycleError(
                    f"router for {self.service!r} is already {self._lifecycle}"
                )
            try:
                self._mirror.start()
            except BaseException:
                self._lifecycle = _STOPPED
                if self._owns_store:
                    self._store.close()
                raise
            self._lifecycle = _RUNNING
        logger.info(
            "router for %s/%s started at revision %d with %d pods",
            self.namespace,
            self.service,
            self._cache.revision,
            len(self._pods.pods()),
        )
        return self

    def stop(self) -> None:
        """Stop watching and close an owned store; idempotent."""
        with self._lifecycle_lock:
            if self._lifecycle == _STOPPED:
                return
            self._lifecycle = _STOPPED
        self._mirror.stop()
        if self._owns_store:
            self._store.close()
        logger.info("router for %s/%s stopped", self.namespace, self.service)

    def __enter__(self) -> Router:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _require_running(self) -> None:
        if self._lifecycle != _RUNNING:
            raise LifecycleError(
                f"router for {self.service!r} is {self._lifecycle}, "
                "not running"
            )

    # ----------------------------------------------------------- routing

    def route(
        self,
        uid: str,
        *,
        consistency: Consistency | str | None = None,
        max_staleness: float | None = None,
    ) -> RouteResult:
        """The pod serving ``uid``; a new uid is placed and claimed.

        ``consistency`` and ``max_staleness`` override the router's
        defaults for this call. Raises :class:`NoPodAvailableError` when a
        new uid finds no accepting pod, and :class:`StoreError` when etcd
        cannot answer within the store's deadline.
        """
        result = self._resolve(uid, consistency, max_staleness, create=True)
        assert result is not None  # create=True always answers or raises
        return result

    def lookup(
        self,
        uid: str,
        *,
        consistency: Consistency | str | None = None,
        max_staleness: float | None = None,
    ) -> RouteResult | None:
        """Like :meth:`route` but never writes.

        Returns None when ``uid`` has no link or its owner is not
        registered.
        """
        return self._resolve(uid, consistency, max_staleness, create=False)

    def correct(self, uid: str, pod_id: int, revision: int) -> bool:
        """Act on a pod's word that ``uid`` is linked to ``pod_id``.

        ``revision`` is the link revision the pod reports. A correction
        that is not newer than what the cache holds is ignored (no I/O),
        so corrections can never move the router backwards. A newer one is
        not taken on trust: the router reads the link from etcd
        (linearizable) and caches what etcd says, so a wrong or forged
        correction cannot plant an owner or a revision etcd never had.
        Returns True if the cache changed.
        """
        check_uid(uid)
        check_pod_id(pod_id)
        if isinstance(revision, bool) or not isinstance(revision, int):
            raise InvalidArgumentError("revision", "must be an int")
        if revision < 1:
            raise InvalidArgumentError("revision", f"{revision} must be >= 1")
        self._require_running()

        # Not newer than what we hold: nothing to learn.
        cached, _ = self._cache.get(uid)
        if cached is not None and revision <= cached.revision:
            return False

        # Newer: ask etcd, and believe only etcd.
        key = self.keyspace.link_key(self.service, uid)
        kv, read_at = self._store.get(key)
        if kv is None:
            return False
        try:
            link = link_from_kv(uid, kv)
        except CorruptValueError as exc:
            logger.warning("correction of %r ignored: %s", uid, exc)
            return False
        if (link.pod_id, link.revision) != (pod_id, revision):
            logger.debug(
                "correction of %r to pod %d @%d not confirmed: etcd has "
                "pod %d @%d",
                uid,
                pod_id,
                revision,
                link.pod_id,
                link.revision,
            )
        return self._cache.offer(uid, link.pod_id, link.revision, read_at)

    def _resolve(
        self,
        uid: str,
        consistency: Consistency | str | None,
        max_staleness: float | None,
        *,
        create: bool,
    ) -> RouteResult | None:
        mode = (
            self.config.consistency
            if consistency is None
            else Consistency.parse(consistency)
        )
        bound = (
            self.config.max_staleness
            if max_staleness is None
            else check_staleness(max_staleness)
        )
        if self._lifecycle != _RUNNING:
            check_uid(uid)
            self._require_running()

        # The cache holds only valid uids (it checks them on the way in),
        # so a hit needs no further validation: the hot path stays cheap.
        if mode is Consistency.CACHED and type(uid) is str:
            hit = self._from_cache(uid, bound)
            if hit is not None:
                return hit
        check_uid(uid)
        return self._from_etcd_retrying(uid, create)

    def _from_etcd_retrying(
        self, uid: str, create: bool
    ) -> RouteResult | None:
        """:meth:`_from_etcd`, retried while etcd is briefly unavailable.

        A member dying or a leader change makes calls fail fast with
        "unavailable"; the same call through the store's next member
        usually works a moment later (FR17). Retries stop once the
        store's deadline has passed since the first attempt. After an
        ambiguous failure of a claim, the retry finds the link made and
        reports ``created=False``: the owner is right, ``created`` may be
        understated.
        """
        deadline = time.monotonic() + self._store.timeout
        delay = 0.05
        while True:
            try:
                return self._from_etcd(uid, create)
            except StoreUnavailableError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                logger.debug("route of %r: %s; retrying", uid, exc)
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _from_cache(self, uid: str, bound: float) -> RouteResult | None:
        if not self._mirror.usable(bound):
            return None
        entry, revision = self._cache.get(uid)
        if entry is None:
            return None
        address = self._pods.address(entry.pod_id)
        if address is None:
            return None  # owner unregistered, or the table is behind
        return RouteResult(
            uid,
            entry.pod_id,
            address,
            Source.CACHE,
            revision,
            entry.revision,
            False,
        )

    def _from_etcd(self, uid: str, create: bool) -> RouteResult | None:
        link_key = self.keyspace.link_key(self.service, uid)
        for _ in range(_MAX_ATTEMPTS):
            kv, _ = self._store.get(link_key)
            if kv is None:
                if not create:
                    return None
                claimed = self._claim(uid)
                if claimed is not None:
                    return claimed
                continue
            link = link_from_kv(uid, kv)

            # The owner's registration, read while the link is unchanged.
            pod_key = self.keyspace.pod_key(self.service, link.pod_id)
            checked = self._store.txn(
                [Compare(link_key, "mod", "==", link.revision)],
                success=[Get(pod_key)],
            )
            if not checked.succeeded:
                continue  # the link moved: read it again
            registration = checked.read(0)
            if registration is not None:
                owner = pod_from_kv(self.service, registration)
                self._cache.offer(
                    uid, link.pod_id, link.revision, checked.revision
                )
                return RouteResult(
                    uid,
                    link.pod_id,
                    owner.address,
                    Source.ETCD,
                    checked.revision,
                    link.revision,
                    False,
                )
            if not create:
                return None
            replaced = self._replace(uid, link)
            if replaced is not None:
                return replaced
        raise StoreError(
            f"route of uid {uid!r}: link kept changing; gave up after "
            f"{_MAX_ATTEMPTS} attempts"
        )

    def _claim(self, uid: str) -> RouteResult | None:
        """Place and claim a new uid; None if the caller must re-read."""
        excluded: set[int] = set()
        while True:
            target = self._place(uid, excluded)
            try:
                claimed = self._links.try_set(
                    self.service, uid, target.pod_id, target=target
                )
            except (PodNotAcceptingError, PodNotRegisteredError):
                # The table was behind: that pod stopped accepting.
                excluded.add(target.pod_id)
                continue
            if claimed.created:
                self._pods.note_placed(claimed.pod_id)
            self._cache.offer(
                uid, claimed.pod_id, claimed.revision, claimed.revision
            )
            if claimed.pod_id == target.pod_id:
                owner: PodInfo | None = target
            else:
                owner = self._pods.get(claimed.pod_id)
            if owner is None:
                return None  # lost to a link whose owner we cannot see
            return RouteResult(
                uid,
                claimed.pod_id,
                owner.address,
                Source.ETCD,
                claimed.revision,
                claimed.revision,
                claimed.created,
            )

    def _place(self, uid: str, excluded: set[int]) -> PodInfo:
        loads, infos = self._pods.placement_loads(excluded)
        if not loads:
            raise NoPodAvailableError(self.service, uid)
        chosen = self.config.placement.choose(uid, loads)
        if chosen not in infos:
            raise InvalidArgumentError(
                "placement", f"chose pod {chosen!r}, not a candidate"
            )
        return infos[chosen]

    def _replace(self, uid: str, link: Link) -> RouteResult | None:
        """Move ``uid`` off an unregistered owner; None to re-read."""
        link_key = self.keyspace.link_key(self.service, uid)
        old_key = self.keyspace.pod_key(self.service, link.pod_id)
        excluded = {link.pod_id}
        target = self._place(uid, excluded)
        for _ in range(_MAX_ATTEMPTS):
            target_key = self.keyspace.pod_key(self.service, target.pod_id)
            lease = 0 if self.config.persistent_links else target.lease
            result = self._store.txn(
                [
                    Compare(old_key, "create", "==", 0),
                    Compare(link_key, "mod", "==", link.revision),
                    Compare(target_key, "mod", "==", target.revision),
                ],
                success=[
                    Put(
                        link_key,
                        encode_link(target.pod_id, target.epoch),
                        lease,
                    )
                ],
                failure=[Get(link_key), Get(old_key), Get(target_key)],
            )
            if result.succeeded:
                self._pods.note_placed(target.pod_id)
                self._cache.offer(
                    uid, target.pod_id, result.revision, result.revision
                )
                logger.info(
                    "uid %r moved from unregistered pod %d to pod %d",
                    uid,
                    link.pod_id,
                    target.pod_id,
                )
                return RouteResult(
                    uid,
                    target.pod_id,
                    target.address,
                    Source.ETCD,
                    result.revision,
                    result.revision,
                    True,
                )
            current, old, fresh = (result.read(i) for i in range(3))
            if (
                current is None
                or current.mod_revision != link.revision
                or old is not None
            ):
                return None  # the link or its owner changed: re-read
            candidate = (
                None if fresh is None else pod_from_kv(self.service, fresh)
            )
            if candidate is None or not candidate.accepting:
                excluded.add(target.pod_id)
                target = self._place(uid, excluded)
            else:
                target = candidate
        raise StoreError(
            f"route of uid {uid!r}: target pods kept changing; gave up"
        )

    # ------------------------------------------------------------ views

    @property
    def state(self) -> MirrorState:
        """The cache's state (live, reconnecting, resyncing, degraded...)."""
        return self._mirror.state

    def staleness(self) -> float:
        """Seconds since the cache was last proven current (or inf)."""
        return self._mirror.staleness()

    def pods(self) -> list[PodInfo]:
        """The pod table as this router sees it."""
        return self._pods.pods()

    def cached(self) -> dict[str, CachedLink]:
        """A copy of the link cache: uid -> (pod_id, link revision)."""
        return self._cache.snapshot()

    @property
    def revision(self) -> int:
        """The etcd revision the link cache reflects."""
        return self._cache.revision

    def sync(self, timeout: float = 5.0) -> bool:
        """Wait until the router holds every change committed before now.

        Returns False if that did not happen within ``timeout`` seconds.
        """
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not 0 <= timeout < 86400
        ):
            raise InvalidArgumentError(
                "timeout", f"{timeout!r} must be a number of seconds >= 0"
            )
        self._require_running()
        return self._mirror.wait_current(timeout)

    def stats(self) -> dict[str, int | str]:
        """Counters for monitoring."""
        return {
            "state": self._mirror.state.value,
            "cached_links": len(self._cache),
            "pods": len(self._pods.pods()),
            "resyncs": self._mirror.resyncs,
            "watch_rebuilds": self._mirror.reconnects,
        }
