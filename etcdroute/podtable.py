"""The router's table of a service's pods, fed by a mirror.

Two feeds fill it: the registrations (id, address, routing state, epoch,
lease) and the load reports. A registration key exists only while its
pod's lease lives, so presence in the table *is* liveness as far as the
watch has told. Every read returns immutable :class:`PodInfo` values.

Between two load reports the table also counts the links this router
placed on each pod, so that a burst of new uids does not all go to the
pod that reported the lowest load a minute ago. A new report replaces
that count (the report is assumed to include them).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

from etcdroute.errors import CorruptValueError
from etcdroute.links import pod_from_kv
from etcdroute.models import PodInfo, decode_load
from etcdroute.store import EtcdStore, KeyValue, WatchEvent

logger = logging.getLogger(__name__)

#: Which reported number counts as a pod's load for placement.
LOAD_METRICS = ("workload", "load")


def _pod_id(key: str) -> int | None:
    try:
        return int(key.rsplit("/", 1)[1])
    except ValueError:
        logger.warning("pod table skips key %r: no pod id", key)
        return None


class PodTable:
    """Pods of one service, as of the mirror's revision. Thread-safe."""

    def __init__(self, service: str, *, load_metric: str = "workload") -> None:
        self.service = service
        self._load_metric = load_metric
        self._lock = threading.Lock()
        self._pods: dict[int, PodInfo] = {}
        self._loads: dict[int, tuple[int, int]] = {}
        self._placed: dict[int, int] = {}
        self.registrations = _RegistrationFeed(self)
        self.load_reports = _LoadFeed(self)

    # ------------------------------------------------------------ reads

    def get(self, pod_id: int) -> PodInfo | None:
        """The pod with its last load report, or None if not registered."""
        with self._lock:
            pod = self._pods.get(pod_id)
            load, workload = self._loads.get(pod_id, (0, 0))
        if pod is None:
            return None
        return replace(pod, load=load, workload=workload)

    def address(self, pod_id: int) -> str | None:
        """Address of a registered pod, or None (the hot path: no copy)."""
        with self._lock:
            pod = self._pods.get(pod_id)
        return None if pod is None else pod.address

    def pods(self) -> list[PodInfo]:
        """Every registered pod, in pod id order."""
        with self._lock:
            ids = sorted(self._pods)
        found = [self.get(pod_id) for pod_id in ids]
        return [pod for pod in found if pod is not None]

    def placement_loads(
        self, exclude: set[int] | frozenset[int] = frozenset()
    ) -> tuple[dict[int, int], dict[int, PodInfo]]:
        """Accepting pods and their load for placement.

        Returns ``({pod_id: load}, {pod_id: PodInfo})``; the load is the
        chosen metric of the last report plus this router's placements
        since that report.
        """
        index = 0 if self._load_metric == "load" else 1
        loads: dict[int, int] = {}
        infos: dict[int, PodInfo] = {}
        with self._lock:
            for pod_id, pod in self._pods.items():
                if not pod.accepting or pod_id in exclude:
                    continue
                report = self._loads.get(pod_id, (0, 0))
                loads[pod_id] = report[index] + self._placed.get(pod_id, 0)
                infos[pod_id] = replace(
                    pod, load=report[0], workload=report[1]
                )
        return loads, infos

    # ---------------------------------------------------------- updates

    def note_placed(self, pod_id: int) -> None:
        """Count a link this router just created on ``pod_id``."""
        with self._lock:
            self._placed[pod_id] = self._placed.get(pod_id, 0) + 1

    def _reset_pods(self, kvs: list[KeyValue]) -> None:
        pods: dict[int, PodInfo] = {}
        for kv in kvs:
            info = self._decode_pod(kv)
            if info is not None:
                pods[info.pod_id] = info
        with self._lock:
            self._pods = pods

    def _reset_loads(self, kvs: list[KeyValue]) -> None:
        loads: dict[int, tuple[int, int]] = {}
        for kv in kvs:
            pod_id = _pod_id(kv.key)
            report = self._decode_load(kv)
            if pod_id is not None and report is not None:
                loads[pod_id] = report
        with self._lock:
            self._loads = loads
            self._placed = {}

    def _apply_pods(self, events: list[WatchEvent]) -> None:
        for event in events:
            if event.deleted:
                pod_id = _pod_id(event.kv.key)
                with self._lock:
                    gone = (
                        self._pods.pop(pod_id, None)
                        if pod_id is not None
                        else None
                    )
                if gone is not None:
                    logger.debug("pod %d left the table", gone.pod_id)
                continue
            info = self._decode_pod(event.kv)
            if info is not None:
                with self._lock:
                    self._pods[info.pod_id] = info

    def _apply_loads(self, events: list[WatchEvent]) -> None:
        for event in events:
            pod_id = _pod_id(event.kv.key)
            if pod_id is None:
                continue
            report = None if event.deleted else self._decode_load(event.kv)
            with self._lock:
                self._placed.pop(pod_id, None)
                if report is None:
                    self._loads.pop(pod_id, None)
                else:
                    self._loads[pod_id] = report

    def _decode_pod(self, kv: KeyValue) -> PodInfo | None:
        try:
            return pod_from_kv(self.service, kv)
        except (CorruptValueError, ValueError) as exc:
            logger.warning("pod table skips a registration: %s", exc)
            return None

    @staticmethod
    def _decode_load(kv: KeyValue) -> tuple[int, int] | None:
        try:
            return decode_load(kv.key, kv.value)
        except (CorruptValueError, ValueError) as exc:
            logger.warning("pod table skips a load report: %s", exc)
            return None


class _RegistrationFeed:
    """Mirror sink for the registration prefix."""

    def __init__(self, table: PodTable) -> None:
        self._table = table

    def reset_from(self, store: EtcdStore, prefix: str, revision: int) -> None:
        kvs, _ = store.get_prefix(prefix, revision=revision)
        self._table._reset_pods(kvs)

    def apply(self, events: list[WatchEvent], revision: int) -> None:
        self._table._apply_pods(events)


class _LoadFeed:
    """Mirror sink for the load-report prefix."""

    def __init__(self, table: PodTable) -> None:
        self._table = table

    def reset_from(self, store: EtcdStore, prefix: str, revision: int) -> None:
        kvs, _ = store.get_prefix(prefix, revision=revision)
        self._table._reset_loads(kvs)

    def apply(self, events: list[WatchEvent], revision: int) -> None:
        self._table._apply_loads(events)
