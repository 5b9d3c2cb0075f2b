"""Placement policies: which accepting pod gets a uid that has no link.

A policy is a pure function of the uid and the current load of every
candidate pod (``{pod_id: load}``, never empty), so it can be tested and
benchmarked on a simulated table. The router passes the accepting pods of
its pod table, each with its last load report plus the links this router
placed on it since that report.

Two policies ship:

* :class:`PowerOfTwoChoices` samples two distinct pods at random and takes
  the less loaded one. It needs no shared state and keeps the gap between
  the fullest pod and the mean tiny.
* :class:`BoundedLoadHashing` (consistent hashing with bounded loads)
  walks a hash ring from the uid's point and takes the first pod whose
  load is under ``ceil(balance * (total + 1) / pods)``, so a uid goes to
  the same pod on every router as long as that pod is not overfull.

Known shortcoming: loads are only as fresh as the reports; several
routers placing at once do not see each other's placements until the
pods report again, so short bursts can overshoot.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import math
import random
from collections.abc import Mapping
from typing import Protocol

from etcdroute.errors import InvalidArgumentError

logger = logging.getLogger(__name__)


class PlacementPolicy(Protocol):
    """Choose the pod for a new uid among ``loads`` (pod id -> load)."""

    def choose(self, uid: str, loads: Mapping[int, int]) -> int: ...


def _check_loads(loads: Mapping[int, int]) -> None:
    if not loads:
        raise InvalidArgumentError("loads", "no candidate pod")


class PowerOfTwoChoices:
    """Take the less loaded of two pods sampled at random.

    ``rng`` can be injected for reproducible runs.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng if rng is not None else random.Random()

    def choose(self, uid: str, loads: Mapping[int, int]) -> int:
        _check_loads(loads)
        if len(loads) == 1:
            return next(iter(loads))
        first, second = self._rng.sample(list(loads), 2)
        if loads[second] < loads[first]:
            return second
        return first


class RandomPlacement:
    """Uniform random choice that ignores load: the benchmark's baseline."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng if rng is not None else random.Random()

    def choose(self, uid: str, loads: Mapping[int, int]) -> int:
        _check_loads(loads)
        return self._rng.choice(list(loads))


def _hash64(text: str) -> int:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class BoundedLoadHashing:
    """Consistent hashing with bounded loads.

    Each pod owns ``replicas`` points on a 64-bit ring. A uid hashes to a
    point; the first pod clockwise whose load is below the capacity
    ``ceil(balance * (total load + 1) / number of pods)`` gets it, so no
    pod ends above ``balance`` times the mean (plus one) unless it
    started there. ``balance`` must be above 1.
    """

    def __init__(self, balance: float = 1.05, replicas: int = 64) -> None:
        if isinstance(balance, bool) or not isinstance(balance, (int, float)):
            raise InvalidArgumentError("balance", "must be a number")
        if not 1.0 < balance <= 4.0:
            raise InvalidArgumentError("balance", f"{balance} not in (1, 4]")
        if isinstance(replicas, bool) or not isinstance(replicas, int):
            raise InvalidArgumentError("replicas", "must be an int")
        if not 1 <= replicas <= 1024:
            raise InvalidArgumentError(
                "replicas", f"{replicas} not in 1..1024"
            )
        self.balance = float(balance)
        self.replicas = replicas
        # (pods, points, owners), replaced as one value so that threads
        # choosing at the same time never see a half-built ring.
        self._ring_cache: tuple[frozenset[int], list[int], list[int]] = (
            frozenset(),
            [],
            [],
        )

    def _ring(self, pods: frozenset[int]) -> tuple[list[int], list[int]]:
        cached_pods, points, owners = self._ring_cache
        if pods == cached_pods:
            return points, owners
        pairs = sorted(
            (_hash64(f"{pod}#{replica}"), pod)
            for pod in pods
            for replica in range(self.replicas)
        )
        points = [point for point, _ in pairs]
        owners = [pod for _, pod in pairs]
        self._ring_cache = (pods, points, owners)
        return points, owners

    def choose(self, uid: str, loads: Mapping[int, int]) -> int:
        _check_loads(loads)
        points, owners = self._ring(frozenset(loads))
        total = sum(loads.values())
        capacity = math.ceil(self.balance * (total + 1) / len(loads))
        start = bisect.bisect(points, _hash64(uid))
        for step in range(len(points)):
            pod = owners[(start + step) % len(points)]
            if loads[pod] < capacity:
                return pod
        # Every pod is at capacity (only with loads far apart): least loaded.
        return min(loads, key=loads.__getitem__)
