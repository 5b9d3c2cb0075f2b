"""A deliberately broken try-set: the negative control of the checker.

:func:`naive_try_set` reads the link and, if it is absent, writes it
with an unconditional put: check-then-act outside a transaction, the
defect of the original design (DESIGN.md section 2). Two callers racing
on one uid can both read "absent" and both report ``created``; the
second silently overwrites the first. The history checker must catch
that every time, or it proves nothing (tests/test_negative_control.py).

Never use this for anything but that test and the benchmark's control
run. ``between`` is called between the read and the write, so a test
can widen the race window (a short sleep, or a barrier) at will.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from etcdroute.errors import PodNotAcceptingError, PodNotRegisteredError
from etcdroute.links import LinkTable, link_from_kv, pod_from_kv
from etcdroute.models import LinkResult, encode_link

logger = logging.getLogger(__name__)


def naive_try_set(
    table: LinkTable,
    service: str,
    uid: str,
    pod_id: int,
    *,
    between: Callable[[], object] | None = None,
) -> LinkResult:
    """BROKEN on purpose: read the link, then write it unguarded."""
    store, keyspace = table.store, table.keyspace
    link_key = keyspace.link_key(service, uid)

    # The check: registration and link read in two separate requests.
    pod_kv, _ = store.get(keyspace.pod_key(service, pod_id))
    if pod_kv is None:
        raise PodNotRegisteredError(service, pod_id)
    pod = pod_from_kv(service, pod_kv)
    if not pod.accepting:
        raise PodNotAcceptingError(service, pod_id, pod.routing_state.value)
    current, _ = store.get(link_key)
    if current is not None:
        link = link_from_kv(uid, current)
        return LinkResult(uid, link.pod_id, False, link.revision)

    # The act, with nothing guarding it: whatever happened since the
    # read is overwritten.
    if between is not None:
        between()
    lease = 0 if table.persistent else pod.lease
    revision = store.put(link_key, encode_link(pod_id, pod.epoch), lease=lease)
    return LinkResult(uid, pod_id, True, revision)
