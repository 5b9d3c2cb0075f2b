"""Exceptions raised by etcdroute.

Every error the library raises derives from :class:`EtcdRouteError`.
Errors coming from etcd or gRPC are translated once, in
:mod:`etcdroute.store`, with the original chained as ``__cause__``; no raw
``grpc`` or ``etcd3`` exception reaches a caller.

::

    EtcdRouteError
    ├── InvalidArgumentError        (also a ValueError)
    ├── LifecycleError              start twice, use before start / after stop
    ├── StoreError                  etcd could not answer as asked
    │   ├── StoreUnavailableError   no member reachable
    │   ├── StoreTimeoutError       deadline passed: the outcome is unknown
    │   ├── PermissionDeniedError   etcd auth / RBAC refused the call
    │   ├── AuthenticationError     bad user name or password
    │   ├── CompactedError          a watch asked for a compacted revision
    │   └── WatchRefusedError       the server cancelled a watch
    ├── PodError
    │   ├── PodIdConflictError      pod id held by another live lease
    │   ├── PodNotRegisteredError   link target is not registered
    │   ├── PodNotAcceptingError    link target is draining or offline
    │   └── LeaseLostError          this pod's lease is gone
    ├── NoPodAvailableError         no accepting pod for a new uid
    ├── NotOwnerError               owner-guarded call on a uid not owned
    ├── CorruptValueError           a value under our keys does not decode
    └── HistoryFormatError          a history file breaks its format

``StoreTimeoutError`` deserves care: the request may or may not have been
applied by etcd. Callers that must know re-read the key.
"""

from __future__ import annotations


class EtcdRouteError(Exception):
    """Root of every exception raised by etcdroute."""


class InvalidArgumentError(EtcdRouteError, ValueError):
    """An argument is malformed; nothing was sent to etcd.

    ``argument`` names the offending parameter.
    """

    def __init__(self, argument: str, reason: str) -> None:
        self.argument = argument
        self.reason = reason
        super().__init__(f"invalid {argument}: {reason}")


class LifecycleError(EtcdRouteError):
    """An object was used in a state that does not allow the call."""


class StoreError(EtcdRouteError):
    """etcd did not complete a request."""


class StoreUnavailableError(StoreError):
    """No etcd member could be reached."""


class StoreTimeoutError(StoreError):
    """The per-call deadline passed; the request may have been applied."""


class PermissionDeniedError(StoreError):
    """etcd refused the request for lack of permission."""


class AuthenticationError(StoreError):
    """etcd rejected the user name or password."""


class CompactedError(StoreError):
    """A watch or read asked for a revision etcd has compacted away."""

    def __init__(self, compact_revision: int) -> None:
        self.compact_revision = compact_revision
        super().__init__(
            f"revision compacted; oldest available is {compact_revision}"
        )


class WatchRefusedError(StoreError):
    """etcd cancelled or refused a watch (for example, no permission)."""

    def __init__(self, prefix: str, reason: str) -> None:
        self.prefix = prefix
        self.reason = reason
        super().__init__(f"watch on {prefix!r} refused: {reason}")


class PodError(EtcdRouteError):
    """A pod-level precondition failed."""

    def __init__(self, service: str, pod_id: int, message: str) -> None:
        self.service = service
        self.pod_id = pod_id
        super().__init__(message)


class PodIdConflictError(PodError):
    """The pod id is registered under another live lease."""

    def __init__(self, service: str, pod_id: int, holder_lease: int) -> None:
        self.holder_lease = holder_lease
        super().__init__(
            service,
            pod_id,
            f"pod {pod_id} of service {service!r} is already registered "
            f"by another live process (lease {holder_lease:x})",
        )


class PodNotRegisteredError(PodError):
    """The target pod has no live registration."""

    def __init__(self, service: str, pod_id: int) -> None:
        super().__init__(
            service,
            pod_id,
            f"pod {pod_id} of service {service!r} is not registered",
        )


class PodNotAcceptingError(PodError):
    """The target pod is registered but takes no new links."""

    def __init__(self, service: str, pod_id: int, routing_state: str) -> None:
        self.routing_state = routing_state
        super().__init__(
            service,
            pod_id,
            f"pod {pod_id} of service {service!r} is {routing_state} "
            "and takes no new links",
        )


class LeaseLostError(PodError):
    """This pod's lease expired or was revoked, or a later life of the
    same pod id holds the registration: this process must not act as the
    pod's owner.
    """

    def __init__(
        self, service: str, pod_id: int, lease_id: int = 0, detail: str = ""
    ) -> None:
        self.lease_id = lease_id
        what = f"lease {lease_id:x}" if lease_id else "registration"
        super().__init__(
            service,
            pod_id,
            f"{what} of pod {pod_id} ({service!r}) is lost"
            + (f": {detail}" if detail else ""),
        )


class NoPodAvailableError(EtcdRouteError):
    """A router found no registered, accepting pod for a new uid."""

    def __init__(self, service: str, uid: str) -> None:
        self.service = service
        self.uid = uid
        super().__init__(
            f"no accepting pod of service {service!r} for new uid {uid!r}"
        )


class NotOwnerError(EtcdRouteError):
    """An owner-guarded operation found the uid owned by someone else."""

    def __init__(
        self,
        uid: str,
        pod_id: int,
        owner: int | None,
        revision: int,
        *,
        reason: str | None = None,
    ) -> None:
        self.uid = uid
        self.pod_id = pod_id
        self.owner = owner
        self.revision = revision
        self.reason = reason
        holder = "nobody" if owner is None else f"pod {owner}"
        detail = reason or f"held by {holder} at revision {revision}"
        super().__init__(f"pod {pod_id} does not own uid {uid!r}: {detail}")


class CorruptValueError(EtcdRouteError):
    """A value stored under etcdroute's keys could not be decoded."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"corrupt value at {key!r}: {reason}")


class HistoryFormatError(EtcdRouteError, ValueError):
    """A recorded history (JSON lines) does not follow its format."""

    def __init__(self, source: str, line: int, reason: str) -> None:
        self.source = source
        self.line = line
        self.reason = reason
        super().__init__(f"{source}, line {line}: {reason}")
