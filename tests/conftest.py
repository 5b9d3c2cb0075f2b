"""Shared fixtures: a real etcd for every test, never a mock.

By default the session starts one embedded single-member etcd. Set
``ETCDROUTE_TEST_ENDPOINTS`` (for example to the cluster of
docker-compose.test.yml) to run the suite against an etcd of your own.
Each test works in a fresh random namespace instead of wiping etcd, and
the etcd log tail is printed when a test fails.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from etcdroute import DriverConfig, EmbeddedEtcd, EtcdStore, ServerDriver
from etcdroute.keys import Keyspace

# Hypothesis profiles: "quick" for the default run, "thorough" for CI
# (make test runs the property tests again with it). Drivers are shared
# across the examples of one test, hence the fixture health check.
_RELAXED = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
settings.register_profile(
    "quick", max_examples=15, deadline=None, suppress_health_check=_RELAXED
)
settings.register_profile(
    "thorough",
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=_RELAXED,
)
settings.load_profile(os.environ.get("ETCDROUTE_HYPOTHESIS_PROFILE", "quick"))

#: Fast timings for tests: a crashed pod's lease runs out in 2 s.
FAST = DriverConfig(
    lease_ttl=2,
    state_interval=0.5,
    workload_interval=0.5,
    fencing_margin=0.3,
    max_backoff=0.5,
)


@pytest.fixture(scope="session")
def etcd_endpoints() -> Iterator[str]:
    external = os.environ.get("ETCDROUTE_TEST_ENDPOINTS")
    if external:
        yield external
        return
    with EmbeddedEtcd(unsafe_no_fsync=True) as etcd:
        _EMBEDDED.append(etcd)
        yield etcd.endpoint_string
        _EMBEDDED.remove(etcd)


_EMBEDDED: list[EmbeddedEtcd] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    report = yield
    if report.failed and _EMBEDDED:
        report.sections.append(("etcd log tail", _EMBEDDED[0].log_tail(0)))
    return report


@pytest.fixture
def store(etcd_endpoints: str) -> Iterator[EtcdStore]:
    with EtcdStore(etcd_endpoints, timeout=5.0) as opened:
        yield opened


@pytest.fixture
def namespace(store: EtcdStore) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:12]}"
    yield name
    store.delete_prefix(Keyspace("etcdroute", name).root)


@pytest.fixture
def make_driver(
    etcd_endpoints: str, namespace: str
) -> Iterator[Callable[..., ServerDriver]]:
    """Build drivers in the test's namespace; all are stopped afterwards."""
    made: list[ServerDriver] = []

    def factory(
        pod_id: int, start: bool = True, **kwargs: Any
    ) -> ServerDriver:
        kwargs.setdefault("namespace", namespace)
        kwargs.setdefault("service", "game")
        kwargs.setdefault("config", FAST)
        driver = ServerDriver(etcd_endpoints, pod_id=pod_id, **kwargs)
        made.append(driver)
        return driver.start() if start else driver

    yield factory
    for driver in made:
        driver.stop()


@pytest.fixture
def make_router(
    etcd_endpoints: str, namespace: str
) -> Iterator[Callable[..., Any]]:
    """Build routers in the test's namespace; all are stopped afterwards."""
    from etcdroute import Router

    made: list[Router] = []

    def factory(start: bool = True, **kwargs: Any) -> Router:
        kwargs.setdefault("namespace", namespace)
        kwargs.setdefault("service", "game")
        router = Router(kwargs.pop("etcd", etcd_endpoints), **kwargs)
        made.append(router)
        return router.start() if start else router

    yield factory
    for router in made:
        router.stop()
