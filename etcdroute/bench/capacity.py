"""Capacity model: etcd storage per link, link creations per second.

Creates ``links`` links with etcdroute (one registered pod, uids like
``player-00000001``), and measures etcd's database size before and after,
each time after compacting the history and defragmenting, so the growth
is what live links cost rather than history or free pages. The raw
growth before compaction is reported too: that is what an etcd without
regular compaction pays for the same writes.

Known shortcomings: the database file grows in pages, so small link
counts give coarse figures (use 100,000); the figures are for one member
(each member of a cluster stores the same); defragmenting blocks the
member for a moment, so never run this against a production cluster.
"""

from __future__ import annotations

import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from etcdroute.bench.harness import BENCH_POD_CONFIG
from etcdroute.driver import ServerDriver
from etcdroute.errors import InvalidArgumentError, StoreError
from etcdroute.keys import Keyspace
from etcdroute.links import LinkTable
from etcdroute.store import EtcdStore

logger = logging.getLogger(__name__)

GIB = 1024**3


def compact_and_defragment(store: EtcdStore) -> int:
    """Compact to the current revision, defragment; return the db size."""
    revision = store.status().revision
    try:
        store.compact(revision)
    except StoreError as exc:  # already compacted at this revision
        logger.debug("compaction at %d skipped: %s", revision, exc)
    store.defragment()
    return store.status().db_size


def measure_capacity(
    endpoints: str,
    links: int = 100_000,
    threads: int = 16,
    prefix: str = "etcdroute",
) -> dict[str, Any]:
    """Create ``links`` links and report what they cost (see module doc)."""
    if links < 1:
        raise InvalidArgumentError("links", "must be >= 1")
    namespace = f"bench-cap-{uuid.uuid4().hex[:8]}"
    keyspace = Keyspace(prefix, namespace)
    service = "capacity"
    with EtcdStore(endpoints, timeout=120.0) as store:
        before = compact_and_defragment(store)
        driver = ServerDriver(
            store,
            namespace=namespace,
            service=service,
            pod_id=0,
            config=BENCH_POD_CONFIG,
        ).start()
        try:
            rate = _create_links(store, keyspace, driver, links, threads)
            raw_growth = store.status().db_size - before
            after = compact_and_defragment(store)
            count, _ = store.count_prefix(keyspace.links_prefix(service))
        finally:
            driver.stop()
            store.delete_prefix(keyspace.root)
        compact_and_defragment(store)
    uid = _uid(0)
    growth = after - before
    per_link = growth / links
    return {
        "links": links,
        "links_found": count,
        "uid_example": uid,
        "key_bytes": len(keyspace.link_key(service, uid).encode()),
        "db_size_before": before,
        "db_size_after": after,
        "raw_growth_before_compaction": raw_growth,
        "bytes_per_link": per_link,
        "links_per_gib": GIB / per_link if per_link > 0 else None,
        "create_rate": rate,
        "create_threads": threads,
    }


def _uid(number: int) -> str:
    return f"player-{number:08d}"


def _create_links(
    store: EtcdStore,
    keyspace: Keyspace,
    driver: ServerDriver,
    links: int,
    threads: int,
) -> float:
    """Create the links from ``threads`` threads; return creations/s."""
    table = LinkTable(store, keyspace)
    registration = driver.session.registration

    def create(first: int) -> None:
        for number in range(first, links, threads):
            table.try_set(driver.service, _uid(number), 0, target=registration)

    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        for done in pool.map(create, range(threads)):
            del done
    return links / (time.monotonic() - started)
