"""The store seam: the only module that talks to etcd.

Nothing else in etcdroute imports ``etcd3`` or ``grpc``. This module turns
etcd's gRPC API into a few plain calls on plain dataclasses, applies a
deadline to every call, and translates every gRPC error once into the
:mod:`etcdroute.errors` hierarchy (the cause stays chained).

It uses python-etcd3's generated stubs (``etcd3.etcdrpc``) rather than its
high-level client, because that client hides or breaks what etcdroute
needs:

* its ``transaction()`` drops the response header, so the revision at
  which a link was made (the fencing token) is lost;
* it sends the auth token as call credentials, which current grpcio
  refuses on a plaintext channel (field report FR15); here the token
  travels as plain metadata, and an expired token is renewed once and the
  call retried (FR16);
* its watcher is not resumed after a stream error and reports failures
  only through a callback; :class:`WatchStream` reports creation,
  refusal, compaction and stream loss explicitly (FR07 to FR09);
* its failover marks a member dead for five minutes; here several
  endpoints form one gRPC channel with the ``pick_first`` policy, so gRPC
  moves to the next member by itself when one dies (FR17). A *frozen*
  member (SIGSTOP, hung host) keeps its sockets open and gRPC stays on
  it; the store then rebuilds the channel with the next endpoint first
  after two deadlines in a row (see ``_note_outcome``). gRPC keepalive
  pings were tried for this and did not fire within 25 s here; etcd
  would also answer pings closer than its --grpc-keepalive-min-time (5 s)
  with GOAWAY.

Known limits: host names in a multi-endpoint list are resolved once, when
the store connects; a store must not be used across ``fork()`` (the child
gets a clear :class:`LifecycleError` and must build its own).
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import grpc
from etcd3 import etcdrpc
from etcd3.etcdrpc import kv_pb2

from etcdroute.errors import (
    AuthenticationError,
    CompactedError,
    InvalidArgumentError,
    LifecycleError,
    PermissionDeniedError,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
    WatchRefusedError,
)

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0


# ---------------------------------------------------------------- values


@dataclass(frozen=True)
class KeyValue:
    """One key as etcd stores it."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True)
class Compare:
    """One comparison of a transaction.

    ``target`` is ``"create"``, ``"mod"``, ``"version"``, ``"value"`` or
    ``"lease"``; ``op`` is ``"=="``, ``"!="``, ``"<"`` or ``">"``.
    """

    key: str
    target: str
    op: str
    operand: int | bytes


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class Get:
    key: str


@dataclass(frozen=True)
class Delete:
    key: str


Operation = Put | Get | Delete


@dataclass(frozen=True)
class TxnResult:
    """Outcome of a transaction.

    ``results`` has one entry per operation of the branch taken: the
    keys read for a :class:`Get` (a list, empty when absent), or the
    number of keys put or deleted.
    """

    succeeded: bool
    revision: int
    results: list[list[KeyValue] | int]

    def read(self, index: int) -> KeyValue | None:
        """The key read by the ``Get`` at ``index``, or None if absent."""
        found = self.results[index]
        if not isinstance(found, list):
            raise TypeError(f"operation {index} was not a Get")
        return found[0] if found else None


@dataclass(frozen=True)
class WatchEvent:
    """A put (``deleted`` False) or delete of one key."""

    kv: KeyValue
    deleted: bool


@dataclass(frozen=True)
class WatchBatch:
    """What one watch response carried.

    ``revision`` is the store revision the batch reflects: every change up
    to it has been delivered. A batch without events is a progress
    notification.
    """

    revision: int
    events: list[WatchEvent] = field(default_factory=list)


@dataclass(frozen=True)
class StoreStatus:
    version: str
    db_size: int
    leader: int
    member_id: int
    revision: int
    raft_term: int


