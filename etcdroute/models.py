"""Value types shared by the driver, the router and the tools.

The values stored in etcd are small JSON documents with a format version
``v``; they are encoded deterministically (sorted keys, no spaces) because
transactions compare link values byte for byte.
"""

from __future__ import annotations

import enum
import functools
import json
from dataclasses import dataclass
from typing import Any, TypeVar

from etcdroute.errors import CorruptValueError, InvalidArgumentError

VALUE_FORMAT = 1

_Choice = TypeVar("_Choice", bound=enum.Enum)


class RoutingState(enum.Enum):
    """Whether a pod takes new links.

    ``ACCEPTING`` takes new links; ``DRAINING`` keeps the links it has and
    takes no new ones; ``OFFLINE`` takes nothing (its links stay until
    removed or until its lease ends).
    """

    ACCEPTING = "accepting"
    DRAINING = "draining"
    OFFLINE = "offline"

    @classmethod
    def parse(
        cls, value: RoutingState | str, argument: str = "routing_state"
    ) -> RoutingState:
        """Accept a member or its name/value; refuse anything else."""
        return parse_choice(cls, value, argument)


def parse_choice(cls: type[_Choice], value: object, argument: str) -> _Choice:
    """A member of the text enum ``cls`` from itself or its name/value.

    Case-insensitive; anything else is an :class:`InvalidArgumentError`
    listing the accepted values.
    """
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        for member in cls:
            if value.lower() in (member.value, member.name.lower()):
                return member
    names = ", ".join(member.value for member in cls)
    raise InvalidArgumentError(argument, f"{value!r} is not one of: {names}")


@dataclass(frozen=True)
class LinkResult:
    """Outcome of a link call.

    ``pod_id`` is the pod now linked, ``created`` tells whether this call
    made the link, and ``revision`` is the etcd revision at which the link
    was last written: a fencing token that only grows for a uid.
    """

    uid: str
    pod_id: int
    created: bool
    revision: int


@dataclass(frozen=True)
class Link:
    """A link as stored: owner pod, owner incarnation, revisions."""

    uid: str
    pod_id: int
    epoch: int
    revision: int
    create_revision: int
    lease: int


@dataclass(frozen=True)
class PodInfo:
    """A registered pod as seen in etcd."""

    service: str
    pod_id: int
    address: str
    routing_state: RoutingState
    epoch: int
    lease: int
    revision: int
    load: int = 0
    workload: int = 0

    @property
    def accepting(self) -> bool:
        return self.routing_state is RoutingState.ACCEPTING


def _dump(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _load(key: str, raw: bytes) -> dict[str, Any]:
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptValueError(key, f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise CorruptValueError(key, "not a JSON object")
    if document.get("v") != VALUE_FORMAT:
        raise CorruptValueError(key, f"unknown format {document.get('v')!r}")
    return document


def _int_field(key: str, document: dict[str, Any], name: str) -> int:
    value = document.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CorruptValueError(key, f"field {name!r} is not an int >= 0")
    return value


@functools.lru_cache(maxsize=4096)
def encode_link(pod_id: int, epoch: int) -> bytes:
    """Value of a link key: the owner pod and its incarnation.

    Cached: a service has few (pod, epoch) pairs and every link call
    needs one.
    """
    return _dump({"v": VALUE_FORMAT, "pod": pod_id, "epoch": epoch})


def decode_link(key: str, raw: bytes) -> tuple[int, int]:
    """Return ``(pod_id, epoch)`` of a link value."""
    document = _load(key, raw)
    return _int_field(key, document, "pod"), _int_field(key, document, "epoch")


def encode_registration(
    pod_id: int, address: str, routing_state: RoutingState
) -> bytes:
    """Value of a pod registration key."""
    return _dump(
        {
            "v": VALUE_FORMAT,
            "pod": pod_id,
            "address": address,
            "state": routing_state.value,
        }
    )


def decode_registration(key: str, raw: bytes) -> tuple[int, str, RoutingState]:
    """Return ``(pod_id, address, routing_state)`` of a registration."""
    document = _load(key, raw)
    address = document.get("address")
    if not isinstance(address, str):
        raise CorruptValueError(key, "field 'address' is not text")
    try:
        state = RoutingState(document.get("state"))
    except ValueError:
        raise CorruptValueError(key, "field 'state' is unknown") from None
    return _int_field(key, document, "pod"), address, state


def encode_load(load: int, workload: int) -> bytes:
    """Value of a pod's load report."""
    return _dump({"v": VALUE_FORMAT, "load": load, "workload": workload})


def decode_load(key: str, raw: bytes) -> tuple[int, int]:
    """Return ``(load, workload)`` of a load report."""
    document = _load(key, raw)
    return _int_field(key, document, "load"), _int_field(
        key, document, "workload"
    )
