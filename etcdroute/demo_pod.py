"""One pod process of the demo: a server driver and nothing else.

Run by :mod:`etcdroute.demo` as ``python -m etcdroute.demo_pod``. The
process registers its pod, prints ``ready <epoch>`` on stdout, then
waits. ``SIGUSR1`` sets it draining (printing ``draining``), ``SIGTERM``
stops it cleanly, and ``SIGKILL`` is how the demo crashes it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from etcdroute.config import DriverConfig
from etcdroute.driver import ServerDriver
from etcdroute.models import RoutingState


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="etcdroute.demo_pod")
    parser.add_argument("--endpoints", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--pod-id", type=int, required=True)
    parser.add_argument("--load", type=int, default=0)
    parser.add_argument("--ttl", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    config = DriverConfig(
        lease_ttl=args.ttl,
        state_interval=args.ttl / 3,
        workload_interval=1.0,
        fencing_margin=0.5,
    )
    driver = ServerDriver(
        args.endpoints,
        namespace=args.namespace,
        service=args.service,
        pod_id=args.pod_id,
        address=f"pod-{args.pod_id}.demo:7000",
        config=config,
    )
    driver.set_load_state(args.load)
    stop = threading.Event()
    drain = threading.Event()

    # Signal handlers only set flags; the main thread does the work.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def request_drain(*_: object) -> None:
        drain.set()
        stop.set()

    signal.signal(signal.SIGUSR1, request_drain)

    driver.start()
    print(f"ready {driver.epoch}", flush=True)
    try:
        while True:
            stop.wait()
            stop.clear()
            if drain.is_set():
                drain.clear()
                driver.set_routing_state(RoutingState.DRAINING)
                print("draining", flush=True)
                continue
            return 0
    finally:
        driver.stop()


if __name__ == "__main__":
    sys.exit(main())