@dataclass(frozen=True)
class Credentials:
    """How to authenticate to etcd.

    ``ca_cert`` turns on TLS (server verification); ``cert_cert`` and
    ``cert_key`` add a client certificate; ``user`` and ``password`` use
    etcd's own auth. Paths are read once, at connect time. The password
    never appears in ``repr()``, logs or error messages.
    """

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_cert: str | None = None
    cert_cert: str | None = None
    cert_key: str | None = None

    def __post_init__(self) -> None:
        if (self.user is None) != (self.password is None):
            raise InvalidArgumentError(
                "user", "user and password must be given together"
            )
        if (self.cert_cert is None) != (self.cert_key is None):
            raise InvalidArgumentError(
                "cert_cert", "cert_cert and cert_key must be given together"
            )
        if self.cert_cert is not None and self.ca_cert is None:
            raise InvalidArgumentError(
                "ca_cert", "a client certificate needs ca_cert (TLS)"
            )

    @property
    def tls(self) -> bool:
        return self.ca_cert is not None


# ------------------------------------------------------------- endpoints


def parse_endpoints(endpoints: str | Sequence[str]) -> list[tuple[str, int]]:
    """Parse ``"h1:2379,h2:2379"`` or a list of ``[scheme://]host:port``."""
    if isinstance(endpoints, str):
        items: Sequence[object] = endpoints.split(",")
    elif isinstance(endpoints, (list, tuple)):
        items = endpoints
    else:
        raise InvalidArgumentError(
            "endpoints", "must be 'host:port,...' text or a list of them"
        )
    parsed: list[tuple[str, int]] = []
    for item in items:
        if not isinstance(item, str):
            raise InvalidArgumentError("endpoints", f"{item!r} is not text")
        text = item.strip()
        if not text:
            continue
        if "://" not in text:
            text = "//" + text
        split = urlsplit(text)
        try:
            port = split.port
        except ValueError:
            port = None
        if not split.hostname or port is None:
            raise InvalidArgumentError(
                "endpoints", f"{item!r} is not host:port"
            )
        parsed.append((split.hostname, port))
    if not parsed:
        raise InvalidArgumentError("endpoints", "no endpoint given")
    return parsed


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _channel_target(endpoints: list[tuple[str, int]]) -> str:
    """One gRPC target for all endpoints (resolved now if several).

    A name that does not resolve is left out with a warning, as long as
    another endpoint does.
    """
    if len(endpoints) == 1:
        return _host_port(*endpoints[0])
    addresses = []
    for host, port in endpoints:
        try:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            logger.warning("etcd endpoint %s:%s left out: %s", host, port, exc)
            continue
        family, _, _, _, sockaddr = info[0]
        ip = sockaddr[0]
        addresses.append(
            f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"
        )
    if not addresses:
        raise StoreUnavailableError("no etcd endpoint could be resolved")
    if any(a.startswith("[") for a in addresses) and not all(
        a.startswith("[") for a in addresses
    ):
        raise InvalidArgumentError(
            "endpoints", "mixing IPv4 and IPv6 endpoints is not supported"
        )
    scheme = "ipv6" if addresses[0].startswith("[") else "ipv4"
    return f"{scheme}:{','.join(addresses)}"


