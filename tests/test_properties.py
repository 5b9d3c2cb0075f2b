"""A model-based test of the server driver on a real etcd (hypothesis).

The state machine below drives real drivers through random sequences of
every link operation, routing-state changes, and pod stops and starts,
over a few uids and pods. A plain Python model says what each call must
return and what etcd must hold; after every step the links and pod
registrations in etcd are compared with the model. A failure shrinks to
the shortest sequence of steps that still fails.

Model: a stopped pod's lease is revoked, so its (lease-bound) links
vanish with it; a try-set to a pod that is not registered or not
accepting is refused before anything else is looked at.
"""

from __future__ import annotations

import uuid

import pytest
from conftest import FAST
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from etcdroute import (
    EtcdStore,
    PodNotAcceptingError,
    PodNotRegisteredError,
    RoutingState,
    ServerDriver,
)
from etcdroute.keys import Keyspace
from etcdroute.links import link_from_kv, pod_from_kv

PODS = (1, 2, 3)
UIDS = ("u1", "room/2", "../u3")
SERVICE = "game"

pods = st.sampled_from(PODS)
uids = st.sampled_from(UIDS)
callers = st.integers(min_value=0, max_value=len(PODS) - 1)
states = st.sampled_from(list(RoutingState))


class DriverMachine(RuleBasedStateMachine):
    """Real drivers against a dictionary model."""

    endpoints = ""  # set by the test before the machine runs

    def __init__(self) -> None:
        super().__init__()
        self.namespace = f"m-{uuid.uuid4().hex[:10]}"
        self.keyspace = Keyspace(FAST.prefix, self.namespace)
        self.store = EtcdStore(self.endpoints, timeout=5.0)
        self.drivers: dict[int, ServerDriver] = {}
        self.model_pods: dict[int, RoutingState] = {}
        self.model_links: dict[str, int] = {}
        self.last_revision = 0
        for pod in PODS[:2]:
            self._start(pod)

    # --------------------------------------------------------- helpers

    def _start(self, pod: int) -> None:
        driver = ServerDriver(
            self.endpoints,
            namespace=self.namespace,
            service=SERVICE,
            pod_id=pod,
            config=FAST,
        )
        self.drivers[pod] = driver.start()
        self.model_pods[pod] = RoutingState.ACCEPTING

    def _caller(self, index: int) -> ServerDriver:
        running = sorted(self.drivers)
        return self.drivers[running[index % len(running)]]

    def _wrote(self, revision: int) -> None:
        assert revision > self.last_revision, "revision went backwards"
        self.last_revision = revision

    def teardown(self) -> None:
        for driver in self.drivers.values():
            driver.stop()
        self.store.delete_prefix(self.keyspace.root)
        self.store.close()

    # ----------------------------------------------------- lifecycle

    @rule(pod=pods)
    def start_pod(self, pod: int) -> None:
        if pod not in self.drivers:
            self._start(pod)

    @precondition(lambda self: len(self.drivers) > 1)
    @rule(pod=pods)
    def stop_pod(self, pod: int) -> None:
        driver = self.drivers.pop(pod, None)
        if driver is None:
            return
        driver.stop()
        del self.model_pods[pod]
        self.model_links = {
            uid: owner
            for uid, owner in self.model_links.items()
            if owner != pod
        }

    @rule(pod=pods, state=states)
    def set_routing_state(self, pod: int, state: RoutingState) -> None:
        if pod in self.drivers:
            self.drivers[pod].set_routing_state(state)
            self.model_pods[pod] = state

    # ---------------------------------------------------------- links

    @rule(caller=callers, uid=uids, to=pods)
    def try_set(self, caller: int, uid: str, to: int) -> None:
        driver = self._caller(caller)
        if to not in self.model_pods:
            with pytest.raises(PodNotRegisteredError):
                driver.try_set_linked_pod(uid, to)
            return
        if self.model_pods[to] is not RoutingState.ACCEPTING:
            with pytest.raises(PodNotAcceptingError):
                driver.try_set_linked_pod(uid, to)
            return
        result = driver.try_set_linked_pod(uid, to)
        owner = self.model_links.get(uid)
        if owner is None:
            assert (result.pod_id, result.created) == (to, True)
            self._wrote(result.revision)
            self.model_links[uid] = to
        else:
            assert (result.pod_id, result.created) == (owner, False)

    @rule(caller=callers, uid=uids, to=pods)
    def set_link(self, caller: int, uid: str, to: int) -> None:
        driver = self._caller(caller)
        if to not in self.model_pods:
            with pytest.raises(PodNotRegisteredError):
                driver.set_linked_pod(uid, to)
            return
        result = driver.set_linked_pod(uid, to)
        assert result.pod_id == to
        assert result.created == (uid not in self.model_links)
        self._wrote(result.revision)
        self.model_links[uid] = to

    @rule(caller=callers, uid=uids)
    def remove(self, caller: int, uid: str) -> None:
        removed = self._caller(caller).remove_linked_pod(uid)
        assert removed == (uid in self.model_links)
        self.model_links.pop(uid, None)

    @rule(caller=callers, uid=uids, pod=pods)
    def remove_with_id(self, caller: int, uid: str, pod: int) -> None:
        removed = self._caller(caller).remove_linked_pod_with_id(uid, pod)
        expected = self.model_links.get(uid) == pod
        assert removed == expected
        if expected:
            del self.model_links[uid]

    @rule(caller=callers, uid=uids)
    def get(self, caller: int, uid: str) -> None:
        link = self._caller(caller).get_linked_pod(uid)
        owner = None if link is None else link.pod_id
        assert owner == self.model_links.get(uid)

    # ----------------------------------------------------- invariants

    @invariant()
    def etcd_agrees_with_the_model(self) -> None:
        kvs, _ = self.store.get_prefix(self.keyspace.links_prefix(SERVICE))
        links = {}
        for kv in kvs:
            uid = self.keyspace.uid_from_link_key(SERVICE, kv.key)
            links[uid] = link_from_kv(uid, kv).pod_id
        assert links == self.model_links

        kvs, _ = self.store.get_prefix(self.keyspace.pods_prefix(SERVICE))
        registered = {
            info.pod_id: info.routing_state
            for info in (pod_from_kv(SERVICE, kv) for kv in kvs)
        }
        assert registered == self.model_pods


def test_driver_matches_the_model(etcd_endpoints: str) -> None:
    DriverMachine.endpoints = etcd_endpoints
    run_state_machine_as_test(DriverMachine)
