"""The search's latency check: a front whose latency a lookup table predicted is timed for real on the
host, each member gets ``measured_latency_ms``, and a member measured above ``--max-latency-ms`` is
flagged (in ``pareto.json``, its meta, the summary and one warning line)."""

from __future__ import annotations

import copy
import json
import logging

import pytest

from nasctl.nas.search.latency_check import check_front_latency, run_latency_check
from nasctl.profiling import MeasurementStore, ProfilingError

from .test_profiling import tiny, tiny_supernet  # noqa: F401 (the host table's module fixtures, reused)


@pytest.fixture(scope="module")
def checked_run(tiny, tiny_supernet):  # noqa: F811
    """A tiny latency-constrained search on the host's float32 table (a generous limit)."""
    root = tiny["root"] / "latency-check"
    root.mkdir()
    quick = root / "quick.yaml"
    quick.write_text("final_steps: 1\nfinal_restarts: 1\ncalib_batches: 1\n")
    from nasctl.cli import main

    rc = main([str(a) for a in [
        "search", "--config", quick, "--supernet", tiny_supernet, "--objectives",
        "clean_acc,adv_acc,params,latency_ms", "--latency-source", "lut:host", "--latency-precision",
        "float32", "--store", tiny["store"], "--pop-size", "4", "--generations", "2", "--val-size", "30",
        "--pgd-steps", "1", "--finetune-members", "0", "--max-latency-ms", "1000", "--run-root", root]])
    assert rc == 0
    pareto = next(root.rglob("pareto.json"))
    return pareto, json.loads(pareto.read_text())


def _source(tiny):  # noqa: F811
    from nasctl.profiling import open_latency_source

    store = MeasurementStore(tiny["store"]).open()
    return open_latency_source("lut:host", store, tiny["space"], tiny["info"], precision="float32")


def test_every_front_member_is_measured_beside_its_prediction(checked_run):
    pareto, doc = checked_run
    front = doc["front"]
    assert front and all(r["measured_latency_ms"] > 0 and r["latency_ms"] > 0 for r in front)
    assert all(r["latency_violation"] is False for r in front)  # 1000 ms: nothing this small breaks it
    check = doc["latency_check"]
    assert check["source"] == "lut:host" and check["measured"] == len(front) and check["violations"] == 0
    assert check["max_latency_ms"] == 1000 and check["precision"] == "float32"
    assert "latency_check" in doc["stage_seconds"]
    summary = (pareto.parent / "summary.md").read_text()
    assert "| measured ms |" in summary and f"{len(front)} front members measured on lut:host" in summary
    from nasctl.nas.report import collect, front_table

    table = front_table(doc)
    assert "measured ms" in table["columns"] and len(table["rows"]) == len(front)
    page = collect(pareto.parent, doc, pareto.parent.parent.parent)  # the report page's blocks
    assert any("front members measured on lut:host" in (b.text or "") for b in page)
    for r in front:  # microsecond models sit in timer noise: the table is right to an order of magnitude
        assert 0.2 < r["latency_ms"] / r["measured_latency_ms"] < 5, r
        print(f"{r['genome']}: predicted {r['latency_ms']:.4f} ms, "
              f"measured {r['measured_latency_ms']:.4f} ms")


def test_a_limit_just_under_a_members_measured_latency_flags_it(checked_run, tiny, caplog):  # noqa: F811
    """The check on the finished front, with the run's own measuring callable and a lower limit."""
    front = copy.deepcopy(checked_run[1]["front"])
    slow = max(range(len(front)), key=lambda i: front[i]["measured_latency_ms"])
    limit = front[slow]["measured_latency_ms"] * 0.999
    src = _source(tiny)
    with caplog.at_level(logging.WARNING, logger="nasctl.nas.search.latency_check"):
        check = check_front_latency(front, src.measure_many, limit, "lut:host")
    assert front[slow]["latency_violation"] is True and slow in check["violators"]
    assert all(r["latency_violation"] == (r["measured_latency_ms"] > limit) for r in front)
    under = [i for i, r in enumerate(front) if r["measured_latency_ms"] <= limit]
    assert all(not front[i]["latency_violation"] and i not in check["violators"] for i in under)
    assert check["violations"] == len(check["violators"]) == len(front) - len(under)
    # the same measurement as the run's (the store answers a genome timed before)
    run_front = checked_run[1]["front"]
    assert [r["measured_latency_ms"] for r in front] == [r["measured_latency_ms"] for r in run_front]
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == check["violations"]
    assert any(front[slow]["genome"] in ln and "--max-latency-ms" in ln and "predicted" in ln for ln in lines)


