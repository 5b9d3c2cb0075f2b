"""etcdroute: strongly consistent stateful routing on etcd.

Every entity key (a *uid*) of a stateful service is served by exactly one
pod at a time. etcdroute keeps the ``uid -> pod`` table in etcd:

* :class:`ServerDriver` runs inside each pod: registration on a lease,
  load and routing state, compare-and-set link operations;
* :class:`Router` runs inside callers: which pod serves a uid, from a
  watch-coherent cache, placing new uids by load;
* :class:`EtcdStore` is the one connection seam to etcd;
* :class:`EmbeddedEtcd` starts a local etcd for demos and tests.

See docs/ for the model, the key layout and the guarantees.
"""

from etcdroute.config import DriverConfig
from etcdroute.driver import ServerDriver
from etcdroute.embedded import EmbeddedEtcd, EmbeddedEtcdError
from etcdroute.errors import (
    AuthenticationError,
    CompactedError,
    CorruptValueError,
    EtcdRouteError,
    InvalidArgumentError,
    LeaseLostError,
    LifecycleError,
    NoPodAvailableError,
    NotOwnerError,
    PermissionDeniedError,
    PodError,
    PodIdConflictError,
    PodNotAcceptingError,
    PodNotRegisteredError,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
    WatchRefusedError,
)
from etcdroute.keys import Keyspace
from etcdroute.links import LinkTable
from etcdroute.models import Link, LinkResult, PodInfo, RoutingState
from etcdroute.placement import (
    BoundedLoadHashing,
    PlacementPolicy,
    PowerOfTwoChoices,
)
from etcdroute.router import Router
from etcdroute.routing import Consistency, RouterConfig, RouteResult, Source
from etcdroute.session import SessionState, Transition
from etcdroute.store import Credentials, EtcdStore

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "BoundedLoadHashing",
    "CompactedError",
    "Consistency",
    "CorruptValueError",
    "Credentials",
    "DriverConfig",
    "EmbeddedEtcd",
    "EmbeddedEtcdError",
    "EtcdRouteError",
    "EtcdStore",
    "InvalidArgumentError",
    "Keyspace",
    "LeaseLostError",
    "LifecycleError",
    "Link",
    "LinkResult",
    "LinkTable",
    "NoPodAvailableError",
    "NotOwnerError",
    "PermissionDeniedError",
    "PlacementPolicy",
    "PodError",
    "PodIdConflictError",
    "PodInfo",
    "PodNotAcceptingError",
    "PodNotRegisteredError",
    "PowerOfTwoChoices",
    "RouteResult",
    "Router",
    "RouterConfig",
    "RoutingState",
    "ServerDriver",
    "SessionState",
    "Source",
    "StoreError",
    "StoreTimeoutError",
    "StoreUnavailableError",
    "Transition",
    "WatchRefusedError",
    "__version__",
]
