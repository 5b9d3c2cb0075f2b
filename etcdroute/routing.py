"""Value types of the client router: consistency, results, configuration.

A router declares what each answer gives (the guarantees-as-data idea):
:class:`Consistency` is what the caller asks for, :class:`Source` and
the revisions in :class:`RouteResult` say what it got.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import NamedTuple

from etcdroute.errors import InvalidArgumentError
from etcdroute.keys import check_prefix
from etcdroute.models import parse_choice
from etcdroute.placement import PlacementPolicy, PowerOfTwoChoices
from etcdroute.podtable import LOAD_METRICS


class Consistency(enum.Enum):
    """How fresh an answer must be.

    ``LINEARIZABLE`` reads etcd (a quorum read, or the claim transaction)
    and never the cache. ``CACHED`` answers from memory if the cache was
    proven current within the staleness bound, and reads etcd otherwise.
    """

    LINEARIZABLE = "linearizable"
    CACHED = "cached"

    @classmethod
    def parse(
        cls, value: Consistency | str, argument: str = "consistency"
    ) -> Consistency:
        """Accept a member or its name/value; refuse anything else."""
        return parse_choice(cls, value, argument)


class Source(enum.Enum):
    """Where an answer came from."""

    CACHE = "cache"
    ETCD = "etcd"


class RouteResult(NamedTuple):
    """The answer of :meth:`Router.route`.

    ``revision`` is the etcd revision the answer reflects: the cache's
    revision for a cached answer, the read or transaction revision for an
    answer from etcd (for a claim lost to another caller, the winner's
    link revision). ``link_revision`` is the revision at which the link
    was written: the fencing token to hand to downstream stores.
    ``created`` is True when this call wrote the link (a new uid, or a
    link taken over from an unregistered owner).
    """

    uid: str
    pod_id: int
    address: str
    source: Source
    revision: int
    link_revision: int
    created: bool

    @property
    def from_cache(self) -> bool:
        return self.source is Source.CACHE


def _seconds(argument: str, value: object, upper: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(argument, "must be a number of seconds")
    if math.isnan(value) or not 0 < value <= upper:
        raise InvalidArgumentError(
            argument, f"{value!r} must be in (0, {upper:g}] seconds"
        )
    return float(value)


def check_staleness(value: object, argument: str = "max_staleness") -> float:
    """Validate a staleness bound in seconds."""
    return _seconds(argument, value, 3600)


def _count(argument: str, value: object, lower: int, upper: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(argument, "must be an int")
    if not lower <= value <= upper:
        raise InvalidArgumentError(
            argument, f"{value} must be in {lower}..{upper}"
        )
    return value


@dataclass(frozen=True)
class RouterConfig:
    """How a router reads and places.

    ``consistency``
        Default of every :meth:`Router.route` call.
    ``max_staleness``
        Default bound, in seconds, for cached answers: past it the cache
        is bypassed.
    ``progress_interval``
        How often the router asks etcd to prove the cache current; at
        most half of ``max_staleness``.
    ``cache_size``
        Most links held in memory (LRU beyond).
    ``change_log_size``
        uids whose last change revision is remembered, so that a link
        read from etcd can be cached safely (see ``linkcache``).
    ``persistent_links``
        Must match the drivers' setting: links made or replaced by the
        router are bound to the owner's lease unless this is True.
    ``placement``
        The policy for new uids (power of two choices by default).
    ``load_metric``
        ``"workload"`` (the pods' link counts, by default) or ``"load"``
        (the application's load state) is what placement balances.
    ``max_backoff``
        Cap of the pause between attempts to rebuild a lost watch.
    ``prefix``
        Root of every key, as in :class:`DriverConfig`.
    """

    consistency: Consistency = Consistency.CACHED
    max_staleness: float = 2.0
    progress_interval: float = 0.5
    cache_size: int = 1_000_000
    change_log_size: int = 65_536
    persistent_links: bool = False
    placement: PlacementPolicy = field(default_factory=PowerOfTwoChoices)
    load_metric: str = "workload"
    max_backoff: float = 2.0
    prefix: str = "etcdroute"

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "consistency", Consistency.parse(self.consistency)
        )
        check_staleness(self.max_staleness)
        _seconds(
            "progress_interval", self.progress_interval, self.max_staleness / 2
        )
        _count("cache_size", self.cache_size, 1, 100_000_000)
        _count("change_log_size", self.change_log_size, 1, 100_000_000)
        if not isinstance(self.persistent_links, bool):
            raise InvalidArgumentError("persistent_links", "must be a bool")
        if not callable(getattr(self.placement, "choose", None)):
            raise InvalidArgumentError(
                "placement", "must have a choose(uid, loads) method"
            )
        if self.load_metric not in LOAD_METRICS:
            raise InvalidArgumentError(
                "load_metric", f"{self.load_metric!r} not in {LOAD_METRICS}"
            )
        _seconds("max_backoff", self.max_backoff, 3600)
        check_prefix(self.prefix)
