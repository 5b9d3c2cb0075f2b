"""The demo: several pods, concurrent callers, a crash and a drain.

``etcdroute demo`` runs this. It starts an embedded etcd (or uses
``--endpoints``), starts each pod as its own process with its own
driver, and then:

1. caller threads claim uids with ``try_set_linked_pod``, every uid by
   two callers at once, spreading by load (power of two choices);
2. it prints the per-pod table;
3. it crashes one pod (SIGKILL, no clean stop), waits for its lease to
   expire, shows its links gone and has the callers claim its uids again
   on the live pods;
4. it drains another pod and claims new uids: the drained pod gets none;
5. it checks against etcd that every uid has exactly one owner, a live
   registered pod, and that all racing callers agreed, then prints a
   one-line verdict.

Against a user's etcd the demo works in a fresh namespace and deletes it
at the end.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from etcdroute.embedded import EmbeddedEtcd
from etcdroute.errors import PodError, StoreError
from etcdroute.keys import Keyspace
from etcdroute.links import LinkTable, link_from_kv
from etcdroute.models import PodInfo
from etcdroute.store import EtcdStore

logger = logging.getLogger(__name__)

SERVICE = "game"


@dataclass
class DemoOptions:
    endpoints: str | None = None
    pods: int = 4
    uids: int = 2000
    callers: int = 8
    ttl: int = 3
    seed: int = 7


@dataclass
class Tally:
    """What the callers saw; checked against etcd at the end."""

    answers: dict[str, set[int]] = field(default_factory=dict)
    created: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, uid: str, pod_id: int, created: bool) -> None:
        with self.lock:
            self.answers.setdefault(uid, set()).add(pod_id)
            if created:
                self.created[uid] += 1


class PodProcess:
    """A demo pod running in a child process."""

    def __init__(
        self,
        opts: DemoOptions,
        endpoints: str,
        namespace: str,
        pod_id: int,
        load: int,
    ) -> None:
        self.pod_id = pod_id
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "etcdroute.demo_pod",
                "--endpoints",
                endpoints,
                "--namespace",
                namespace,
                "--service",
                SERVICE,
                "--pod-id",
                str(pod_id),
                "--load",
                str(load),
                "--ttl",
                str(opts.ttl),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )

    def expect(self, word: str, timeout: float = 30.0) -> str:
        """Wait for a line starting with ``word`` on the pod's stdout."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.startswith(word):
                return line.strip()
            if not line and self.process.poll() is not None:
                break
        raise RuntimeError(f"pod {self.pod_id} did not say {word!r}")

    def crash(self) -> None:
        self.process.kill()
        self.process.wait()

    def drain(self) -> None:
        self.process.send_signal(signal.SIGUSR1)
        self.expect("draining")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


