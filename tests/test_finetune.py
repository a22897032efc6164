"""The fine-tune stage and ``nasctl finetune``: members trained on their own, recorded, re-read,
exported and evaluated with their own weights; the search run is never written by a fine-tune."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from nasctl.cli import main
from nasctl.nas.attacks.autoattack import autoattack_accuracy
from nasctl.nas.data import load_dataset
from nasctl.nas.runs.finetune import spread_picks
from nasctl.nas.runs.search import resume_search, search
from nasctl.nas.search import SearchConfig
from nasctl.nas.search.evaluator import final_accuracy
from nasctl.nas.supernet import init_weights
from nasctl.nas.supernet.subnet_ckpt import load_subnet
from nasctl.nas.training.supernet import TrainConfig, train_supernet

from .test_reliability import error_line, tree


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ft")
    ckpt = train_supernet(TrainConfig(limit_train=256, epochs=2, eval_size=40, eval_steps=2, attack_steps=2,
                                      run_root=str(root)))[0]
    return search(SearchConfig(supernet=str(ckpt), run_root=str(root), pop_size=6, generations=2, val_size=60,
                               pgd_steps=2, calib_batches=1, final_steps=2, final_restarts=1,
                               finetune_members=2, finetune_epochs=1,
                               finetune_tradeoff="robust,accurate")).parent


def _tuned(doc: dict) -> list[dict]:
    return [r for r in doc["front"] if "finetuned_adv_acc" in r]


def test_search_records_finetuned_members_that_reproduce(tuned_run):
    doc = json.loads((tuned_run / "pareto.json").read_text())
    tuned = _tuned(doc)
    assert len(tuned) == len(spread_picks(doc["front"], doc["knee"], 2, cover_decades=True)) >= min(2, len(
        doc["front"]))
    assert doc["front"][doc["knee"]] in tuned
    assert {len(str(r["params"])) for r in tuned} == {len(str(r["params"])) for r in doc["front"]}
    assert doc["finetune"]["select"] == "best" and "decade" in doc["finetune"]["rule"]
    data = load_dataset("digits", seed=0)
    for r in tuned:
        ckpt = tuned_run / r["finetuned_checkpoint"]
        result = json.loads(ckpt.with_name("result.json").read_text())
        assert (result["clean_acc"], result["adv_acc"]) == (r["finetuned_clean_acc"], r["finetuned_adv_acc"])
        # the epoch kept is recorded with the validation curve it was chosen from
        curve = result["selection"]["curve"]
        assert r["finetuned_epoch"] == result["chosen_epoch"] == result["selection"]["chosen_epoch"]
        assert [p["epoch"] for p in curve] == [1] and r["finetuned_epochs_run"] == 1
        sub = load_subnet(ckpt)
        assert sub.genome == r["genome"] and sum(p.numel() for p in sub.model.parameters()) == r["params"]
        again = final_accuracy(sub.model, sub.genome, data.test, sub.eps, 1, 2, 1)
        assert again["adv_acc"] == r["finetuned_adv_acc"]  # the checkpoint is the network that was scored
        # every trade-off is its own entry, each scored by AutoAttack on the same test images
        entries = r["finetuned_tradeoffs"]
        assert list(entries) == ["robust", "accurate"] == list(doc["finetune"]["tradeoffs"])
        assert r["finetuned_tradeoff"] == "robust"
        assert entries["robust"]["checkpoint"] == r["finetuned_checkpoint"]
        assert r["finetuned_aa_acc"] == entries["robust"]["aa_acc"] == result["aa_acc"]
        assert result["tradeoff"] == "robust"
        accurate = json.loads((tuned_run / entries["accurate"]["checkpoint"]).with_name("result.json")
                              .read_text())
        assert accurate["tradeoff"] == "accurate" and accurate["recipe"]["craft_mode"] == "eval"
        assert entries["accurate"]["checkpoint"] != entries["robust"]["checkpoint"]
        if r["params"] > doc["front"][doc["knee"]]["params"]:  # AutoAttack's default scope: up to the knee
            assert result["aa_attack"] is None and all(e["aa_acc"] is None for e in entries.values())
            continue
        assert result["aa_attack"]["attacks"] == ["apgd-ce", "apgd-t"]
        for e in entries.values():
            assert 0 <= e["aa_acc"] <= e["clean_acc"]
        # AutoAttack's number is the checkpoint's: the same attack on the same images gives it again
        aa = autoattack_accuracy(sub.model, data.test, sub.eps, result["aa_attack"]["seed"], "apgd")
        assert aa["acc"] == r["finetuned_aa_acc"] and aa["images"] == len(data.test)
    assert doc["finetune"]["autoattack"] == "AutoAttack APGD-CE + APGD-T"
    assert doc["finetune"]["autoattack_scope"] == "up-to-knee"
    summary = (tuned_run / "summary.md").read_text()
    assert "fine-tuned PGD %" in summary and "fine-tuned AA %" in summary
    assert "## Fine-tuned entries" in summary
    assert all(f"| {r['params']:,} | accurate |" in summary for r in tuned)
    # where the time went, per stage (this run was given a supernet: no training stage)
    stages = doc["stage_seconds"]
    assert list(stages) == ["search", "front_evaluation", "finetune_stage"]
    assert all(v >= 0 for v in stages.values()) and sum(stages.values()) <= doc["seconds"] + 0.1
    assert "front evaluation" in summary and "finetune stage" in summary


def test_export_takes_the_finetuned_weights_and_says_so(tuned_run, tmp_path, capsys):
    doc = json.loads((tuned_run / "pareto.json").read_text())
    assert main(["export", "--run", str(tuned_run), "--target", "onnx", "--out", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert "with fine-tuned weights" in out.splitlines()[2]
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    knee_ckpt = tuned_run / doc["front"][doc["knee"]]["finetuned_checkpoint"]
    assert report["source"]["kind"] == "subnet" and Path(report["source"]["checkpoint"]) == knee_ckpt
    assert "bn_recalibrated_on_images" in report["steps"][0]["info"]
    assert report["steps"][0]["info"]["bn_recalibrated_on_images"] == 0  # its own statistics are kept


def test_resume_inside_the_finetune_stage_redoes_only_what_is_left(tuned_run, tmp_path):
    run = tmp_path / "r"
    shutil.copytree(tuned_run, run)
    before = json.loads((run / "pareto.json").read_text())
    first, second = [run / r["finetuned_checkpoint"] for r in _tuned(before)]
    (run / "pareto.json").unlink()
    (first.with_name("result.json")).unlink()  # as if killed while training this member
    kept = second.with_name("result.json").read_bytes()
    after = json.loads(resume_search(run).read_text())
    strip = [{k: v for k, v in r.items() if k != "eval_seconds"} for r in before["front"]]
    assert strip == [{k: v for k, v in r.items() if k != "eval_seconds"} for r in after["front"]]
    assert second.with_name("result.json").read_bytes() == kept


def test_finetune_command_writes_its_own_run_and_leaves_the_search_alone(tuned_run, tmp_path, capsys):
    before = tree(tuned_run)
    assert main(["finetune", "--run", str(tuned_run), "--pick", "0", "--epochs", "1",
                 "--run-root", str(tmp_path)]) == 0
    assert tree(tuned_run) == before
    out = next((tmp_path / "finetune").iterdir())
    result = json.loads((out / "result.json").read_text())
    front = json.loads((tuned_run / "pareto.json").read_text())["front"]
    assert result["genome"] == front[0]["genome"] and result["epochs"] == 1
    assert json.loads((out / "config.json").read_text())["command"] == "finetune"
    assert main(["eval", "--checkpoint", str(out / "subnet.pt"), "--steps", "2", "--restarts", "1",
                 "--n-images", "40", "--autoattack", "off", "--run-root", str(tmp_path)]) == 0
    evald = json.loads(next((tmp_path / "eval").glob("*/eval.json")).read_text())
    assert "autoattack" not in evald["results"][0]["attacks"]  # off: not run, not reported
    assert main(["export", "--checkpoint", str(out / "subnet.pt"), "--target", "onnx",
                 "--out", str(tmp_path / "e")]) == 0


@pytest.mark.parametrize("args, needle", [
    (["--pick", "99"], "outside the front"),
    (["--pick", "ir_k3_e3_c8-bogus_c4"], "bogus"),
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "-3"], "--epochs"),
])
def test_finetune_bad_input_is_one_line(tuned_run, tmp_path, capsys, args, needle):
    assert main(["finetune", "--run", str(tuned_run), "--run-root", str(tmp_path), *args]) == 2
    assert needle in error_line(capsys)
    assert not (tmp_path / "finetune").exists() or not any((tmp_path / "finetune").iterdir())


def test_finetune_of_a_missing_run_is_one_line(tmp_path, capsys):
    assert main(["finetune", "--run", str(tmp_path / "nothere")]) == 2
    assert "does not exist" in error_line(capsys)


def test_interrupted_finetune_leaves_the_search_run_untouched(tuned_run, tmp_path, capsys, monkeypatch):
    import nasctl.nas.runs.finetune as ft

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ft, "adversarial_train", interrupted)
    before = tree(tuned_run)
    assert main(["finetune", "--run", str(tuned_run), "--run-root", str(tmp_path)]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert tree(tuned_run) == before


def test_from_scratch_initialisation_is_seeded_and_not_inherited(tuned_run):
    sub = load_subnet(next((tuned_run / "finetune").glob("*/subnet.pt")))
    a = init_weights(load_subnet(sub.path).model, seed=3).state_dict()
    b = init_weights(load_subnet(sub.path).model, seed=3).state_dict()
    inherited = sub.model.state_dict()
    convs = [k for k, v in a.items() if k.endswith("weight") and v.dim() == 4]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(not torch.equal(a[k], inherited[k]) for k in convs)


def test_spread_picks_cover_the_size_range_with_the_knee():
    front = [{"params": p} for p in (1_000, 1_500, 3_000, 5_000, 9_000, 14_000, 20_000, 50_000)]
    assert spread_picks(front, knee=4, k=4) == [0, 2, 4, 7]
    assert 5 in spread_picks(front, knee=5, k=3)
    assert spread_picks(front, knee=0, k=0) == []
    assert spread_picks(front[:2], knee=0, k=5) == [0, 1]


def test_eval_of_a_run_uses_the_finetuned_weights_and_takes_a_config(tuned_run, tmp_path, capsys):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"run: {tuned_run}\npick: all\nsteps: 2\nrestarts: 1\nn_images: 40\nautoattack: apgd\n")
    assert main(["eval", "--config", str(cfg), "--run-root", str(tmp_path)]) == 0
    results = json.loads(next((tmp_path / "eval").glob("*/eval.json")).read_text())["results"]
    for r in results:  # the cheaper AutoAttack, named as such, and part of the minimum
        aa = r["attacks"]["autoattack"]
        assert aa["version"] == "apgd" and aa["attack"] == "AutoAttack APGD-CE + APGD-T"
        assert r["robust_acc"] <= aa["acc"]
    doc = json.loads((tuned_run / "pareto.json").read_text())
    assert [r["genome"] for r in results] == [e["genome"] for e in doc["front"]]
    for r, e in zip(results, doc["front"]):
        assert r["weights"] == ("fine-tuned" if "finetuned_checkpoint" in e else "inherited")
    assert "fine-tuned weights" in capsys.readouterr().out


def test_export_prepares_inherited_weights_exactly_as_the_search_scored_them(tuned_run, tmp_path):
    """One BN calibration: the exported model's BatchNorm statistics are the evaluator's, so the front's
    inherited score is the exported model's."""
    from nasctl.export import pipeline
    from nasctl.export.steps import STEPS
    from nasctl.nas.runs.select import run_supernet
    from nasctl.nas.search.evaluator import CandidateEvaluator, EvalSettings
    from nasctl.nas.supernet.checkpoint import load_supernet

    run = tmp_path / "r"
    shutil.copytree(tuned_run, run)
    doc = json.loads((run / "pareto.json").read_text())
    assert doc["bn_calibration"]["batches"] == 1  # the run's calib_batches
    i = 0
    for k in [k for k in doc["front"][i] if k.startswith("finetuned_")]:  # export its inherited weights
        del doc["front"][i][k]
    (run / "pareto.json").write_text(json.dumps(doc))
    cfg = pipeline.ExportConfig(run=str(run), pick=str(i), target="onnx", out=str(tmp_path / "e"))
    with contextlib.ExitStack() as held:
        ctx = pipeline.setup_export(cfg, None, held)
        STEPS["prepare"](ctx)
    loaded = load_supernet(run_supernet(run, doc))
    ev = CandidateEvaluator(loaded.supernet, load_dataset("digits", seed=0), loaded.eps,
                            EvalSettings(calib_batches=1), seed=0)
    ours = ev.subnet(loaded.space.parse(doc["front"][i]["genome"])).state_dict()
    exported = ctx.float_model.state_dict()
    stats = [k for k in ours if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(ours[k], exported[k]) for k in stats)


