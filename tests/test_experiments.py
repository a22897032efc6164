"""TAM-NAS's studies (``nasctl experiment``) on a tiny search run: matrix shapes, files re-read, numbers in
range and consistent with the run's front and archive, resume, and one-line errors for bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from nasctl.cli import main
from nasctl.nas.experiments import resume_experiment
from nasctl.nas.experiments.finetune_scratch import FinetuneScratchConfig, run_finetune_scratch
from nasctl.nas.experiments.transfer import TransferConfig, analyse, run_transfer
from nasctl.nas.experiments.width import WidthConfig, best_within, compare, run_width
from nasctl.nas.runs.search import search
from nasctl.nas.search import SearchConfig
from nasctl.nas.search.front import hypervolume
from nasctl.nas.training.supernet import TrainConfig, train_supernet

TINY_SEARCH = dict(
    pop_size=6,
    generations=2,
    val_size=60,
    pgd_steps=2,
    calib_batches=1,
    final_steps=2,
    final_restarts=1,
    test_size=120,
    finetune_members=2,
    finetune_epochs=1,
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A finished search run (tiny supernet, 2 members fine-tuned for 1 epoch) under its own run root."""
    root = tmp_path_factory.mktemp("runs")
    ckpt = train_supernet(
        TrainConfig(limit_train=256, epochs=2, eval_size=40, eval_steps=2, attack_steps=2, run_root=str(root))
    )[0]
    return search(SearchConfig(supernet=str(ckpt), run_root=str(root), **TINY_SEARCH)).parent


def _front(run: Path) -> dict:
    return json.loads((run / "pareto.json").read_text())


