"""Fault-injection tools for testing code built on etcdroute.

Public test helpers, used by etcdroute's own fault suite and offered to
users the way kazoo offers its cluster harness:

* :class:`EmbeddedEtcd` (re-exported): one member or a loopback cluster,
  with ``kill``, ``pause`` (SIGSTOP), ``resume`` and ``restart``;
* :class:`TcpProxy`: a TCP relay to put between a client and etcd, to
  partition that one client (:meth:`TcpProxy.cut`) while etcd keeps
  running, heal it (:meth:`TcpProxy.restore`) or slow it down
  (:meth:`TcpProxy.delay`);
* :func:`pause_process` / :func:`resume_process`: SIGSTOP / SIGCONT of a
  process, for example a pod running in a subprocess;
* :func:`etcdctl`, :func:`revoke_lease`, :func:`move_leader`,
  :func:`compact`: outside actions on etcd, through ``etcdctl`` (an
  oracle independent of this library) or an :class:`EtcdStore`.

Known limits: the proxy copies bytes on two threads per connection and is
meant for tests, not throughput; a cut drops bytes silently (like a lost
network, not a refused connection), and :meth:`TcpProxy.restore` closes
the connections that lived through the cut, since their byte streams have
holes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence

from etcdroute.embedded import EmbeddedEtcd, EmbeddedEtcdError
from etcdroute.errors import InvalidArgumentError
from etcdroute.store import EtcdStore

logger = logging.getLogger(__name__)

__all__ = [
    "EmbeddedEtcd",
    "TcpProxy",
    "compact",
    "etcdctl",
    "move_leader",
    "pause_process",
    "resume_process",
    "revoke_lease",
]


class _Connection:
    """One client connection relayed to the target."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.broken = False

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class TcpProxy:
    """Relay TCP connections from a local port to ``target`` (host:port).

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    Give :attr:`endpoint` to the client under test instead of etcd's.
    """

    def __init__(self, target: str, *, listen_host: str = "127.0.0.1") -> None:
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidArgumentError("target", f"{target!r}: not host:port")
        self.target = (host, int(port))
        self._listener = socket.create_server((listen_host, 0))
        self._listener.settimeout(0.2)
        host, port = self._listener.getsockname()[:2]
        self.endpoint = f"{host}:{port}"
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._cut = False
        self._delay = 0.0
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._accept_loop, name="etcdroute-proxy", daemon=True
        )

    # -------------------------------------------------------- controls

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close every connection and the listening socket; idempotent."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._listener.close()
        with self._lock:
            connections = list(self._connections)
            self._connections.clear()
        for connection in connections:
            connection.close()

    def cut(self) -> None:
        """Partition: from now on every byte either way is dropped."""
        with self._lock:
            self._cut = True
            for connection in self._connections:
                connection.broken = True
        logger.info("proxy %s -> %s:%d cut", self.endpoint, *self.target)

    def restore(self) -> None:
        """Heal the partition; connections that saw the cut are closed."""
        with self._lock:
            self._cut = False
            broken = [c for c in self._connections if c.broken]
            for connection in broken:
                self._connections.discard(connection)
        for connection in broken:
            connection.close()
        logger.info("proxy %s -> %s:%d restored", self.endpoint, *self.target)

    def delay(self, seconds: float) -> None:
        """Hold every chunk of bytes ``seconds`` before passing it on."""
        if not 0 <= seconds < 3600:
            raise InvalidArgumentError("seconds", f"{seconds!r} out of range")
        self._delay = float(seconds)

    @property
    def is_cut(self) -> bool:
        return self._cut

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------- internals

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connection = _Connection(client)
            with self._lock:
                self._connections.add(connection)
                connection.broken = self._cut
            if not connection.broken:
                try:
                    connection.upstream = socket.create_connection(
                        self.target, timeout=5
                    )
                    connection.upstream.settimeout(None)
                except OSError:
                    self._drop(connection)
                    continue
            self._pump(connection, client, connection.upstream)
            if connection.upstream is not None:
                self._pump(connection, connection.upstream, client)

    def _pump(
        self,
        connection: _Connection,
        source: socket.socket,
        sink: socket.socket | None,
    ) -> None:
        threading.Thread(
            target=self._copy,
            args=(connection, source, sink),
            name="etcdroute-proxy-pump",
            daemon=True,
        ).start()

    def _copy(
        self,
        connection: _Connection,
        source: socket.socket,
        sink: socket.socket | None,
    ) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if self._delay:
                    time.sleep(self._delay)
                # A cut drops bytes silently, like a lost network.
                if connection.broken or sink is None:
                    continue
                sink.sendall(data)
        except OSError:
            pass
        if not connection.broken:
            self._drop(connection)

    def _drop(self, connection: _Connection) -> None:
        with self._lock:
            self._connections.discard(connection)
        connection.close()