class Demo:
    def __init__(self, opts: DemoOptions, console: Console) -> None:
        self.opts = opts
        self.console = console
        self.rng = random.Random(opts.seed)
        self.namespace = f"demo-{uuid.uuid4().hex[:8]}"
        self.tally = Tally()
        self.failures: list[str] = []

    # ------------------------------------------------------------ run

    def run(self) -> bool:
        started = time.monotonic()
        etcd = None
        endpoints = self.opts.endpoints
        if endpoints is None:
            etcd = EmbeddedEtcd(unsafe_no_fsync=True).start()
            endpoints = etcd.endpoint_string
            self.say(f"started embedded etcd {etcd.version} at {endpoints}")
        pods: dict[int, PodProcess] = {}
        store = None
        try:
            store = EtcdStore(endpoints, timeout=5.0)
            # Fail fast, with etcd's own error, before starting any pod.
            self.say(f"etcd {store.status().version} answers at {endpoints}")
            self.table = LinkTable(
                store, Keyspace("etcdroute", self.namespace)
            )
            self.start_pods(endpoints, pods)
            ok = self.scenario(pods)
        finally:
            for pod in pods.values():
                pod.stop()
            if store is not None:
                self.clean_up(store, own_etcd=etcd is not None)
            if etcd is not None:
                etcd.stop()
        elapsed = time.monotonic() - started
        verdict = "PASS" if ok else "FAIL"
        style = "bold green" if ok else "bold red"
        summary = (
            f"{len(self.tally.answers)} uids, each with exactly one owner; "
            "all racing callers agreed"
            if ok
            else "; ".join(self.failures[:5])
        )
        self.console.print(
            f"[{style}]VERDICT: {verdict}[/] {summary} ({elapsed:.1f} s)"
        )
        return ok

    def clean_up(self, store: EtcdStore, *, own_etcd: bool) -> None:
        """Delete the demo's namespace from a user's etcd; close."""
        try:
            if not own_etcd and hasattr(self, "table"):
                store.delete_prefix(self.table.keyspace.root)
        except StoreError as exc:
            logger.warning("demo keys not deleted: %s", exc)
        finally:
            store.close()

    def start_pods(self, endpoints: str, pods: dict[int, PodProcess]) -> None:
        """Start the pod processes into ``pods``, one by one.

        Filling the caller's dict as each process starts means an
        interruption half-way (SIGTERM, Ctrl-C) still stops every process
        already started.
        """
        for pod_id in range(1, self.opts.pods + 1):
            load = self.rng.randint(0, 100)
            pods[pod_id] = PodProcess(
                self.opts, endpoints, self.namespace, pod_id, load=load
            )
        for pod in pods.values():
            pod.expect("ready")
        self.say(
            f"started {len(pods)} pod processes, each with its own driver"
        )

    def scenario(self, pods: dict[int, PodProcess]) -> bool:
        n = self.opts.uids
        first = [f"player-{i}" for i in range(n)]

        # 1. Concurrent claims, each uid by two callers at once.
        self.claim(first)
        self.print_table("after claiming")

        # 2. Crash one pod and let its lease run out.
        victim = pods.pop(1)
        lost = set(self.table.uids_of(SERVICE, victim.pod_id))
        victim.crash()
        self.say(
            f"crashed pod {victim.pod_id} (SIGKILL) holding {len(lost)} "
            f"uids; waiting for its {self.opts.ttl} s lease to expire"
        )
        gone_after = self.wait_for_links_gone(victim.pod_id, lost)
        self.say(
            f"pod {victim.pod_id}'s links vanished after {gone_after:.1f} s"
        )
        self.tally.answers = {
            uid: pods_
            for uid, pods_ in self.tally.answers.items()
            if uid not in lost
        }
        self.claim(sorted(lost))
        self.say(f"{len(lost)} orphaned uids claimed again by live pods")

        # 3. Drain a pod; new uids must avoid it.
        drained = pods[2]
        drained.drain()
        before = len(self.table.uids_of(SERVICE, drained.pod_id))
        second = [f"room-{i}" for i in range(n // 4)]
        self.claim(second)
        after = len(self.table.uids_of(SERVICE, drained.pod_id))
        self.say(
            f"drained pod {drained.pod_id}: {before} links before, {after} "
            f"after {len(second)} new claims"
        )
        if after != before:
            self.failures.append(
                f"draining pod {drained.pod_id} got new links"
            )
        self.print_table("after crash and drain")

        # 4. Verify against etcd.
        self.verify(dead_pod=victim.pod_id)
        return not self.failures

    # -------------------------------------------------------- helpers

    def claim(self, uids: list[str]) -> None:
        """Claim every uid from two callers at once; record answers."""
        pods, _ = self.table.pods(SERVICE)
        accepting = [p for p in pods if p.accepting]
        counts = Counter({p.pod_id: 0 for p in accepting})
        count_lock = threading.Lock()

        def pick(rng: random.Random) -> PodInfo:
            # Power of two choices on links won plus reported load.
            a, b = (
                rng.sample(accepting, 2)
                if len(accepting) > 1
                else (accepting[0], accepting[0])
            )
            with count_lock:
                score_a = counts[a.pod_id] + a.load
                score_b = counts[b.pod_id] + b.load
            return a if score_a <= score_b else b

        def caller(index: int, batch: list[str]) -> None:
            rng = random.Random(self.opts.seed * 1000 + index)
            for uid in batch:
                target = pick(rng)
                for _ in range(5):
                    try:
                        result = self.table.try_set(
                            SERVICE, uid, target.pod_id, target=target
                        )
                        break
                    except (PodError, StoreError) as exc:
                        logger.debug("claim of %s retried: %s", uid, exc)
                        target = pick(rng)
                else:
                    self.failures.append(f"could not claim {uid}")
                    continue
                self.tally.record(uid, result.pod_id, result.created)
                if result.created:
                    with count_lock:
                        counts[result.pod_id] += 1

        # Every uid goes to two callers, so each uid is raced.
        half = max(1, self.opts.callers // 2)
        batches = [uids[i::half] for i in range(half)]
        with ThreadPoolExecutor(max_workers=2 * half) as pool:
            jobs = [pool.submit(caller, i, b) for i, b in enumerate(batches)]
            jobs += [
                pool.submit(caller, half + i, list(reversed(b)))
                for i, b in enumerate(batches)
            ]
            for job in jobs:
                job.result()

        # Every uid of a round was unlinked when the round began, so
        # exactly one of its two racing callers must have created it.
        for uid in uids:
            made = self.tally.created.pop(uid, 0)
            if made != 1:
                self.failures.append(f"{uid} was created {made} times")

    def wait_for_links_gone(self, pod_id: int, uids: Iterable[str]) -> float:
        start = time.monotonic()
        watched = set(uids)
        while time.monotonic() - start < 4 * self.opts.ttl + 10:
            if not watched & set(self.table.uids_of(SERVICE, pod_id)):
                return time.monotonic() - start
            time.sleep(0.2)
        self.failures.append(f"links of crashed pod {pod_id} did not vanish")
        return time.monotonic() - start

    def print_table(self, title: str) -> None:
        pods, _ = self.table.pods(SERVICE)
        found, _ = self.table.links(SERVICE)
        links = Counter(link.pod_id for link in found)
        table = Table(title=f"pods {title}")
        for column in ("pod", "routing state", "links", "load", "epoch"):
            table.add_column(column, justify="right")
        for pod in pods:
            table.add_row(
                str(pod.pod_id),
                pod.routing_state.value,
                str(links[pod.pod_id]),
                str(pod.load),
                str(pod.epoch),
            )
        self.console.print(table)

    def verify(self, dead_pod: int) -> None:
        """Check the callers' answers against one etcd snapshot.

        One key per uid makes two links for a uid impossible by
        construction; what can go wrong is a uid without owner, an owner
        that is dead, or callers told different owners.
        """
        pods, revision = self.table.pods(SERVICE)
        live = {p.pod_id for p in pods}
        kvs, _ = self.table.store.get_prefix(
            self.table.keyspace.links_prefix(SERVICE), revision=revision
        )
        owner_of = {
            self.table.keyspace.uid_from_link_key(SERVICE, kv.key): (
                link_from_kv("", kv).pod_id
            )
            for kv in kvs
        }
        for uid, seen in self.tally.answers.items():
            owner = owner_of.get(uid)
            if owner is None:
                self.failures.append(f"{uid} has no owner in etcd")
            elif owner not in live or owner == dead_pod:
                self.failures.append(f"{uid} owned by dead pod {owner}")
            if seen != {owner}:
                self.failures.append(
                    f"{uid}: callers saw {seen}, etcd {owner}"
                )
        self.say(
            f"verified {len(self.tally.answers)} uids against etcd at "
            f"revision {revision}: {len(self.failures)} problems"
        )

    def say(self, message: str) -> None:
        self.console.print(f"[cyan]demo[/] {message}")


def run_demo(opts: DemoOptions, console: Console | None = None) -> bool:
    """Run the demo; True if the final verification passed."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return Demo(opts, console or Console()).run()
