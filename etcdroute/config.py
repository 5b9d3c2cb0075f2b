"""Tunable intervals and policies of a server driver.

Every value has a finite default and is checked when the config is made;
nothing is hard-coded elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from etcdroute.errors import InvalidArgumentError
from etcdroute.keys import check_prefix


def _check_seconds(argument: str, value: object, upper: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(argument, "must be a number of seconds")
    if not 0 < value <= upper:
        raise InvalidArgumentError(
            argument, f"{value!r} must be in (0, {upper:g}] seconds"
        )
    return float(value)


@dataclass(frozen=True)
class DriverConfig:
    """How a server driver keeps its pod registered.

    ``lease_ttl``
        TTL of the pod's lease, in whole seconds. A crashed pod's
        registration and lease-bound links disappear about this long after
        its last keepalive (etcd may restart the countdown on a leader
        change, so this is not a hard bound: see docs/guarantees.md).
    ``state_interval``
        Period of the state job: it renews the lease and republishes load
        state when it changed. Must be at most a third of ``lease_ttl`` so
        a renewal can fail twice before the lease runs out.
    ``workload_interval``
        Period of the workload job, which publishes the pod's workload
        (its number of links unless the application supplies a value).
    ``fencing_margin``
        Safety margin subtracted from the local lease deadline: the pod
        stops claiming ownership this long before etcd could expire its
        lease. Covers clock-rate drift and scheduling delay.
    ``persistent_links``
        If True, links are not bound to the pod's lease and survive the
        pod (for pods that come back with the same id).
    ``max_backoff``
        Cap of the jittered backoff between attempts to renew or
        re-register while etcd is unreachable. The job never gives up.
    ``prefix``
        Root of every key etcdroute writes.
    """

    lease_ttl: int = 15
    state_interval: float = 4.0
    workload_interval: float = 60.0
    fencing_margin: float = 1.0
    persistent_links: bool = False
    max_backoff: float = 5.0
    prefix: str = "etcdroute"

    def __post_init__(self) -> None:
        ttl = self.lease_ttl
        if isinstance(ttl, bool) or not isinstance(ttl, int):
            raise InvalidArgumentError("lease_ttl", "must be an int (seconds)")
        if not 2 <= ttl <= 3600:
            raise InvalidArgumentError(
                "lease_ttl", f"{ttl} must be in 2..3600 seconds"
            )
        _check_seconds("state_interval", self.state_interval, ttl / 3)
        _check_seconds("workload_interval", self.workload_interval, 86400)
        _check_seconds("max_backoff", self.max_backoff, 3600)
        _check_seconds("fencing_margin", self.fencing_margin, ttl / 2)
        if not isinstance(self.persistent_links, bool):
            raise InvalidArgumentError("persistent_links", "must be a bool")
        check_prefix(self.prefix)
