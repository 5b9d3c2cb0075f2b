"""The public surface: sorted exports, one seam to etcd."""

from __future__ import annotations

import ast
from pathlib import Path

import etcdroute

PACKAGE = Path(etcdroute.__file__).parent


def test_all_is_sorted_and_importable() -> None:
    names = [n for n in etcdroute.__all__ if n != "__version__"]
    assert names == sorted(names)
    for name in etcdroute.__all__:
        assert hasattr(etcdroute, name), name


def test_only_the_store_imports_etcd3_or_grpc() -> None:
    allowed = {"store.py"}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                root = module.split(".")[0]
                if root in ("etcd3", "grpc") and path.name not in allowed:
                    offenders.append(f"{path.relative_to(PACKAGE)}: {module}")
    # The benchmark's raw-client baseline is the one declared exception.
    offenders = [o for o in offenders if not o.startswith("bench/")]
    assert offenders == []


def test_every_error_derives_from_the_root() -> None:
    from etcdroute import errors

    for name in dir(errors):
        value = getattr(errors, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, errors.EtcdRouteError), name
