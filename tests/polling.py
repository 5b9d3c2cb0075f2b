"""Waiting for a condition in tests, with a deadline instead of a sleep."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    check: Callable[[], bool],
    timeout: float = 15.0,
    *,
    interval: float = 0.05,
    ignore: tuple[type[BaseException], ...] = (),
) -> bool:
    """Poll ``check()`` until it is true; False once ``timeout`` passed.

    Exceptions of the ``ignore`` types count as "not yet" (for example
    ``StoreError`` while etcd comes back); the last check runs unguarded.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except ignore:
            pass
        time.sleep(interval)
    return check()
