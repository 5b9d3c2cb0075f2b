"""The contention benchmark: etcdroute against three other recipes.

``etcdroute bench`` (see :mod:`etcdroute.bench.cli`) drives link
operations from several processes on one etcd, side by side for four
variants (:mod:`~etcdroute.bench.variants`), records every call
(:mod:`~etcdroute.bench.runner`), judges each history
(:mod:`~etcdroute.bench.invariants`) and reports
(:mod:`~etcdroute.bench.report`). Needs the ``bench`` extra (matplotlib)
only for the plot.
"""
