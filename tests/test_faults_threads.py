"""FR11: one driver shared by 32 threads, and a fork of a running pod."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable

import pytest

from etcdroute import (
    EtcdRouteError,
    EtcdStore,
    LifecycleError,
    ServerDriver,
    SessionState,
    StoreTimeoutError,
)
from etcdroute.links import link_from_kv

MakeDriver = Callable[..., ServerDriver]
THREADS = 32
OPERATIONS = 40


def test_fr11_32_threads_leave_etcd_as_each_thread_recorded(
    make_driver: MakeDriver, store: EtcdStore
) -> None:
    one, two = make_driver(1), make_driver(2)
    unexpected: list[BaseException] = []
    unknown: set[str] = set()
    expected: dict[str, int | None] = {}
    shared_answers: dict[str, set[int]] = {}
    lock = threading.Lock()
    start = threading.Barrier(THREADS)

    def work(index: int) -> None:
        rng = random.Random(index)
        mine = [f"t{index}-{n}" for n in range(5)]
        record: dict[str, int | None] = dict.fromkeys(mine)
        start.wait()
        for _ in range(OPERATIONS):
            uid = rng.choice(mine)
            if uid in unknown:
                continue
            try:
                _one_operation(rng, one, uid, record, shared_answers, lock)
            except StoreTimeoutError:
                unknown.add(uid)  # outcome unknown: not checked
            except EtcdRouteError as exc:
                unexpected.append(exc)  # no documented failure expected
            except BaseException as exc:
                unexpected.append(exc)
        with lock:
            expected.update(record)

    threads = [
        threading.Thread(target=work, args=(i,)) for i in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert not unexpected, unexpected[:3]
    kvs, _ = store.get_prefix(one.keyspace.links_prefix("game"))
    stored = {
        one.keyspace.uid_from_link_key("game", kv.key): link_from_kv(
            "", kv
        ).pod_id
        for kv in kvs
    }
    for uid, pod in expected.items():
        if uid not in unknown:
            assert stored.get(uid) == pod, uid
    # G2 on the shared uids: every answer named the same pod.
    assert shared_answers
    for uid, answers in shared_answers.items():
        assert len(answers) == 1
        assert stored[uid] in answers
    assert two.state is SessionState.REGISTERED


def _one_operation(
    rng: random.Random,
    driver: ServerDriver,
    uid: str,
    record: dict[str, int | None],
    shared: dict[str, set[int]],
    lock: threading.Lock,
) -> None:
    """One random call; ``record`` says what etcd must hold afterwards."""
    action = rng.choice(["try", "try2", "set", "remove", "remove_id", "get"])
    if action in ("try", "try2"):
        target = 1 if action == "try" else 2
        result = driver.try_set_linked_pod(uid, target)
        assert result.pod_id == (record[uid] or target)
        record[uid] = result.pod_id
    elif action == "set":
        target = rng.choice([1, 2])
        driver.set_linked_pod(uid, target)
        record[uid] = target
    elif action == "remove":
        assert driver.remove_linked_pod(uid) == (record[uid] is not None)
        record[uid] = None
    elif action == "remove_id":
        target = rng.choice([1, 2])
        removed = driver.remove_linked_pod_with_id(uid, target)
        assert removed == (record[uid] == target)
        if removed:
            record[uid] = None
    else:
        link = driver.get_linked_pod(uid)
        assert (link.pod_id if link else None) == record[uid]
    # Every thread also races on a few shared uids (try_set only).
    shared_uid = f"shared-{rng.randrange(4)}"
    answer = driver.try_set_linked_pod(shared_uid, rng.choice([1, 2]))
    with lock:
        shared.setdefault(shared_uid, set()).add(answer.pod_id)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_fr11_forked_child_fails_clearly_and_parent_does_not_flap(
    make_driver: MakeDriver, store: EtcdStore
) -> None:
    driver = make_driver(1)
    lease, epoch = driver.lease_id, driver.epoch
    transitions: list[SessionState] = []
    driver.add_listener(lambda t: transitions.append(t.new))
    read_end, write_end = os.pipe()

    pid = os.fork()
    if pid == 0:  # the child: report what using the parent's store does
        os.close(read_end)
        try:
            driver.try_set_linked_pod("from-child")
            message = "no error"
        except LifecycleError as exc:
            message = f"LifecycleError: {exc}"
        except BaseException as exc:
            message = f"{type(exc).__name__}: {exc}"
        os.write(write_end, message.encode())
        os._exit(0)

    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert message.startswith("LifecycleError:"), message
    assert "fork" in message
    assert store.get(driver.keyspace.link_key("game", "from-child"))[0] is None

    # The parent's registration did not flap.
    threading.Event().wait(3 * driver.config.state_interval)
    assert transitions == []
    assert (driver.lease_id, driver.epoch) == (lease, epoch)
    assert driver.try_set_linked_pod("from-parent").created