def test_export_warns_when_its_pick_broke_the_limit(checked_run, tiny, caplog):  # noqa: F811
    """The flagged member, picked for export, gets a warning naming its measured latency; one under the
    limit gets none."""
    from nasctl.export.pipeline import warn_latency_violation
    from nasctl.nas.runs.select import RunPick

    front = copy.deepcopy(checked_run[1]["front"])
    slow = max(range(len(front)), key=lambda i: front[i]["measured_latency_ms"])
    check_front_latency(front, _source(tiny).measure_many, front[slow]["measured_latency_ms"] * 0.999,
                        "lut:host")

    def pick(i):
        return RunPick(run_dir=".", index=i, genome=front[i]["genome"], entry=front[i], checkpoint="s.pt",
                       is_knee=False)

    with caplog.at_level(logging.WARNING, logger="nasctl.export.pipeline"):
        assert warn_latency_violation(pick(slow)) is True
        fast = [i for i, r in enumerate(front) if not r["latency_violation"]]
        assert all(warn_latency_violation(pick(i)) is False for i in fast)
    lines = [r.getMessage() for r in caplog.records if r.name == "nasctl.export.pipeline"]
    assert len(lines) == 1 and f"#{slow}" in lines[0] and "--max-latency-ms" in lines[0]
    assert f"{front[slow]['measured_latency_ms']:.4g} ms" in lines[0]


def test_a_device_that_cannot_measure_is_one_warning_and_nothing_lost(checked_run, caplog):
    front = copy.deepcopy(checked_run[1]["front"])
    for r in front:
        r.pop("measured_latency_ms"), r.pop("latency_violation")
    before = copy.deepcopy(front)

    def gone(genomes):
        raise ProfilingError("adb: device 'R58M12ABCDE' not found")

    with caplog.at_level(logging.WARNING, logger="nasctl.nas.search.latency_check"):
        check = check_front_latency(front, gone, 0.001, "lut:adb:R58M12ABCDE")
    assert front == before and check["measured"] == 0 and "not found" in check["skipped"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "latency check skipped" in warnings[0]


def test_measured_sources_and_no_check_latency_are_skipped_and_recorded():
    from types import SimpleNamespace

    def source(kind):
        spec = SimpleNamespace(kind=kind, device="host", precision="int8", threads=1)
        return SimpleNamespace(spec=spec, measure_many=lambda g: pytest.fail("measured"))

    front = [{"genome": "x", "latency_ms": 1.0}]
    assert run_latency_check(front, None, 1.0) is None
    check = run_latency_check(front, source("measure"), 1.0)
    assert check["measured"] == 0 and "measure:host measured" in check["skipped"]
    check = run_latency_check(front, source("lut"), 1.0, enabled=False)
    assert check["measured"] == 0 and "--no-check-latency" in check["skipped"]
    assert front == [{"genome": "x", "latency_ms": 1.0}]


def test_no_check_latency_flag_reaches_the_config():
    from nasctl.cli import build_parser
    from nasctl.commands._common import config_overrides
    from nasctl.nas.search import SearchConfig

    argv = ["search", "--no-check-latency"]
    assert config_overrides(build_parser(argv).parse_args(argv), SearchConfig)["check_latency"] is False
    argv = ["search"]
    assert "check_latency" not in config_overrides(build_parser(argv).parse_args(argv), SearchConfig)
    assert SearchConfig().check_latency is True


def test_the_search_takes_its_latency_from_the_callers_provider(tmp_path):
    """nas sits below profiling: search() opens no latency source itself. With latency_source and no
    provider it says which argument to pass; a provider's refusal of the spec comes before any folder;
    a given provider is asked to check the spec first."""
    from nasctl.errors import NasctlError
    from nasctl.nas.runs.search import search
    from nasctl.nas.search import SearchConfig
    from nasctl.profiling import LatencySources

    def cfg():
        return SearchConfig(run_root=str(tmp_path), objectives="clean_acc,latency_ms",
                            latency_source="lut:host")

    with pytest.raises(NasctlError, match=r"latency=nasctl\.profiling\.LatencySources\(\)"):
        search(cfg())
    bad = cfg()
    bad.latency_source = "lutt:host"
    with pytest.raises(NasctlError, match="lutt:host"):
        search(bad, latency=LatencySources())
    asked = []

    class Refuses:
        def check(self, spec, precision, threads):
            asked.append((spec, precision, threads))
            raise NasctlError("no such device here")

        def open(self, *a):
            raise AssertionError("opened before the check")

    with pytest.raises(NasctlError, match="no such device"):
        search(cfg(), latency=Refuses())
    assert asked == [("lut:host", "int8", 1)]
    assert not (tmp_path / "search").exists()  # nothing created for any of them