def _lines(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _png_width(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as im:
        return im.size[0]


@pytest.fixture(scope="module")
def transfer_dir(tiny_run) -> Path:
    return run_transfer(TransferConfig(run=str(tiny_run), members=2, run_root=str(tiny_run.parent.parent)))


def test_transfer_matrix_is_consistent_with_the_front(tiny_run, transfer_dir):
    doc = _front(tiny_run)
    front = doc["front"]
    cfg = json.loads((transfer_dir / "config.json").read_text())
    assert transfer_dir.parent.name == "experiment" and cfg["study"] == "transfer"
    assert cfg["search_runs"] == [str(tiny_run.resolve())]
    res = json.loads((transfer_dir / "result.json").read_text())
    picks = res["members"]
    assert len(picks) == 2 and doc["knee"] in picks
    m = np.array(res["matrix"])
    assert m.shape == (3, 2)  # (K + 1) sources x K targets
    assert ((0 <= m) & (m <= 100)).all()
    clean = np.array(res["clean_acc"])
    assert (m <= clean[None, :] + 1e-9).all()  # robust = correct on clean and adversarial
    for j, i in enumerate(picks):
        # same images, BN calibration, attack and seeds as the search's final evaluation: exact
        assert clean[j] == pytest.approx(front[i]["final_clean_acc"])
        assert m[1 + j, j] == pytest.approx(front[i]["final_adv_acc"])  # the white-box diagonal
    rows = list(csv.reader((transfer_dir / "transfer_matrix.csv").open()))
    assert len(rows) == 1 + 3 + 1 and all(len(r) == 3 + 2 for r in rows)
    assert np.allclose(np.array([[float(v) for v in r[3:]] for r in rows[1:4]]), m, atol=0.01)
    assert rows[1][0] == res["sources"][0]  # the largest path first
    assert _png_width(transfer_dir / "transfer_heatmap.png") > 200
    assert isinstance(res["gradient_masking_suspected"], bool)
    assert "knee" in res["findings"][0] and "gradient masking" in res["findings"][0]
    assert len(_lines(transfer_dir / "results.jsonl")) == 3


def test_masking_flag_is_raised_when_transfer_beats_white_box():
    m = np.array([[40.0, 80.0], [80.0, 85.0], [50.0, 75.0]])  # target 0: white-box 80, from largest 40
    res = analyse(m, [3, 7], knee=3, margin=5.0)
    assert res["knee"]["flag"] and res["knee"]["strongest_row"] == 0 and res["knee"]["gap"] == 40.0
    assert not res["targets"][1]["flag"]  # white-box 75 is the strongest attack on target 7


def test_transfer_resumes_without_redoing_finished_sources(transfer_dir, tmp_path):
    import shutil

    copy = tmp_path / "experiment" / transfer_dir.name
    shutil.copytree(transfer_dir, copy)
    lines = (copy / "results.jsonl").read_text().splitlines()
    (copy / "results.jsonl").write_text(lines[0] + "\n" + lines[1][:20])  # killed while writing line 2
    (copy / "result.json").unlink()
    resume_experiment(copy)
    again = _lines(copy / "results.jsonl")
    assert len(again) == 3 and json.dumps(again[0]) == json.dumps(json.loads(lines[0]))  # kept, not redone
    a = json.loads((transfer_dir / "result.json").read_text())["matrix"]
    assert json.loads((copy / "result.json").read_text())["matrix"] == a


def test_finetune_vs_scratch_reuses_the_stage_and_trains_scratch(tiny_run):
    doc = _front(tiny_run)
    out = run_finetune_scratch(FinetuneScratchConfig(run=str(tiny_run), run_root=str(tiny_run.parent.parent)))
    res = json.loads((out / "result.json").read_text())
    assert res["epochs"] == 1  # the search's fine-tune epochs
    # by default: the members the fine-tune stage trained
    assert res["members"] == [i for i, r in enumerate(doc["front"]) if "finetuned_adv_acc" in r]
    cells = {(c["member"], c["arm"]): c for c in res["cells"]}
    assert len(cells) == 2 * 3
    for i in res["members"]:
        r = doc["front"][i]
        assert (cells[i, "inherited"]["clean_acc"], cells[i, "inherited"]["adv_acc"]) == (
            r["final_clean_acc"],
            r["final_adv_acc"],
        )
        # the stage fine-tuned the same two members (same spread): its results are reused, not retrained
        assert cells[i, "finetuned"]["adv_acc"] == r["finetuned_adv_acc"]
        assert "fine-tune stage" in cells[i, "finetuned"]["from"]
        scratch = cells[i, "scratch"]
        result = json.loads((out / Path(scratch["from"]).parent / "result.json").read_text())
        assert result["from_scratch"] and result["epochs"] == 1 and result["params"] == r["params"]
        assert (result["clean_acc"], result["adv_acc"]) == (scratch["clean_acc"], scratch["adv_acc"])
        for c in (cells[i, a] for a in ("inherited", "finetuned", "scratch")):
            assert 0 <= c["adv_acc"] <= c["clean_acc"] <= 100
    rows = list(csv.reader((out / "finetune_vs_scratch.csv").open()))
    assert len(rows) == 1 + 2 and len(res["table"]["rows"]) == 2
    assert _png_width(out / "finetune_vs_scratch.png") > 200


def test_finetune_vs_scratch_retrains_with_another_budget(tiny_run):
    out = run_finetune_scratch(
        FinetuneScratchConfig(run=str(tiny_run), members=1, epochs=2, run_root=str(tiny_run.parent.parent))
    )
    res = json.loads((out / "result.json").read_text())
    ft = next(c for c in res["cells"] if c["arm"] == "finetuned")
    assert ft["epochs"] == 2 and (out / ft["from"]).is_file()  # its own subnet.pt, not the stage's


def test_width_study_compares_fronts_on_one_scale(tmp_path):
    cfg = WidthConfig(
        width_mult=[0.5, 1.0],
        epochs=1,
        train_subset=128,
        pop_size=4,
        generations=2,
        pgd_steps=1,
        val_size=40,
        final_steps=1,
        test_size=60,
        run_root=str(tmp_path),
        workers=1,
    )
    out = run_width(cfg)
    res = json.loads((out / "result.json").read_text())
    runs = json.loads((out / "config.json").read_text())["search_runs"]
    assert len(runs) == 2 and all((Path(r) / "pareto.json").is_file() for r in runs)
    # the study's --workers reaches each width's search
    assert all(json.loads((Path(r) / "config.json").read_text())["config"]["workers"] == 1 for r in runs)
    fronts = {w: json.loads((Path(r) / "pareto.json").read_text()) for w, r in zip(cfg.width_mult, runs)}
    cmp = res["comparison"]
    assert cmp["scale"]["params"] == fronts[1.0]["scale"]["params"] > fronts[0.5]["scale"]["params"]
    for row in cmp["widths"]:
        d = fronts[row["width_mult"]]
        assert row["hypervolume"] == pytest.approx(hypervolume(d["front"], d["objectives"], cmp["scale"]))
        assert row["own_hypervolume"] == pytest.approx(
            json.loads((Path(runs[cfg.width_mult.index(row["width_mult"])]) / "history.json").read_text())[
                "generations"
            ][-1]["hypervolume"]
        )
        assert 0 <= row["best_adv_acc"] <= 100 and row["front_size"] == len(d["front"])
        run = Path(runs[cfg.width_mult.index(row["width_mult"])])
        archive = {r["genome"]: r for r in _lines(run / "archive.jsonl")}
        assert all(
            archive[r["genome"]]["params"] == r["params"] for r in d["front"]
        )  # the front is the archive's
        assert row["min_params"] == min(r["params"] for r in d["front"])
    wide = next(r for r in cmp["widths"] if r["width_mult"] == 1.0)
    assert wide["hypervolume"] == pytest.approx(
        wide["own_hypervolume"]
    )  # the widest's scale is the common one
    for w in ("0.5", "1.0"):
        accs = [m["best_adv_acc"][w] for m in cmp["matched"]]
        seen = [a for a in accs if a is not None]
        assert seen == sorted(seen)  # a larger budget never does worse
        for m in cmp["matched"]:
            assert m["best_adv_acc"][w] == best_within(fronts[float(w)]["front"], m["budget"])
    assert len(res["table"]["rows"]) == 2 and _png_width(out / "width_fronts.png") > 200
    assert len(list(csv.reader((out / "width_budgets.csv").open()))) == 1 + len(cmp["budgets"])
    assert "Budget" in res["findings"][0]
    from nasctl.nas.report import write_report

    page = write_report(runs[0])[0].read_text()  # a width's own search run finds the study it belongs to
    assert f'id="experiment-{out.name}"' in page
    assert compare(fronts, [10**9])["matched"][0]["best_adv_acc"]["1.0"] == max(
        r["final_adv_acc"] for r in fronts[1.0]["front"]
    )


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nasctl: error:") and len(err.splitlines()) == 1, err
    return err


def test_bad_input_is_one_line_and_leaves_no_folder(tiny_run, tmp_path, capsys):
    unfinished = tmp_path / "search" / "x"
    unfinished.mkdir(parents=True)
    root = ["--run-root", str(tmp_path)]
    for study in ("transfer", "finetune-vs-scratch"):
        assert "pareto.json" in _one_line_error(
            capsys, ["experiment", study, "--run", str(unfinished), *root]
        )
        n = len(_front(tiny_run)["front"])
        err = _one_line_error(
            capsys, ["experiment", study, "--run", str(tiny_run), "--members", str(n + 1), *root]
        )
        assert "larger than the front" in err
    for bad in ("0,1.0", "-0.5,1", "1.0,x"):
        assert "--width-mult" in _one_line_error(
            capsys, ["experiment", "width", f"--width-mult={bad}", *root]
        )
    assert _one_line_error(capsys, ["report", str(unfinished)])
    assert not (tmp_path / "experiment").exists() or not any((tmp_path / "experiment").iterdir())