# ---------------------------------------------------------- processes


def pause_process(pid: int) -> None:
    """SIGSTOP a process: it keeps its sockets and answers nothing."""
    os.kill(pid, signal.SIGSTOP)


def resume_process(pid: int) -> None:
    """SIGCONT a paused process."""
    os.kill(pid, signal.SIGCONT)


# ------------------------------------------------------------ etcdctl


def etcdctl(
    etcd: EmbeddedEtcd,
    *args: str,
    endpoints: Sequence[str] | None = None,
    user: str | None = None,
    timeout: float = 30.0,
) -> str:
    """Run etcdctl (v3 API) against ``etcd``; return its stdout.

    ``user`` is ``"name:password"`` for a cluster with auth enabled; it
    is passed on the command line, so use test credentials only. Raises
    :class:`EmbeddedEtcdError` with etcdctl's stderr if it fails.
    """
    binary = etcd.etcdctl
    if binary is None:
        raise EmbeddedEtcdError("etcdctl not found next to etcd or on PATH")
    command = [
        binary,
        f"--endpoints={','.join(endpoints or etcd.endpoints)}",
        "--command-timeout=10s",
        *([f"--user={user}"] if user else []),
        *_tls_flags(etcd),
        *args,
    ]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    if done.returncode != 0:
        raise EmbeddedEtcdError(
            f"etcdctl {args[0] if args else ''} failed: {done.stderr.strip()}"
        )
    return done.stdout


def _tls_flags(etcd: EmbeddedEtcd) -> list[str]:
    creds = etcd.credentials
    if creds is None or not creds.tls:
        return []
    flags = [f"--cacert={creds.ca_cert}"]
    if creds.cert_cert and creds.cert_key:
        flags += [f"--cert={creds.cert_cert}", f"--key={creds.cert_key}"]
    return flags


def revoke_lease(
    lease_id: int,
    *,
    etcd: EmbeddedEtcd | None = None,
    store: EtcdStore | None = None,
) -> None:
    """Revoke a lease from outside the pod: via etcdctl or a store."""
    if etcd is not None:
        etcdctl(etcd, "lease", "revoke", f"{lease_id:x}")
    elif store is not None:
        store.revoke_lease(lease_id)
    else:
        raise InvalidArgumentError("etcd", "give etcd or store")


def move_leader(etcd: EmbeddedEtcd, to_index: int) -> None:
    """Transfer raft leadership to member ``to_index`` (etcdctl)."""
    leader = etcd.leader_index()
    if leader is None:
        raise EmbeddedEtcdError("no leader to move")
    if leader == to_index:
        return
    with EtcdStore(etcd.members[to_index].endpoint, timeout=5) as store:
        target_id = store.status().member_id
    etcdctl(
        etcd,
        "move-leader",
        f"{target_id:x}",
        endpoints=[etcd.members[leader].endpoint],
    )


def compact(store: EtcdStore, revision: int | None = None) -> int:
    """Compact etcd's history up to ``revision`` (now by default)."""
    if revision is None:
        _, revision = store.get("\0")
    store.compact(revision)
    return revision