def test_nasctl_finetune_scores_on_the_runs_test_split(digits, tmp_path):
    """A search run that scored its front on test_size images: nasctl finetune scores on the same ones."""
    import json

    from nasctl.nas.runs.finetune import search_test_split

    (tmp_path / "config.json").write_text(json.dumps({"command": "search", "config": {"test_size": 50}}))
    data = search_test_split(digits, str(tmp_path))
    assert len(data.test) == 50 and bool((data.test.labels == digits.test.labels[:50]).all())
    assert data.train is digits.train and data.val is digits.val
    (tmp_path / "config.json").write_text(json.dumps({"command": "search", "config": {}}))
    assert search_test_split(digits, str(tmp_path)) is digits


def test_autoattack_far_below_pgd_is_warned_in_summary_report_and_cli(tuned_run, tmp_path, capsys):
    """An entry whose AutoAttack accuracy lies more than AA_GAP_WARN points below PGD is named in
    summary.md, the report page (a note, also warned on stderr) and the CLI's front print; within the
    gap, nothing is said."""
    from nasctl.commands.search import print_front
    from nasctl.nas import report as report_page
    from nasctl.nas.attacks.autoattack import AA_GAP_WARN
    from nasctl.nas.render.outputs import aa_gaps, summary_markdown

    run = tmp_path / "run"
    shutil.copytree(tuned_run, run)
    doc = json.loads((run / "pareto.json").read_text())
    i = next(i for i, r in enumerate(doc["front"]) if "finetuned_tradeoffs" in r)
    for r in doc["front"]:  # within the gap everywhere first
        for e in (r.get("finetuned_tradeoffs") or {}).values():
            e["aa_acc"] = e["adv_acc"] - AA_GAP_WARN
    assert aa_gaps(doc["front"]) == []
    entry = doc["front"][i]["finetuned_tradeoffs"]["accurate"]
    entry["adv_acc"], entry["aa_acc"] = 60.0, 60.0 - AA_GAP_WARN - 0.5
    (run / "pareto.json").write_text(json.dumps(doc))
    assert aa_gaps(doc["front"]) == [(i, "accurate", 60.0, 56.5)]
    summary = summary_markdown({**doc, "run": run.name}, doc["front"], doc["knee"], [])
    assert f"**Warning:** #{i} (accurate): AutoAttack 56.5 % is 3.5 points below PGD 60.0 %" in summary
    warned: list[str] = []
    html, md = report_page.write_report(run, warn=warned.append)
    assert any(f"#{i} (accurate): AutoAttack 56.5 %" in w for w in warned)
    assert "finetuned-entries" in html.read_text() and "Fine-tuned entries" in md.read_text()
    print_front(run / "pareto.json")
    out = capsys.readouterr().out
    assert f"warning: #{i} (accurate): AutoAttack 56.5 % is 3.5 points below PGD 60.0 %" in out
    assert "fine-tuned AA %" in out
