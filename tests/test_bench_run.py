"""The benchmark harness against a real etcd: histories, verdicts, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from etcdroute import EmbeddedEtcd, EtcdStore
from etcdroute.bench.capacity import measure_capacity
from etcdroute.bench.harness import (
    BenchConfig,
    Harness,
    Scenario,
    aggregate,
    failures,
)
from etcdroute.bench.report import document, markdown, plot
from etcdroute.bench.workload import Workload
from etcdroute.cli import main
from etcdroute.errors import InvalidArgumentError

HISTORY_FIELDS = {
    "process",
    "op",
    "uid",
    "pod",
    "invoke",
    "complete",
    "outcome",
    "result",
}


def _hot(seconds: float = 1.5) -> Scenario:
    # Four hot uids, six callers in two processes: the naive recipe
    # cannot avoid double claims for long.
    workload = Workload("hotkey", keys=200, hot_keys=4, seed=11)
    return Scenario("hot", workload, 2, 3, seconds)


@pytest.fixture(scope="module")
def hot_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    history_dir = tmp_path_factory.mktemp("histories")
    config = BenchConfig((_hot(),), history_dir=str(history_dir), pods=3)
    # Own etcd: the lock recipe leaks leases (FR13), which must neither
    # blur these lease counts nor expire under other tests' counts.
    with (
        EmbeddedEtcd(unsafe_no_fsync=True) as etcd,
        EtcdStore(etcd.endpoint_string) as store,
    ):
        results = Harness(store, etcd.endpoint_string, config).run()
        leases_after = store.lease_count()
    return results, history_dir, leases_after


def test_every_variant_ran_and_recorded_its_history(hot_run: Any) -> None:
    results, history_dir, _ = hot_run
    runs = {run["variant"]: run for run in results[0].runs}
    assert set(runs) == {"etcdroute", "raw", "lock", "naive"}
    for variant, run in runs.items():
        path = Path(run["history"])
        assert path.parent == history_dir
        lines = path.read_text().splitlines()
        header = json.loads(lines[0])
        assert header["format"] == "etcdroute-history"
        assert header["variant"] == variant
        ops = [json.loads(line) for line in lines[1:]]
        assert len(ops) == run["ops"] > 50
        processes = {op["process"] for op in ops}
        assert processes == {f"p{p}t{t}" for p in range(2) for t in range(3)}
        for op in ops:
            assert set(op) >= HISTORY_FIELDS - {"result"}
            assert op["complete"] >= op["invoke"]
            if op["op"] in ("remove", "get"):
                assert op["pod"] is None
            else:
                assert op["pod"] in (0, 1, 2)
            if op["outcome"] == "ok":
                assert set(op["result"]) in (
                    {"pod", "created", "revision"},
                    {"removed"},
                    {"pod", "revision"},
                )
        assert [op["invoke"] for op in ops] == sorted(
            op["invoke"] for op in ops
        )


def test_etcdroute_is_correct_and_naive_is_caught(hot_run: Any) -> None:
    results, _, _ = hot_run
    result = results[0]
    ours = aggregate(result, "etcdroute")
    assert ours["verdict"] == "correct"
    assert ours["violations"] == 0 and ours["errors"] == 0
    assert ours["conflicts"] > 0  # there was contention to survive
    assert aggregate(result, "raw")["violations"] == 0
    naive = aggregate(result, "naive")
    assert naive["violations"] > 0
    assert naive["verdict"].startswith("caught")
    assert failures(results) == []


def test_leases_stay_one_per_pod_for_etcdroute(hot_run: Any) -> None:
    results, _, _ = hot_run
    for run in results[0].runs:
        leases = run["leases"]
        assert leases["samples"] >= 2
        if run["variant"] in ("etcdroute", "raw", "naive"):
            assert run["lease_ok"], run
            assert leases["peak"] <= leases["baseline"] + 3
    # The lock recipe grants a lease per acquisition (FR13): caught.
    lock = next(r for r in results[0].runs if r["variant"] == "lock")
    assert lock["leases"]["peak"] > lock["leases"]["allowed_peak"]
    assert not lock["lease_ok"]


def test_the_record_and_plot_are_written(hot_run: Any, tmp_path: Path) -> None:
    results, _, _ = hot_run
    env = {"etcd_version": "3.5.1", "cpu_count": 2, "date": "today"}
    record = document(results, env, {"preset": "test"}, None)
    assert record["ok"] is True
    scenario = record["scenarios"][0]
    assert scenario["ratios"]["etcdroute/raw"] > 0
    assert scenario["variants"]["naive"]["violations"] > 0
    json.dumps(record)
    table = markdown(record)
    assert table.count("\n| ") == 5  # header, one row per variant
    assert "| naive |" in table and "caught" in table
    # No sweep in this record: nothing to plot.
    assert plot(record, tmp_path / "none.png") is False
    scenario["sweeps"] = ["concurrency", "skew"]
    assert plot(record, tmp_path / "plot.png") is True
    assert (tmp_path / "plot.png").stat().st_size > 10_000


def test_a_naive_run_without_contention_verdicts_is_a_failure(
    etcd_endpoints: str, tmp_path: Path
) -> None:
    # Only lookups: the naive recipe cannot be caught, so the harness
    # must say that its check proved nothing.
    workload = Workload("hotkey", keys=50, hot_keys=4, mix={"get": 1.0})
    scenario = Scenario("reads", workload, 1, 2, 0.5)
    config = BenchConfig(
        (scenario,), history_dir=str(tmp_path), variants=("naive",), pods=2
    )
    with EtcdStore(etcd_endpoints) as store:
        results = Harness(store, etcd_endpoints, config).run()
    assert aggregate(results[0], "naive")["verdict"] == "NOT CAUGHT"
    assert failures(results) == [
        "reads naive round 1: naive violations not detected"
    ]


def test_bench_config_refuses_bad_values(tmp_path: Path) -> None:
    scenario = _hot()
    with pytest.raises(InvalidArgumentError) as caught:
        BenchConfig((scenario,), str(tmp_path), variants=("etcd2",))
    assert caught.value.argument == "variants"
    with pytest.raises(InvalidArgumentError) as caught:
        BenchConfig((scenario,), str(tmp_path), pods=0)
    assert caught.value.argument == "pods"
    with pytest.raises(InvalidArgumentError) as caught:
        BenchConfig((), str(tmp_path))
    assert caught.value.argument == "scenarios"


def test_cli_runs_a_custom_scenario(
    etcd_endpoints: str, tmp_path: Path
) -> None:
    output = tmp_path / "out.json"
    outcome = CliRunner().invoke(
        main,
        [
            "bench",
            "--endpoints",
            etcd_endpoints,
            "--variants",
            "etcdroute,naive",
            "--distribution",
            "hotkey",
            "--keys",
            "100",
            "--hot-keys",
            "4",
            "--processes",
            "1",
            "--threads",
            "6",
            "--duration",
            "1.5",
            "--pods",
            "2",
            "--output",
            str(output),
        ],
    )
    assert outcome.exit_code == 0, outcome.output
    record = json.loads(output.read_text())
    assert record["ok"] is True
    assert record["settings"]["preset"] == "custom"
    assert record["environment"]["etcd_version"]
    assert record["environment"]["packages"]["python3-etcd3"]
    assert set(record["scenarios"][0]["variants"]) == {"etcdroute", "naive"}
    assert "verdict" in outcome.output
    assert (tmp_path / "out-histories").is_dir()


def test_cli_exits_1_when_naive_is_not_caught(
    etcd_endpoints: str, tmp_path: Path
) -> None:
    outcome = CliRunner().invoke(
        main,
        [
            "bench",
            "--endpoints",
            etcd_endpoints,
            "--variants",
            "naive",
            "--mix",
            "get=1",
            "--processes",
            "1",
            "--threads",
            "2",
            "--duration",
            "0.5",
            "--output",
            str(tmp_path / "o.json"),
        ],
    )
    assert outcome.exit_code == 1, outcome.output
    assert "naive violations not detected" in outcome.output


def test_cli_refuses_bad_arguments(tmp_path: Path) -> None:
    runner = CliRunner()
    both = runner.invoke(main, ["bench", "--quick", "--full"])
    assert both.exit_code == 2
    bad_mix = runner.invoke(main, ["bench", "--mix", "jump=3"])
    assert bad_mix.exit_code == 2 and "mix" in bad_mix.output


def test_capacity_model_measures_storage_per_link() -> None:
    # Own etcd: compaction and defragmentation must not disturb others.
    with EmbeddedEtcd(unsafe_no_fsync=True) as etcd:
        figures = measure_capacity(etcd.endpoint_string, links=3000)
        with EtcdStore(etcd.endpoint_string) as store:
            assert store.count_prefix("etcdroute/")[0] == 0
            assert store.lease_count() == 0
    assert figures["links_found"] == 3000
    assert figures["db_size_after"] > figures["db_size_before"]
    # A link is a ~60-byte key and a ~30-byte value plus bbolt overhead.
    assert 60 < figures["bytes_per_link"] < 2000
    assert figures["create_rate"] > 0


def test_variants_run_together_share_one_window(tmp_path: Path) -> None:
    workload = Workload("hotkey", keys=100, hot_keys=4, seed=3)
    scenario = Scenario(
        "duel",
        workload,
        1,
        4,
        1.5,
        variants=("etcdroute", "naive"),
        together=True,
    )
    config = BenchConfig((scenario,), history_dir=str(tmp_path), pods=2)
    # Own etcd: leases left by other tests (the lock recipe leaks them)
    # would expire during the run and blur the lease counts checked here.
    with (
        EmbeddedEtcd(unsafe_no_fsync=True) as etcd,
        EtcdStore(etcd.endpoint_string) as store,
    ):
        results = Harness(store, etcd.endpoint_string, config).run()
    runs = {run["variant"]: run for run in results[0].runs}
    assert set(runs) == {"etcdroute", "naive"}
    ours, naive = runs["etcdroute"], runs["naive"]
    assert ours["together"] == naive["together"] == ["etcdroute", "naive"]
    # Both sets of pods were live at once: one lease each, four in all.
    assert ours["leases"]["allowed_peak"] == ours["leases"]["baseline"] + 4
    assert ours["leases"]["peak"] > ours["leases"]["baseline"] + 2
    assert ours["lease_ok"] and ours["violation_count"] == 0
    assert naive["violation_count"] > 0
    spans = []
    for run in (ours, naive):
        lines = Path(run["history"]).read_text().splitlines()[1:]
        ops = [json.loads(line) for line in lines]
        spans.append((ops[0]["invoke"], ops[-1]["invoke"]))
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]
    assert results[0].scenario.variants == ("etcdroute", "naive")
