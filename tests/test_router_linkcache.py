"""The link cache's ordering rules, on hand-made watch events.

These are pure units of the rule "an entry only moves to a newer
revision, and an offer for an uncached uid is refused when a later change
may have been missed"; the router tests check the same rules end to end
on a real etcd.
"""

from __future__ import annotations

from etcdroute.keys import Keyspace
from etcdroute.linkcache import CachedLink, LinkCache
from etcdroute.models import encode_link
from etcdroute.store import KeyValue, WatchEvent

KEYSPACE = Keyspace("etcdroute", "unit")


def event(
    uid: str, pod_id: int, revision: int, deleted: bool = False
) -> WatchEvent:
    kv = KeyValue(
        key=KEYSPACE.link_key("svc", uid),
        value=b"" if deleted else encode_link(pod_id, 1),
        create_revision=revision,
        mod_revision=revision,
        version=1,
        lease=0,
    )
    return WatchEvent(kv, deleted)


def make(maxsize: int = 10, log_size: int = 100) -> LinkCache:
    return LinkCache(KEYSPACE, "svc", maxsize=maxsize, log_size=log_size)


def test_events_only_move_forward() -> None:
    cache = make()
    cache.apply([event("u", 1, 10)], 10)
    cache.apply([event("u", 2, 9)], 10)  # older: ignored
    assert cache.get("u") == (CachedLink(1, 10), 10)
    cache.apply([event("u", 0, 12, deleted=True)], 12)
    assert cache.get("u") == (None, 12)


def test_offer_refused_after_a_later_change_of_an_uncached_uid() -> None:
    cache = make()
    cache.apply([event("gone", 1, 5), event("gone", 0, 6, deleted=True)], 6)
    assert not cache.offer("gone", 1, 5, as_of=5)  # deleted at 6
    assert cache.offer("fresh", 2, 4, as_of=6)  # nothing after 6
    assert cache.offer("later", 3, 8, as_of=8)  # ahead of the watch
    assert cache.get("later")[0] == CachedLink(3, 8)


def test_offer_refused_when_the_log_no_longer_reaches_back() -> None:
    cache = make(log_size=2)
    cache.apply([event(f"u{i}", 1, 10 + i) for i in range(5)], 14)
    # Changes up to revision 12 were trimmed from the log: unknown.
    assert not cache.offer("other", 1, 3, as_of=11)
    assert cache.offer("other", 1, 3, as_of=13)


def test_unknown_puts_fill_only_free_room() -> None:
    cache = make(maxsize=2)
    assert cache.offer("hot", 1, 1, as_of=1)
    cache.apply([event("a", 1, 2), event("b", 1, 3)], 3)
    assert set(cache.snapshot()) == {"hot", "a"}
    cache.apply([event("hot", 2, 4)], 4)  # known uids still update
    assert cache.get("hot")[0] == CachedLink(2, 4)


def test_invalid_keys_never_enter() -> None:
    cache = make()
    bad = KeyValue(
        key=KEYSPACE.links_prefix("svc") + "%00nul",
        value=encode_link(1, 1),
        create_revision=3,
        mod_revision=3,
        version=1,
        lease=0,
    )
    cache.apply([WatchEvent(bad, False)], 3)
    assert cache.snapshot() == {}
