"""What the benchmark asks for: which uids, which operations, which pods.

A :class:`Workload` is a plain, picklable description (key distribution,
operation mix, seed). Each caller thread turns it into its own
:class:`OpStream` with a distinct stream number, so a run is reproducible
from the seed while callers do not march in lockstep.

Key distributions:

* ``uniform`` - every uid equally likely;
* ``zipfian`` - rank ``r`` drawn with probability proportional to
  ``1 / (r + 1) ** skew``, by the constant-time method of Gray et al.
  ("Quickly generating billion-record synthetic databases", 1994) that
  YCSB uses, skew 0.99 by default. That method needs ``0 <= skew < 1``
  (at 0 it is uniform). Rank 0 is the hottest uid. Unlike YCSB's default
  the ranks are not scrambled: etcd keeps one key space, so where the
  hot keys sit does not matter;
* ``hotkey`` - ``hot_fraction`` of operations go to a small set of
  ``hot_keys`` uids, the rest uniformly to the others. This is the
  contention case where a racy recipe shows its violations.

Known shortcoming: the zipfian constant is computed in O(keys) once per
(keys, skew) pair per process (about 0.2 s for a million keys).
"""

from __future__ import annotations

import functools
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from etcdroute.errors import InvalidArgumentError

logger = logging.getLogger(__name__)

OPERATIONS = ("try_set", "set", "remove", "remove_with_id", "get")
DISTRIBUTIONS = ("uniform", "zipfian", "hotkey")

#: The default mix: mostly claims, with enough removals that uids keep
#: being claimed again (otherwise every try_set soon meets an owner).
DEFAULT_MIX: dict[str, float] = {
    "try_set": 70.0,
    "remove_with_id": 12.0,
    "remove": 6.0,
    "get": 10.0,
    "set": 2.0,
}


def parse_mix(text: str) -> dict[str, float]:
    """Parse ``"try_set=70,get=30"`` into weights (unnamed ops get 0)."""
    weights = dict.fromkeys(OPERATIONS, 0.0)
    for part in text.split(","):
        name, sep, raw = part.strip().partition("=")
        if not sep or name not in weights:
            raise InvalidArgumentError(
                "mix",
                f"{part!r} is not op=weight with op one of "
                + ", ".join(OPERATIONS),
            )
        try:
            weights[name] = float(raw)
        except ValueError:
            raise InvalidArgumentError(
                "mix", f"weight {raw!r} of {name} is not a number"
            ) from None
    return _checked_mix(weights)


def _checked_mix(weights: dict[str, float]) -> dict[str, float]:
    unknown = set(weights) - set(OPERATIONS)
    if unknown:
        raise InvalidArgumentError("mix", f"unknown ops {sorted(unknown)}")
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise InvalidArgumentError(
            "mix", "weights must be >= 0 with a positive sum"
        )
    return {op: float(weights.get(op, 0.0)) for op in OPERATIONS}


@dataclass(frozen=True)
class Workload:
    """A reproducible description of the operations to run."""

    distribution: str = "zipfian"
    keys: int = 10_000
    skew: float = 0.99
    hot_keys: int = 8
    hot_fraction: float = 0.9
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    seed: int = 1

    def __post_init__(self) -> None:
        if self.distribution not in DISTRIBUTIONS:
            raise InvalidArgumentError(
                "distribution",
                f"{self.distribution!r} is not one of "
                + ", ".join(DISTRIBUTIONS),
            )
        if not isinstance(self.keys, int) or self.keys < 1:
            raise InvalidArgumentError("keys", f"{self.keys!r} must be >= 1")
        if not 0.0 <= self.skew < 1.0:
            raise InvalidArgumentError(
                "skew", f"{self.skew!r} must be in [0, 1)"
            )
        if not 1 <= self.hot_keys <= self.keys:
            raise InvalidArgumentError(
                "hot_keys", f"{self.hot_keys!r} must be in 1..keys"
            )
        if not 0.0 <= self.hot_fraction <= 1.0:
            raise InvalidArgumentError(
                "hot_fraction", f"{self.hot_fraction!r} must be in [0, 1]"
            )
        object.__setattr__(self, "mix", _checked_mix(dict(self.mix)))

    @property
    def label(self) -> str:
        """Short name for tables and plots, e.g. ``zipf0.99``."""
        if self.distribution == "zipfian":
            return f"zipf{self.skew:g}"
        if self.distribution == "hotkey":
            return f"hot{self.hot_keys}"
        return "uniform"

    def stream(self, number: int, pods: Sequence[int]) -> OpStream:
        """The operations of caller ``number`` (0, 1, ...)."""
        return OpStream(self, number, pods)


def uid_name(rank: int) -> str:
    """The uid of a key rank (plain text, no escaping needed)."""
    return f"k{rank}"


@functools.lru_cache(maxsize=16)
def _zeta(items: int, theta: float) -> float:
    return math.fsum(1.0 / float(i) ** theta for i in range(1, items + 1))


class ZipfianRanks:
    """Draws ranks ``0 .. items-1`` with a Zipfian law (Gray et al.)."""

    def __init__(self, items: int, theta: float, rng: random.Random) -> None:
        self._items = items
        self._theta = theta
        self._rng = rng
        self._zetan = _zeta(items, theta)
        zeta2 = 1.0 + 0.5**theta
        self._alpha = 1.0 / (1.0 - theta)
        self._half_pow = 0.5**theta
        if items > 2:
            self._eta = (1.0 - (2.0 / items) ** (1.0 - theta)) / (
                1.0 - zeta2 / self._zetan
            )
        else:
            self._eta = 1.0

    def next(self) -> int:
        u = self._rng.random()
        uz = u * self._zetan
        if uz < 1.0:
            return 0
        if uz < 1.0 + self._half_pow:
            return 1
        rank = int(
            self._items * (self._eta * u - self._eta + 1.0) ** self._alpha
        )
        return min(rank, self._items - 1)


class OpStream:
    """An endless sequence of ``(op, uid, pod)`` for one caller."""

    def __init__(
        self, workload: Workload, number: int, pods: Sequence[int]
    ) -> None:
        if not pods:
            raise InvalidArgumentError("pods", "at least one pod is needed")
        self._rng = random.Random(f"{workload.seed}/{number}")
        self._workload = workload
        self._pods = list(pods)
        self._ops = [op for op in OPERATIONS if workload.mix[op] > 0]
        self._weights = [workload.mix[op] for op in self._ops]
        self._zipf = (
            ZipfianRanks(workload.keys, workload.skew, self._rng)
            if workload.distribution == "zipfian"
            else None
        )

    def rank(self) -> int:
        """Draw one key rank from the workload's distribution."""
        workload = self._workload
        if self._zipf is not None:
            return self._zipf.next()
        if workload.distribution == "hotkey":
            hot = workload.hot_keys
            cold = workload.keys - hot
            if cold == 0 or self._rng.random() < workload.hot_fraction:
                return self._rng.randrange(hot)
            return hot + self._rng.randrange(cold)
        return self._rng.randrange(workload.keys)

    def next(self) -> tuple[str, str, int]:
        """The next ``(operation, uid, target pod)``."""
        op = self._rng.choices(self._ops, self._weights)[0]
        return op, uid_name(self.rank()), self._rng.choice(self._pods)
