"""Figures of one run, computed from its recorded history.

Throughput counts completed operations (outcome ``ok``) per second of
wall time from the common start signal to the last completion.
Latencies are those of completed operations, percentiles by the
nearest-rank method. A *conflict* is a compare-and-set that lost: a
``try_set`` answered "already linked" or a ``remove_with_id`` that found
another owner or nothing. *Errors* are calls that raised (outcome
``fail`` or ``unknown``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted ``values`` (0.0 when empty)."""
    if not values:
        return 0.0
    rank = math.ceil(fraction * len(values))
    return values[min(max(rank, 1), len(values)) - 1]


def run_figures(
    ops: list[dict[str, Any]], wall: float
) -> dict[str, float | int]:
    """Throughput, latency percentiles (ms) and counters of a history."""
    latencies = []
    try_sets = conflicts = errors = 0
    for op in ops:
        if op["outcome"] != "ok":
            errors += 1
            continue
        latencies.append(op["complete"] - op["invoke"])
        kind, result = op["op"], op["result"]
        if kind == "try_set":
            try_sets += 1
            conflicts += not result["created"]
        elif kind == "remove_with_id":
            conflicts += not result["removed"]
    latencies.sort()
    return {
        "ops": len(ops),
        "completed": len(latencies),
        "throughput": len(latencies) / wall,
        "try_set_throughput": try_sets / wall,
        "p50_ms": 1000 * percentile(latencies, 0.50),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "p999_ms": 1000 * percentile(latencies, 0.999),
        "conflicts": conflicts,
        "errors": errors,
    }
