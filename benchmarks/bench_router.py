"""Benchmark of the client router, each figure beside its baseline.

Run ``python benchmarks/bench_router.py`` (full, a few minutes) or with
``--quick`` (under a minute). It starts its own embedded etcd (fsync
on) and writes ``benchmarks/results/router.json`` (``router-quick.json``
in quick mode). Sections:

* ``latency``: cached ``Router.route()`` of linked uids against a
  linearizable ``get`` of the same link keys, in alternating blocks of
  100 calls; also a cached call made right after blocking I/O (cold CPU
  caches), linearizable ``route()`` and the claim of a new uid.
* ``memory``: RSS growth of a child process that fills a link cache
  with synthetic entries (no etcd: creating a million links would
  dominate the run), divided by the number of entries.
* ``placement``: new uids over 10 pods whose load reports start uneven,
  simulated on the policies (power of two choices, bounded-load
  hashing, random as the baseline) and, smaller, through real routers
  on etcd. Balance is max/mean of links per pod (reported + new).
* ``propagation``: time from another client's write of a link until
  this router's cache holds it.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from etcdroute import (
    BoundedLoadHashing,
    DriverConfig,
    EmbeddedEtcd,
    EtcdStore,
    Keyspace,
    LinkTable,
    PlacementPolicy,
    PowerOfTwoChoices,
    Router,
    RouterConfig,
    ServerDriver,
    Source,
)
from etcdroute.linkcache import LinkCache
from etcdroute.models import decode_link
from etcdroute.placement import RandomPlacement

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).parent / "results"
SERVICE = "bench"
PODS = 10
DRIVER = DriverConfig(lease_ttl=30, state_interval=5.0, workload_interval=0.5)


def percentiles(samples_ns: Sequence[int]) -> dict[str, float]:
    """p50 / p99 / mean in microseconds."""
    ordered = sorted(samples_ns)

    def at(fraction: float) -> float:
        index = min(len(ordered) - 1, int(fraction * len(ordered)))
        return ordered[index] / 1000

    return {
        "p50_us": round(at(0.50), 2),
        "p99_us": round(at(0.99), 2),
        "mean_us": round(statistics.fmean(ordered) / 1000, 2),
        "samples": len(ordered),
    }


def start_pods(
    endpoints: str,
    namespace: str,
    workload: Callable[[int], int] | None = None,
) -> list[ServerDriver]:
    pods = []
    for pod_id in range(PODS):
        report = None
        if workload is not None:
            report = (lambda p: lambda: workload(p))(pod_id)
        pods.append(
            ServerDriver(
                endpoints,
                namespace=namespace,
                service=SERVICE,
                pod_id=pod_id,
                address=f"10.1.0.{pod_id}:7000",
                config=DRIVER,
                workload=report,
            ).start()
        )
    return pods


# ------------------------------------------------------------- latency


def bench_latency(endpoints: str, links: int, samples: int) -> dict[str, Any]:
    pods = start_pods(endpoints, "latency")
    keyspace = Keyspace("etcdroute", "latency")
    try:
        with Router(endpoints, namespace="latency", service=SERVICE) as router:
            uids = [f"user-{i:06d}" for i in range(links)]
            claims = []
            for uid in uids:
                started = time.perf_counter_ns()
                router.route(uid)
                claims.append(time.perf_counter_ns() - started)
            assert router.sync(30), "router did not catch up"

            # Side by side: blocks of 100 cached routes, then 100 gets of
            # the same keys, alternating for the whole run.
            store = EtcdStore(endpoints)
            rng = random.Random(1)
            cached: list[int] = []
            etcd_get: list[int] = []
            after_io: list[int] = []
            misses = 0
            for _ in range(max(1, samples // 100)):
                block = [rng.choice(uids) for _ in range(100)]
                for uid in block:
                    started = time.perf_counter_ns()
                    result = router.route(uid)
                    cached.append(time.perf_counter_ns() - started)
                    misses += result.source is not Source.CACHE
                for uid in block:
                    key = keyspace.link_key(SERVICE, uid)
                    started = time.perf_counter_ns()
                    store.get(key)
                    etcd_get.append(time.perf_counter_ns() - started)
                # One call right after blocking I/O: caches are cold.
                started = time.perf_counter_ns()
                router.route(block[0])
                after_io.append(time.perf_counter_ns() - started)
            strict = []
            for _ in range(max(200, samples // 10)):
                uid = rng.choice(uids)
                started = time.perf_counter_ns()
                router.route(uid, consistency="linearizable")
                strict.append(time.perf_counter_ns() - started)
            store.close()
    finally:
        for pod in pods:
            pod.stop()
    result = {
        "links": links,
        "cached_route": percentiles(cached),
        "cached_route_right_after_io": percentiles(after_io),
        "etcd_get": percentiles(etcd_get),
        "linearizable_route": percentiles(strict),
        "claim_new_uid": percentiles(claims),
        "cached_answers_not_from_cache": misses,
    }
    result["speedup_p50"] = round(
        result["etcd_get"]["p50_us"] / result["cached_route"]["p50_us"], 1
    )
    result["speedup_p99"] = round(
        result["etcd_get"]["p99_us"] / result["cached_route"]["p99_us"], 1
    )
    return result


# -------------------------------------------------------------- memory


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def fill_cache(entries: int) -> dict[str, Any]:
    """Run in a child process: RSS growth of ``entries`` cached links."""
    cache = LinkCache(Keyspace("etcdroute", "mem"), SERVICE, maxsize=entries)
    uids = [f"user-{i:09d}" for i in range(entries)]
    gc.collect()
    before = rss_bytes()
    base = 10_000_000
    for index, uid in enumerate(uids):
        cache.offer(uid, index % PODS, base + index, base + index)
    gc.collect()
    after = rss_bytes()
    assert len(cache) == entries
    uid_bytes = sum(sys.getsizeof(uid) for uid in uids[:1000]) / 1000
    return {
        "entries": entries,
        "rss_growth_mb": round((after - before) / 2**20, 1),
        "bytes_per_link": round((after - before) / entries, 1),
        "uid_string_bytes": round(uid_bytes, 1),
        "note": "uid strings were allocated before the first reading; "
        "add uid_string_bytes per link for uids the router creates",
    }


def bench_memory(entries: int) -> dict[str, Any]:
    output = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(entries)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found: dict[str, Any] = json.loads(output)
    return found


# ----------------------------------------------------------- placement


def uneven_reports(scale: int) -> dict[int, int]:
    """Reported link counts that start uneven: 0, s, 2s, ... 9s."""
    return {pod: pod * scale for pod in range(PODS)}


def balance(counts: dict[int, int]) -> float:
    return round(max(counts.values()) / statistics.fmean(counts.values()), 4)


def simulate(
    policy: PlacementPolicy, reports: dict[int, int], uids: int
) -> dict[str, Any]:
    loads = dict(reports)
    started = time.perf_counter()
    for index in range(uids):
        chosen = policy.choose(f"sim-{index}", loads)
        loads[chosen] += 1
    elapsed = time.perf_counter() - started
    return {
        "max_over_mean": balance(loads),
        "links_per_pod": loads,
        "choose_us": round(elapsed / uids * 1e6, 2),
    }


def bench_placement_sim(uids: int) -> dict[str, Any]:
    reports = uneven_reports(1500)
    policies: dict[str, PlacementPolicy] = {
        "power_of_two_choices": PowerOfTwoChoices(random.Random(3)),
        "bounded_load_hashing_1.05": BoundedLoadHashing(1.05),
        "random_baseline": RandomPlacement(random.Random(3)),
    }
    return {
        "uids": uids,
        "initial_reports": reports,
        "policies": {
            name: simulate(policy, reports, uids)
            for name, policy in policies.items()
        },
    }


def placement_on_etcd(
    endpoints: str, namespace: str, policy: PlacementPolicy, uids: int
) -> dict[str, Any]:
    """Route new uids through a real router; pods report their counts."""
    reports = uneven_reports(max(1, uids // 70))
    placed = dict.fromkeys(range(PODS), 0)
    lock = threading.Lock()

    def workload(pod_id: int) -> int:
        with lock:
            return reports[pod_id] + placed[pod_id]

    pods = start_pods(endpoints, namespace, workload)
    try:
        time.sleep(1.5)  # first load reports out
        config = RouterConfig(placement=policy)
        with Router(
            endpoints, namespace=namespace, service=SERVICE, config=config
        ) as router:
            for index in range(uids):
                result = router.route(f"new-{index}")
                with lock:
                    placed[result.pod_id] += 1
        with EtcdStore(endpoints) as store:
            keyspace = Keyspace("etcdroute", namespace)
            kvs, _ = store.get_prefix(keyspace.links_prefix(SERVICE))
            in_etcd = dict.fromkeys(range(PODS), 0)
            for kv in kvs:
                in_etcd[decode_link(kv.key, kv.value)[0]] += 1
    finally:
        for pod in pods:
            pod.stop()
    assert in_etcd == placed, "etcd disagrees with the routers' answers"
    totals = {pod: reports[pod] + in_etcd[pod] for pod in range(PODS)}
    return {
        "uids": uids,
        "initial_reports": reports,
        "max_over_mean": balance(totals),
        "links_per_pod": totals,
    }


# --------------------------------------------------------- propagation


def bench_propagation(endpoints: str, changes: int) -> dict[str, Any]:
    pods = start_pods(endpoints, "propagation")
    uids = [f"moving-{i}" for i in range(20)]
    try:
        with Router(
            endpoints, namespace="propagation", service=SERVICE
        ) as router:
            for uid in uids:
                router.route(uid)
            assert router.sync(30)
            cache = router._cache
            signal = router._mirror._lock
            from_call: list[int] = []
            from_ack: list[int] = []
            with EtcdStore(endpoints) as other:
                table = LinkTable(other, Keyspace("etcdroute", "propagation"))
                rng = random.Random(5)
                for index in range(changes):
                    uid = uids[index % len(uids)]
                    started = time.perf_counter_ns()
                    made = table.set(SERVICE, uid, rng.randrange(PODS))
                    acked = time.perf_counter_ns()
                    with signal:
                        while True:
                            entry, _ = cache.get(uid)
                            if entry is not None and (
                                entry.revision >= made.revision
                            ):
                                break
                            signal.wait(0.001)
                    seen = time.perf_counter_ns()
                    from_call.append(seen - started)
                    from_ack.append(seen - acked)
                    time.sleep(0.01)
    finally:
        for pod in pods:
            pod.stop()
    return {
        "changes": changes,
        "from_write_call": percentiles(from_call),
        "from_write_ack": percentiles(from_ack),
    }


# ---------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="< 1 minute")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        print(json.dumps(fill_cache(args.memory_child)))
        return 0
    logging.basicConfig(level=logging.WARNING)

    quick = args.quick
    sizes = {
        "links": 300 if quick else 2000,
        "samples": 3000 if quick else 20000,
        "memory_entries": 100_000 if quick else 1_000_000,
        "placement_sim_uids": 100_000,
        "placement_etcd_uids": 300 if quick else 2000,
        "propagation_changes": 50 if quick else 400,
    }
    started = time.monotonic()
    results: dict[str, Any] = {
        "mode": "quick" if quick else "full",
        "sizes": sizes,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
    }
    results["memory"] = bench_memory(sizes["memory_entries"])
    results["placement_simulated"] = bench_placement_sim(
        sizes["placement_sim_uids"]
    )
    with EmbeddedEtcd() as etcd:
        endpoints = etcd.endpoint_string
        results["etcd_version"] = etcd.version
        results["latency"] = bench_latency(
            endpoints, sizes["links"], sizes["samples"]
        )
        results["propagation"] = bench_propagation(
            endpoints, sizes["propagation_changes"]
        )
        results["placement_on_etcd"] = {
            "power_of_two_choices": placement_on_etcd(
                endpoints,
                "place-p2c",
                PowerOfTwoChoices(),
                sizes["placement_etcd_uids"],
            ),
            "random_baseline": placement_on_etcd(
                endpoints,
                "place-random",
                RandomPlacement(),
                sizes["placement_etcd_uids"],
            ),
        }
    results["seconds"] = round(time.monotonic() - started, 1)

    out = args.out or RESULTS / (
        "router-quick.json" if quick else "router.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(summary(results))
    print(f"results written to {out}")
    return 0


def summary(results: dict[str, Any]) -> str:
    latency = results["latency"]
    sim = results["placement_simulated"]["policies"]
    real = results["placement_on_etcd"]
    prop = results["propagation"]
    memory = results["memory"]
    lines = [
        f"mode {results['mode']}, {results['seconds']} s",
        "cached route p50/p99 us: {p50_us} / {p99_us}".format(
            **latency["cached_route"]
        ),
        "etcd get     p50/p99 us: {p50_us} / {p99_us}".format(
            **latency["etcd_get"]
        ),
        f"speedup p50 {latency['speedup_p50']}x, "
        f"p99 {latency['speedup_p99']}x",
        f"memory: {memory['bytes_per_link']} bytes per cached link "
        f"({memory['entries']} entries)",
    ]
    for name, figures in sim.items():
        lines.append(f"simulated {name}: max/mean {figures['max_over_mean']}")
    for name, figures in real.items():
        lines.append(f"on etcd {name}: max/mean {figures['max_over_mean']}")
    lines.append(
        "propagation p50/p99 us: {p50_us} / {p99_us}".format(
            **prop["from_write_ack"]
        )
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