def _read_file(argument: str, path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise InvalidArgumentError(
            argument, f"cannot read {path!r}: {exc.strerror}"
        ) from None


# ---------------------------------------------------------- translation

_COMPARE_TARGETS = {
    "create": etcdrpc.Compare.CREATE,
    "mod": etcdrpc.Compare.MOD,
    "version": etcdrpc.Compare.VERSION,
    "value": etcdrpc.Compare.VALUE,
    "lease": etcdrpc.Compare.LEASE,
}
_COMPARE_OPS = {
    "==": etcdrpc.Compare.EQUAL,
    "!=": etcdrpc.Compare.NOT_EQUAL,
    "<": etcdrpc.Compare.LESS,
    ">": etcdrpc.Compare.GREATER,
}
_COMPARE_FIELDS = {
    "create": "create_revision",
    "mod": "mod_revision",
    "version": "version",
    "value": "value",
    "lease": "lease",
}


def _prefix_range(prefix: str) -> tuple[bytes, bytes]:
    """``(key, range_end)`` covering every key that starts with ``prefix``.

    The empty prefix means every key (etcd spells that ``\\0``, ``\\0``).
    """
    start = prefix.encode()
    if not start:
        return b"\0", b"\0"
    return start, _prefix_end(start)


def _prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def _read_varint(raw: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _count_field(raw: bytes, field_number: int) -> int:
    """Count occurrences of a length-delimited field in a protobuf message."""
    count = pos = 0
    while pos < len(raw):
        tag, pos = _read_varint(raw, pos)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            _, pos = _read_varint(raw, pos)
        elif wire_type == 2:
            size, pos = _read_varint(raw, pos)
            pos += size
            count += number == field_number
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        else:
            raise StoreError(f"unexpected protobuf wire type {wire_type}")
    return count


def _key_value(kv: Any) -> KeyValue:
    return KeyValue(
        key=kv.key.decode("utf-8", errors="surrogateescape"),
        value=kv.value,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        version=kv.version,
        lease=kv.lease,
    )


def _is_token_error(exc: grpc.RpcError) -> bool:
    details = (exc.details() or "").lower()
    return exc.code() == grpc.StatusCode.UNAUTHENTICATED or (
        "invalid auth token" in details or "user name is empty" in details
    )


#: etcd errors after which a write may or may not have been applied.
_OUTCOME_UNKNOWN = (
    "context deadline exceeded",
    "request timed out",
    "leader changed",
)


def translate(
    exc: grpc.RpcError, what: str, *, write: bool = False
) -> StoreError:
    """Map a gRPC error onto the etcdroute hierarchy.

    For a ``write``, etcd's "request timed out", "leader changed" and
    "context deadline exceeded" mean the proposal may still commit, so
    they become :class:`StoreTimeoutError` (outcome unknown); for a read
    they stay retryable.
    """
    code = exc.code()
    details = exc.details() or ""
    message = f"{what}: {details or code.name}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return StoreTimeoutError(
            f"{what}: deadline exceeded (outcome unknown)"
        )
    if write and any(text in details for text in _OUTCOME_UNKNOWN):
        # etcd gave up waiting for the proposal: it may still commit.
        return StoreTimeoutError(f"{what}: {details} (outcome unknown)")
    if code == grpc.StatusCode.UNAVAILABLE:
        return StoreUnavailableError(f"{what}: etcd unavailable: {details}")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDeniedError(message)
    if "authentication failed" in details or "user name is empty" in details:
        # The second is etcd's answer to a call without a token while
        # auth is on: credentials are missing.
        return AuthenticationError(message)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return AuthenticationError(message)
    if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
        return CompactedError(0)
    if code == grpc.StatusCode.CANCELLED:
        return StoreUnavailableError(f"{what}: call cancelled: {details}")
    return StoreError(message)


# ----------------------------------------------------------------- store


class EtcdStore:
    """A connection to one etcd cluster, safe to share between threads.

    ``timeout`` is the deadline of every unary call, in seconds (finite:
    5 s by default). Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str] = "127.0.0.1:2379",
        *,
        timeout: float = DEFAULT_TIMEOUT,
        credentials: Credentials | None = None,
    ) -> None:
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not 0 < timeout < 3600
        ):
            raise InvalidArgumentError(
                "timeout", f"{timeout!r} must be a number in (0, 3600)"
            )
        if credentials is not None and not isinstance(
            credentials, Credentials
        ):
            raise InvalidArgumentError(
                "credentials", "must be a Credentials or None"
            )
        self.endpoints = parse_endpoints(endpoints)
        self.timeout = float(timeout)
        self._credentials = credentials or Credentials()
        self._pid = os.getpid()
        self._closed = False
        self._token_lock = threading.Lock()
        self._metadata: tuple[tuple[str, str], ...] = ()
        self._failover_lock = threading.Lock()
        self._rotation = 0
        self._timeouts = 0
        self._rotated_at = float("-inf")
        self._use_channel(self._open_channel())
        if self._credentials.user is not None:
            self._authenticate()
        logger.debug("store connected to %s", self.describe())

    def describe(self) -> str:
        """Endpoints as text, for logs (never includes credentials)."""
        hosts = ",".join(f"{h}:{p}" for h, p in self.endpoints)
        return f"{'https' if self._credentials.tls else 'http'}://{hosts}"

    def _use_channel(self, channel: grpc.Channel) -> None:
        self._channel = channel
        self._kv = etcdrpc.KVStub(channel)
        self._lease = etcdrpc.LeaseStub(channel)
        self._watch = etcdrpc.WatchStub(channel)
        self._maintenance = etcdrpc.MaintenanceStub(channel)
        self._auth = etcdrpc.AuthStub(channel)
        self._cluster = etcdrpc.ClusterStub(channel)

    def _note_outcome(self, exc: grpc.RpcError | None) -> None:
        """Leave a member that stopped answering (FR17, SIGSTOP).

        A frozen member keeps its sockets open, so gRPC sees no error and
        pick_first stays on it: every call just runs into its deadline.
        After two deadlines in a row (and at most once per deadline) the
        channel is rebuilt with the endpoint list rotated, so the next
        member comes first. The old channel is closed one deadline later,
        letting calls still on it end by their own deadline. Watches on
        it end too; their owners re-create them (see WatchStream).
        """
        if exc is None:
            self._timeouts = 0
            return
        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            return
        if len(self.endpoints) < 2:
            return
        with self._failover_lock:
            self._timeouts += 1
            now = time.monotonic()
            if self._timeouts < 2 or now - self._rotated_at < self.timeout:
                return
            if self._closed or os.getpid() != self._pid:
                return
            self._timeouts = 0
            self._rotated_at = now
            self._rotation = (self._rotation + 1) % len(self.endpoints)
            old = self._channel
            self._use_channel(self._open_channel())
        logger.warning(
            "etcd calls keep timing out; moving to the next endpoint (%s)",
            self.describe(),
        )
        closer = threading.Timer(self.timeout, old.close)
        closer.daemon = True
        closer.start()

    def _open_channel(self) -> grpc.Channel:
        turn = self._rotation
        order = self.endpoints[turn:] + self.endpoints[:turn]
        target = _channel_target(order)
        options = [
            ("grpc.lb_policy_name", "pick_first"),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            # Reconnect quickly after a member restart (default backoff
            # grows to two minutes).
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
            ("grpc.min_reconnect_backoff_ms", 200),
        ]
        creds = self._credentials
        if not creds.tls:
            return grpc.insecure_channel(target, options=options)
        assert creds.ca_cert is not None
        ca = _read_file("ca_cert", creds.ca_cert)
        key = chain = None
        if creds.cert_key is not None and creds.cert_cert is not None:
            key = _read_file("cert_key", creds.cert_key)
            chain = _read_file("cert_cert", creds.cert_cert)
        channel_creds = grpc.ssl_channel_credentials(ca, key, chain)
        return grpc.secure_channel(target, channel_creds, options=options)

    def _authenticate(self) -> None:
        """Get a fresh auth token; it travels as plain metadata (FR15)."""
        creds = self._credentials
        request = etcdrpc.AuthenticateRequest(
            name=creds.user, password=creds.password
        )
        try:
            response = self._auth.Authenticate(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise translate(exc, f"authenticate as {creds.user!r}") from exc
        self._metadata = (("token", response.token),)
        logger.debug("authenticated to etcd as %r", creds.user)

    def _check_usable(self) -> None:
        if self._closed:
            raise LifecycleError("the etcd store is closed")
        if os.getpid() != self._pid:
            raise LifecycleError(
                "this etcd store was created in process "
                f"{self._pid} and cannot be used after fork(); "
                "create a new store in the child"
            )

    def _call(
        self,
        what: str,
        method: Callable[..., Any],
        request: Any,
        *,
        write: bool = False,
    ) -> Any:
        """Run one unary call with the deadline, translating errors.

        An expired auth token is renewed once and the call retried: etcd
        rejects such a call before applying it, so the retry is safe.
        """
        self._check_usable()
        for attempt in (1, 2):
            metadata = self._metadata
            try:
                response = method(
                    request, timeout=self.timeout, metadata=metadata
                )
            except grpc.RpcError as exc:
                self._note_outcome(exc)
                renewable = (
                    attempt == 1
                    and self._credentials.user is not None
                    and _is_token_error(exc)
                )
                if not renewable:
                    raise translate(exc, what, write=write) from exc
                logger.info("etcd auth token rejected; authenticating again")
                with self._token_lock:
                    if self._metadata == metadata:
                        self._authenticate()
            else:
                self._note_outcome(None)
                return response
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ reads

    def get(
        self, key: str, *, serializable: bool = False
    ) -> tuple[KeyValue | None, int]:
        """Read one key: ``(kv or None, store revision)``."""
        request = etcdrpc.RangeRequest(
            key=key.encode(), serializable=serializable
        )
        response = self._call(f"get {key!r}", self._kv.Range, request)
        kvs = response.kvs
        return (_key_value(kvs[0]) if kvs else None), response.header.revision

    def get_prefix(
        self,
        prefix: str,
        *,
        revision: int = 0,
        page_size: int = 2000,
        keys_only: bool = False,
    ) -> tuple[list[KeyValue], int]:
        """Read every key under ``prefix`` at one revision.

        Pages of ``page_size`` keys are read at the revision of the first
        page, so the result is one consistent snapshot. Returns
        ``(kvs sorted by key, revision)``.
        """
        start, end = _prefix_range(prefix)
        found: list[KeyValue] = []
        while True:
            request = etcdrpc.RangeRequest(
                key=start,
                range_end=end,
                limit=page_size,
                revision=revision,
                keys_only=keys_only,
            )
            response = self._call(f"list {prefix!r}", self._kv.Range, request)
            if revision == 0:
                revision = response.header.revision
            found.extend(_key_value(kv) for kv in response.kvs)
            if not response.more or not response.kvs:
                return found, revision
            start = response.kvs[-1].key + b"\0"

    def count_prefix(self, prefix: str) -> tuple[int, int]:
        """Count keys under ``prefix``: ``(count, revision)``."""
        start, end = _prefix_range(prefix)
        request = etcdrpc.RangeRequest(
            key=start, range_end=end, count_only=True
        )
        response = self._call(f"count {prefix!r}", self._kv.Range, request)
        return response.count, response.header.revision

    # ----------------------------------------------------------- writes

    def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write one key unconditionally; returns the new revision."""
        request = etcdrpc.PutRequest(
            key=key.encode(), value=value, lease=lease
        )
        response = self._call(
            f"put {key!r}", self._kv.Put, request, write=True
        )
        return int(response.header.revision)

    def delete(self, key: str) -> tuple[int, int]:
        """Delete one key: ``(number deleted, revision)``."""
        request = etcdrpc.DeleteRangeRequest(key=key.encode())
        response = self._call(
            f"delete {key!r}", self._kv.DeleteRange, request, write=True
        )
        return response.deleted, response.header.revision

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``; returns how many."""
        start, end = _prefix_range(prefix)
        request = etcdrpc.DeleteRangeRequest(key=start, range_end=end)
        response = self._call(
            f"delete prefix {prefix!r}",
            self._kv.DeleteRange,
            request,
            write=True,
        )
        return int(response.deleted)

    def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Operation] = (),
        failure: Sequence[Operation] = (),
    ) -> TxnResult:
        """Run one transaction; see :class:`TxnResult`."""
        request = etcdrpc.TxnRequest(
            compare=[self._compare_message(c) for c in compares],
            success=[self._op_message(op) for op in success],
            failure=[self._op_message(op) for op in failure],
        )
        what = f"transaction on {compares[0].key!r}" if compares else "txn"
        response = self._call(what, self._kv.Txn, request, write=True)
        results: list[list[KeyValue] | int] = []
        for item in response.responses:
            kind = item.WhichOneof("response")
            if kind == "response_range":
                results.append(
                    [_key_value(kv) for kv in item.response_range.kvs]
                )
            elif kind == "response_delete_range":
                results.append(item.response_delete_range.deleted)
            else:
                results.append(1)
        return TxnResult(response.succeeded, response.header.revision, results)

    @staticmethod
    def _compare_message(compare: Compare) -> Any:
        if compare.target not in _COMPARE_TARGETS:
            raise ValueError(f"unknown compare target {compare.target!r}")
        message = etcdrpc.Compare(
            key=compare.key.encode(),
            target=_COMPARE_TARGETS[compare.target],
            result=_COMPARE_OPS[compare.op],
        )
        setattr(message, _COMPARE_FIELDS[compare.target], compare.operand)
        return message

    @staticmethod
    def _op_message(op: Operation) -> Any:
        if isinstance(op, Put):
            return etcdrpc.RequestOp(
                request_put=etcdrpc.PutRequest(
                    key=op.key.encode(), value=op.value, lease=op.lease
                )
            )
        if isinstance(op, Get):
            return etcdrpc.RequestOp(
                request_range=etcdrpc.RangeRequest(key=op.key.encode())
            )
        return etcdrpc.RequestOp(
            request_delete_range=etcdrpc.DeleteRangeRequest(
                key=op.key.encode()
            )
        )

    # ----------------------------------------------------------- leases

    def grant_lease(self, ttl: int) -> tuple[int, int]:
        """Grant a lease: ``(lease id, granted TTL in seconds)``."""
        request = etcdrpc.LeaseGrantRequest(TTL=ttl)
        response = self._call("grant lease", self._lease.LeaseGrant, request)
        return response.ID, response.TTL

    def keepalive(self, lease_id: int) -> int:
        """Renew a lease once; returns the TTL etcd answered.

        etcd answers a lease that no longer exists with TTL <= 0 and no
        error (FR01): callers must treat ``<= 0`` as lost.
        """
        self._check_usable()
        request = etcdrpc.LeaseKeepAliveRequest(ID=lease_id)
        what = f"keepalive of lease {lease_id:x}"
        try:
            responses = self._lease.LeaseKeepAlive(
                iter([request]), timeout=self.timeout, metadata=self._metadata
            )
            for response in responses:
                self._note_outcome(None)
                return int(response.TTL)
        except grpc.RpcError as exc:
            self._note_outcome(exc)
            if self._credentials.user is not None and _is_token_error(exc):
                with self._token_lock:
                    self._authenticate()
            raise translate(exc, what) from exc
        raise StoreUnavailableError(f"{what}: stream closed without answer")

    def revoke_lease(self, lease_id: int) -> bool:
        """Revoke a lease; False if it did not exist any more."""
        request = etcdrpc.LeaseRevokeRequest(ID=lease_id)
        try:
            self._call(
                f"revoke lease {lease_id:x}", self._lease.LeaseRevoke, request
            )
        except StoreError as exc:
            if "lease not found" in str(exc):
                return False
            raise
        return True

    def lease_keys(self, lease_id: int) -> list[str] | None:
        """Keys attached to a lease, or None if the lease does not exist.

        The TTL of this answer is deliberately not exposed: during a
        leader change it can be garbage (FR06).
        """
        request = etcdrpc.LeaseTimeToLiveRequest(ID=lease_id, keys=True)
        response = self._call(
            f"lease {lease_id:x} keys", self._lease.LeaseTimeToLive, request
        )
        if response.TTL == -1:
            return None
        return [
            key.decode("utf-8", errors="surrogateescape")
            for key in response.keys
        ]

    def lease_count(self) -> int:
        """Number of leases currently alive in the cluster.

        python-etcd3's generated stubs predate etcd's ``LeaseLeases`` call,
        so it is made here as a raw unary call: the request is an empty
        message and the answer's repeated field 2 holds one entry per
        lease, which is all that is counted.
        """
        method = self._channel.unary_unary(
            "/etcdserverpb.Lease/LeaseLeases",
            request_serializer=lambda _: b"",
            response_deserializer=lambda raw: raw,
        )
        raw = self._call("list leases", method, None)
        return _count_field(raw, 2)

    # ------------------------------------------------------ maintenance

    def status(self) -> StoreStatus:
        """Status of the member the channel is connected to."""
        response = self._call(
            "status", self._maintenance.Status, etcdrpc.StatusRequest()
        )
        return StoreStatus(
            version=response.version,
            db_size=response.dbSize,
            leader=response.leader,
            member_id=response.header.member_id,
            revision=response.header.revision,
            raft_term=response.raftTerm,
        )

    def compact(self, revision: int, *, physical: bool = True) -> None:
        """Compact the history up to ``revision``."""
        request = etcdrpc.CompactionRequest(
            revision=revision, physical=physical
        )
        self._call(f"compact at {revision}", self._kv.Compact, request)

    def defragment(self) -> None:
        """Defragment the connected member, giving freed space back.

        Blocks that member's reads and writes while it runs; an admin
        and benchmark call (database size measurements), never a hot path.
        """
        self._call(
            "defragment",
            self._maintenance.Defragment,
            etcdrpc.DefragmentRequest(),
        )

    # ----------------------------------------------------------- watches

    def watch_prefix(
        self,
        prefix: str,
        *,
        start_revision: int,
        on_batch: Callable[[WatchBatch], None],
        on_error: Callable[[StoreError], None],
        progress_notify: bool = True,
    ) -> WatchStream:
        """Start a watch on ``prefix``; see :class:`WatchStream`.

        etcd refuses a watch made with an expired auth token as
        "permission denied", not as a token error (FR16), so with a user
        a refused watch is tried once more after authenticating again.
        """
        self._check_usable()
        for attempt in (1, 2):
            metadata = self._metadata
            stream = WatchStream(
                self,
                prefix,
                start_revision,
                on_batch,
                on_error,
                progress_notify,
            )
            try:
                stream.start()
            except WatchRefusedError:
                if attempt == 2 or self._credentials.user is None:
                    raise
                logger.info(
                    "watch on %r refused; authenticating again in case "
                    "the token expired",
                    prefix,
                )
                with self._token_lock:
                    if self._metadata == metadata:
                        self._authenticate()
                continue
            return stream
        raise AssertionError("unreachable")

    # --------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close the channel; idempotent."""
        if self._closed:
            return
        self._closed = True
        if os.getpid() == self._pid:
            self._channel.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> EtcdStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_store(
    etcd: EtcdStore | str | Sequence[str],
    *,
    timeout: float,
    credentials: Credentials | None,
) -> tuple[EtcdStore, bool]:
    """A store from an existing one or from endpoints: ``(store, owned)``.

    ``owned`` is True when this call opened the store, so the caller
    closes it; a store passed in is shared and left open.
    """
    if isinstance(etcd, EtcdStore):
        return etcd, False
    return EtcdStore(etcd, timeout=timeout, credentials=credentials), True


class WatchStream:
    """One etcd watch on a key prefix, fed by its own thread.

    :meth:`start` returns once etcd confirmed the watch, and raises
    :class:`WatchRefusedError` if etcd refused it (FR09). A compacted
    ``start_revision`` raises :class:`CompactedError` from :meth:`start`
    only if etcd says so before confirming; etcd 3.5 confirms first and
    cancels right after, so owners must also expect ``CompactedError``
    through ``on_error`` (the router handles both). Afterwards every
    response goes to ``on_batch`` (events, or an empty batch for a
    progress notification), and the end of the stream goes to
    ``on_error`` exactly once, unless :meth:`cancel` ended it. The stream
    is never resumed here: the owner decides (from its last revision + 1,
    or by listing again).
    """

    def __init__(
        self,
        store: EtcdStore,
        prefix: str,
        start_revision: int,
        on_batch: Callable[[WatchBatch], None],
        on_error: Callable[[StoreError], None],
        progress_notify: bool,
    ) -> None:
        self.prefix = prefix
        self.start_revision = start_revision
        self._store = store
        self._on_batch = on_batch
        self._on_error = on_error
        self._progress_notify = progress_notify
        self._requests: queue.Queue[Any] = queue.Queue()
        self._created = threading.Event()
        self._start_error: StoreError | None = None
        self._cancelled = threading.Event()
        self._call: Any = None
        self._thread = threading.Thread(
            target=self._run, name=f"etcdroute-watch {prefix}", daemon=True
        )

    def start(self) -> None:
        key, end = _prefix_range(self.prefix)
        create = etcdrpc.WatchCreateRequest(
            key=key,
            range_end=end,
            start_revision=self.start_revision,
            progress_notify=self._progress_notify,
        )
        self._requests.put(etcdrpc.WatchRequest(create_request=create))
        self._thread.start()
        if not self._created.wait(self._store.timeout):
            self.cancel()
            raise StoreTimeoutError(
                f"watch on {self.prefix!r}: not confirmed within "
                f"{self._store.timeout:g} s"
            )
        if self._start_error is not None:
            self.cancel()
            raise self._start_error

    def request_progress(self) -> None:
        """Ask etcd for a progress notification (etcd 3.4 and later)."""
        if not self._cancelled.is_set():
            progress = etcdrpc.WatchProgressRequest()
            self._requests.put(etcdrpc.WatchRequest(progress_request=progress))

    def cancel(self) -> None:
        """Stop the watch and join its thread; idempotent."""
        self._cancelled.set()
        self._requests.put(None)
        call = self._call
        if call is not None:
            call.cancel()
        if (
            self._thread.is_alive()
            and threading.current_thread() is not self._thread
        ):
            self._thread.join(timeout=self._store.timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._cancelled.is_set()

    def _request_iterator(self) -> Iterator[Any]:
        while True:
            request = self._requests.get()
            if request is None:
                return
            yield request

    def _run(self) -> None:
        error: StoreError | None = None
        try:
            self._call = self._store._watch.Watch(
                self._request_iterator(), metadata=self._store._metadata
            )
            if self._cancelled.is_set():
                self._call.cancel()
            for response in self._call:
                error = self._handle(response)
                if error is not None:
                    break
        except grpc.RpcError as exc:
            error = translate(exc, f"watch on {self.prefix!r}")
        except Exception as exc:  # a bug in a callback must not be silent
            logger.exception("watch on %r failed", self.prefix)
            error = StoreError(f"watch on {self.prefix!r} failed: {exc!r}")
        finally:
            self._requests.put(None)
        if error is None:
            error = StoreUnavailableError(
                f"watch on {self.prefix!r}: stream ended"
            )
        if not self._created.is_set():
            self._start_error = error
            self._created.set()
        elif not self._cancelled.is_set():
            self._on_error(error)

    def _handle(self, response: Any) -> StoreError | None:
        """Process one response; return an error that ends the stream."""
        if response.compact_revision:
            return CompactedError(response.compact_revision)
        if response.canceled:
            reason = response.cancel_reason or "cancelled by server"
            return WatchRefusedError(self.prefix, reason)
        if response.created:
            self._created.set()
            if not response.events:
                return None
        events = [
            WatchEvent(
                _key_value(event.kv),
                event.type == kv_pb2.Event.DELETE,
            )
            for event in response.events
        ]
        self._on_batch(WatchBatch(response.header.revision, events))
        return None
