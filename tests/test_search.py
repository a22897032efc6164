"""Search: pymoo NSGA-II end to end on a tiny supernet, outputs re-read, and kill/resume exactness."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from nasctl.nas.runs.search import resume_search, search
from nasctl.nas.search import SearchConfig
from nasctl.nas.space import Genome
from nasctl.nas.training.supernet import TrainConfig, train_supernet

from . import golden
from .test_train import one_line_error

SMALL = dict(pop_size=6, generations=3, val_size=60, pgd_steps=2, calib_batches=1, final_steps=2,
             final_restarts=1, finetune_members=0)


@pytest.fixture(scope="module")
def supernet_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("sn")
    cfg = TrainConfig(limit_train=256, epochs=2, eval_size=40, eval_steps=2, attack_steps=2,
                      run_root=str(root))
    return train_supernet(cfg)[0]


@pytest.fixture(scope="module")
def finished_run(supernet_ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    return search(SearchConfig(supernet=str(supernet_ckpt), run_root=str(root), **SMALL)).parent


def _strip(front):
    """Front entries without the wall-clock timing, which legitimately differs between runs."""
    return [{k: v for k, v in r.items() if k != "eval_seconds"} for r in front]


def _dominates(a, b, objs):
    sign = {"clean_acc": -1, "adv_acc": -1, "params": 1}
    va = [sign[o] * a[o] for o in objs]
    vb = [sign[o] * b[o] for o in objs]
    return all(x <= y for x, y in zip(va, vb)) and any(x < y for x, y in zip(va, vb))


def test_outputs_are_written_and_consistent(finished_run):
    run = finished_run
    for name in ("config.json", "pareto.json", "archive.jsonl", "history.json", "summary.md",
                 "layer_stats.csv", "front_projections.png", "hypervolume.png", "layer_heatmap.png"):
        assert (run / name).exists() and (run / name).stat().st_size > 0, name
    doc = json.loads((run / "pareto.json").read_text())
    archive = [json.loads(ln) for ln in (run / "archive.jsonl").read_text().splitlines()]
    genomes = [r["genome"] for r in archive]
    assert len(genomes) == len(set(genomes)) == doc["evaluations"]  # cached: nothing evaluated twice
    assert len(archive) <= SMALL["pop_size"] * SMALL["generations"]
    objs = doc["objectives"]
    assert objs == ["clean_acc", "adv_acc", "params"]
    assert Path(doc["supernet"]).is_absolute() and Path(doc["supernet"]).exists()  # usable from any cwd
    front = doc["front"]
    assert front and 0 <= doc["knee"] < len(front)
    for r in front:
        assert r["rank"] == 0 and {"genome", "clean_acc", "adv_acc", "params", "final_clean_acc",
                                   "final_adv_acc"} <= r.keys()
        assert r["final_attack"]["attack"] == "pgd" and r["final_split"] == "test"
        Genome.decode(r["genome"])
        assert not any(_dominates(a, r, objs) for a in archive), r["genome"]
    # every non-front archive member is dominated by some front member
    front_g = {r["genome"] for r in front}
    for a in archive:
        if a["genome"] not in front_g:
            assert any(_dominates(f, a, objs) or all(f[o] == a[o] for o in objs) for f in front), a["genome"]
    hist = json.loads((run / "history.json").read_text())
    hv = [g["hypervolume"] for g in hist["generations"]]
    assert len(hv) == SMALL["generations"] and all(b >= a for a, b in zip(hv, hv[1:])) and hv[-1] > 0
    rows = list(csv.DictReader((run / "layer_stats.csv").open()))
    for row in rows:
        assert sum(int(v) for k, v in row.items() if k.startswith("block:")) == len(front)
    from PIL import Image

    for png in ("front_projections.png", "hypervolume.png", "layer_heatmap.png"):
        with Image.open(run / png) as im:
            assert im.size[0] > 200
    assert front[doc["knee"]]["genome"] in (run / "summary.md").read_text()


def test_same_seed_same_front(finished_run, supernet_ckpt, tmp_path):
    again = search(SearchConfig(supernet=str(supernet_ckpt), run_root=str(tmp_path), **SMALL))
    a = json.loads((finished_run / "pareto.json").read_text())["front"]
    b = json.loads(again.read_text())["front"]
    assert _strip(a) == _strip(b) and len(a) > 0


def test_random_baseline_same_budget(supernet_ckpt, tmp_path):
    p = search(SearchConfig(supernet=str(supernet_ckpt), run_root=str(tmp_path), algorithm="random", **SMALL))
    doc = json.loads(p.read_text())
    assert doc["algorithm"] == "random" and doc["evaluations"] == SMALL["pop_size"] * SMALL["generations"]


def test_constraint_is_respected(supernet_ckpt, tmp_path, finished_run):
    archive = [json.loads(ln) for ln in (finished_run / "archive.jsonl").read_text().splitlines()]
    limit = int(np.median([r["params"] for r in archive]))
    p = search(SearchConfig(supernet=str(supernet_ckpt), run_root=str(tmp_path), max_params=limit, **SMALL))
    front = json.loads(p.read_text())["front"]
    assert front and all(r["params"] <= limit for r in front)


def _nasctl(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "nasctl", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_and_resume_gives_the_same_front(supernet_ckpt, tmp_path):
    """SIGKILL a real search process mid-generation, resume it, compare with an uninterrupted run."""
    common = ["search", "--supernet", str(supernet_ckpt), "--finetune-members", "0", "--pop-size", "8",
              "--generations", "4",
              "--val-size", "200", "--pgd-steps", "3", "--run-root", str(tmp_path)]
    full = _nasctl(*common, "--name", "full", cwd=tmp_path)
    assert full.wait(timeout=600) == 0, full.stderr.read()[-2000:]
    killed = _nasctl(*common, "--name", "killed", cwd=tmp_path)
    deadline = time.time() + 300
    run = None
    while time.time() < deadline:
        runs = list((tmp_path / "search").glob("*-killed"))
        if runs and (runs[0] / "archive.jsonl").exists():
            run = runs[0]
            if len((run / "archive.jsonl").read_bytes().splitlines()) >= 11:  # inside generation 2
                break
        assert killed.poll() is None, "search finished before it could be killed"
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert run is not None and not (run / "pareto.json").exists()
    n_before = len((run / "archive.jsonl").read_bytes().splitlines())
    assert 11 <= n_before < 32
    resumed = subprocess.run([sys.executable, "-m", "nasctl", "search", "--resume", str(run)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=600,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    full_run = next((tmp_path / "search").glob("*-full"))
    a = json.loads((full_run / "pareto.json").read_text())
    b = json.loads((run / "pareto.json").read_text())
    assert [r["genome"] for r in a["front"]] == [r["genome"] for r in b["front"]]
    assert _strip(a["front"]) == _strip(b["front"])
    ha = json.loads((full_run / "history.json").read_text())["generations"]
    hb = json.loads((run / "history.json").read_text())["generations"]
    assert [g["hypervolume"] for g in ha] == [g["hypervolume"] for g in hb]


def _offspring_of_one_parent(mutation_genes: float, seed: int = 0):
    """NSGA-II offspring on the digits space when every parent is the same subnet (synthetic objective,
    no supernet): crossover of identical parents is a copy, so what differs is mutation's doing."""
    import tempfile

    from nasctl.nas.runs.search import sizes_fn
    from nasctl.nas.search import SearchCallbacks
    from nasctl.nas.search.algorithms import make_nsga2
    from nasctl.nas.search.archive import Archive
    from nasctl.nas.search.problem import SearchState, genome_from_vars, make_problem
    from nasctl.nas.space import load_space

    space = load_space("digits")
    sizes = sizes_fn(space, {"in_channels": 1, "resolution": 8, "num_classes": 10})

    def fake_accuracy(g):
        p = sizes(g)["params"]
        return {"clean_acc": 100 * p / (p + 20_000),
                "adv_acc": 100 * (zlib.crc32(g.encode().encode()) % 97) / 97}

    cfg = SearchConfig(pop_size=40, generations=2, mutation_genes=mutation_genes, seed=seed)
    state = SearchState(space, ("clean_acc", "adv_acc", "params"), fake_accuracy, sizes,
                        Archive(Path(tempfile.mkdtemp()) / "a.jsonl"), cfg, SearchCallbacks())
    algo, problem = make_nsga2(space, cfg.pop_size, mutation_genes), make_problem(state)
    algo.setup(problem, termination=("n_gen", 2), seed=seed, verbose=False)
    pop = algo.ask()
    algo.evaluator.eval(problem, pop)
    algo.tell(infills=pop)
    x0 = dict(algo.pop[0].X)
    for ind in algo.pop:
        ind.set("X", dict(x0))
    parent = genome_from_vars(space, x0).layers
    return [sum(a != b for a, b in zip(genome_from_vars(space, x).layers, parent))
            for x in algo.ask().get("X")]


def test_mutation_genes_sets_how_far_offspring_move():
    """More genes redrawn per offspring: offspring differ from their parent in more layers."""
    low, high = np.mean(_offspring_of_one_parent(0.5)), np.mean(_offspring_of_one_parent(6.0))
    assert low >= 1  # duplicates of the parent are eliminated, so every offspring differs somewhere
    assert high >= low + 1, (low, high)


def test_half_written_archive_line_is_dropped(finished_run, tmp_path):
    import shutil

    from nasctl.nas.search.archive import Archive

    copy = tmp_path / "a.jsonl"
    shutil.copy(finished_run / "archive.jsonl", copy)
    n = len(copy.read_text().splitlines())
    with open(copy, "a") as f:
        f.write('{"genome": "ir_k3_e3_c8-ski')
    size = copy.stat().st_size
    read_only = Archive(copy, repair=False)  # a reader of another run's archive leaves the file alone
    assert len(read_only) == n and copy.stat().st_size == size
    arch = Archive(copy)
    assert len(arch) == n and copy.read_text().endswith("\n") and copy.stat().st_size < size


def test_resume_of_a_finished_run_reproduces_it(finished_run):
    before = json.loads((finished_run / "pareto.json").read_text())["front"]
    after = json.loads(resume_search(finished_run).read_text())["front"]
    assert before == after  # every candidate comes from the archive, timings included


def test_resume_of_a_run_from_before_mutation_genes_keeps_the_old_rate(finished_run, tmp_path):
    """Runs written before --mutation-genes existed used pymoo's default rate (1 gene): resuming keeps it."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(finished_run, old)
    doc = json.loads((old / "config.json").read_text())
    del doc["config"]["mutation_genes"]
    (old / "config.json").write_text(json.dumps(doc))
    (old / "pareto.json").unlink()
    assert json.loads(resume_search(old).read_text())["mutation_genes"] == 1.0
    assert json.loads((finished_run / "pareto.json").read_text())["mutation_genes"] == 2.0


@pytest.mark.parametrize("args, needles", [
    (["search", "--objectives", "clean_acc,adv_accc"], ["did you mean 'adv_acc'"]),
    (["search", "--objectives", "clean_acc,latency_ms"], ["latency"]),
    (["search", "--pop-size", "1"], ["--pop-size"]),
    (["search", "--mutation-genes", "0"], ["--mutation-genes", "> 0"]),
    (["search", "--supernet", "nothere.pt"], ["does not exist"]),
    (["search", "--resume", "nothere"], ["not a search run"]),
    (["eval", "--supernet", "nothere.pt", "--arch", "x"], ["does not exist"]),
])
def test_cli_bad_input(tmp_path, args, needles):
    from .test_train import nasctl

    one_line_error(nasctl(*args, cwd=tmp_path), *needles)


def test_bad_genome_and_wrong_space_via_cli(supernet_ckpt, tmp_path):
    from .test_train import nasctl

    one_line_error(nasctl("eval", "--supernet", str(supernet_ckpt), "--arch", "ir_k3_e3_c8-bogus_c4",
                          cwd=tmp_path),
                   "bogus")
    one_line_error(nasctl("search", "--supernet", str(supernet_ckpt), "--width-mult", "2", cwd=tmp_path),
                   "trained on space")


def test_eval_command_writes_strong_results(finished_run, tmp_path):
    from .test_train import nasctl

    proc = nasctl("eval", "--run", str(finished_run), "--steps", "3", "--restarts", "2", "--n-images", "64",
                  "--run-root", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(next((tmp_path / "eval").glob("*/eval.json")).read_text())
    r = doc["results"][0]
    assert r["images"] == 64 and "pgd3x2" in r["attacks"]
    assert r["attacks"]["autoattack"]["version"] == "standard"  # the default: the whole of AutoAttack
    assert r["robust_acc"] == min(a["acc"] for a in r["attacks"].values()) <= r["clean_acc"]


def test_progress_is_shown(supernet_ckpt, tmp_path, capsys):
    """The user sees a bar per generation with evaluations, hypervolume and the best values, then the
    front as a table: what the CLI prints, not what it writes."""
    from nasctl.cli import main

    assert main(["search", "--supernet", str(supernet_ckpt), "--run-root", str(tmp_path), "--pop-size", "4",
                 "--generations", "2", "--val-size", "40", "--pgd-steps", "1",
                 "--finetune-members", "0"]) == 0
    out, err = capsys.readouterr()
    # captured output is not a terminal: one plain line per generation, no bar redraws (a log file)
    assert "\r" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("search: ")]
    assert [ln.split()[1] for ln in lines] == ["1/2", "2/2"], err
    assert all("evals=" in ln and "HV=" in ln and "best: clean_acc=" in ln for ln in lines)
    assert "Pareto front:" in out and "knee" in out and "run folder:" in out


def test_a_terminal_gets_a_bar(supernet_ckpt, tmp_path, capsys, monkeypatch):
    """On a terminal (forced here with NASCTL_PROGRESS=bars) the generations are one redrawn tqdm bar."""
    from nasctl.cli import main

    monkeypatch.setenv("NASCTL_PROGRESS", "bars")
    assert main(["search", "--supernet", str(supernet_ckpt), "--run-root", str(tmp_path), "--pop-size", "4",
                 "--generations", "2", "--val-size", "40", "--pgd-steps", "1",
                 "--finetune-members", "0"]) == 0
    bar = capsys.readouterr().err.replace("\r", "\n")
    assert "search: 100%" in bar and "2/2" in bar and "evals=" in bar and "HV=" in bar


def test_hv_ceiling_bench_scores_runs_against_their_union(finished_run, supernet_ckpt, tmp_path, capsys,
                                                         load_bench):
    """bench/hv_ceiling.py: each run's HV is its own final HV, the union's is at least the best of
    them, and runs of another seed (whose scores are not comparable) are refused."""
    bench = load_bench("hv_ceiling")
    rnd = search(SearchConfig(supernet=str(supernet_ckpt), run_root=str(tmp_path), algorithm="random",
                              **SMALL)).parent
    runs = [finished_run, rnd]
    bench.main([str(r) for r in runs])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for run, row in zip(runs, out["runs"]):
        hist = json.loads((run / "history.json").read_text())["generations"]
        assert row["hypervolume"] == pytest.approx(hist[-1]["hypervolume"], abs=1e-12)
    genomes = {json.loads(line)["genome"] for run in runs
               for line in (run / "archive.jsonl").read_text().splitlines()}
    assert out["union_subnets"] == len(genomes)
    assert out["union_hypervolume"] >= max(r["hypervolume"] for r in out["runs"]) - 1e-12
    other = search(SearchConfig(supernet=str(supernet_ckpt), run_root=str(tmp_path), seed=1, **SMALL)).parent
    with pytest.raises(SystemExit, match="differ in"):
        bench.main([str(finished_run), str(other)])


def test_plots_leave_the_users_matplotlib_backend_alone(finished_run, tmp_path):
    """A notebook user's backend must not be switched by writing a run's plots."""
    import matplotlib

    from nasctl.nas.render.outputs import plot_hypervolume

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        history = json.loads((finished_run / "history.json").read_text())["generations"]
        plot_hypervolume(tmp_path / "hv.png", history, "x")
        assert matplotlib.get_backend() == "svg"
        assert (tmp_path / "hv.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        matplotlib.use(before)


GOLDEN = Path(__file__).parent / "data" / "golden_front.json"
_SIGNS = {"clean_acc": -1, "adv_acc": -1, "params": 1}


def _golden_view(run: Path) -> dict:
    doc = json.loads((run / "pareto.json").read_text())
    return {"front": [{k: r[k] for k in ("genome", "params", "clean_acc", "adv_acc", "final_clean_acc",
                                          "final_adv_acc")} for r in doc["front"]],
            "knee": doc["knee"], "evaluations": doc["evaluations"],
            "hypervolume": [round(g["hypervolume"], 12) for g in
                            json.loads((run / "history.json").read_text())["generations"]]}


def test_front_matches_the_recorded_one(finished_run):
    """A refactor must not change results: the short search of this module (same supernet recipe,
    same seed) must give exactly the front recorded in tests/data/golden_front.json for this machine
    class (CPU vendor, kernel capability, torch version: tests/golden.py). On a machine class without a
    recording, the front must still hold everywhere-true properties within a stated tolerance. When a
    change is meant to alter results, regenerate with NASCTL_UPDATE_GOLDEN=1 (once per capability:
    ATEN_CPU_CAPABILITY=avx2 and =default too) and say why in the commit."""
    got, key = _golden_view(finished_run), golden.machine_key()
    if os.environ.get("NASCTL_UPDATE_GOLDEN"):
        golden.record(GOLDEN, key, got)
    recordings = golden.read(GOLDEN)["recordings"]
    if key in recordings:
        assert got == recordings[key], f"the front recorded for {key} changed"
    else:
        problems = golden.portable_problems(got, recordings, _SIGNS,
                                            SMALL["pop_size"] * SMALL["generations"])
        assert not problems, f"no exact recording for {key}; portable checks failed: {problems}"


def test_every_recording_passes_the_portable_checks_of_the_others():
    """The tolerance covers the kernel differences actually seen: each machine class's recording, taken
    as a new machine's result, passes the portable checks against the other recordings."""
    recordings = golden.read(GOLDEN)["recordings"]
    assert len(recordings) >= 2
    for key, got in recordings.items():
        others = {k: v for k, v in recordings.items() if k != key}
        problems = golden.portable_problems(got, others, _SIGNS, SMALL["pop_size"] * SMALL["generations"])
        assert not problems, (key, problems)


def test_the_golden_comparison_catches_a_one_image_change(supernet_ckpt, tmp_path, monkeypatch):
    """The exact comparison is not vacuous: the same search with one validation image fewer (the
    smallest change a refactor could make to the data) gives a front that differs from the recording."""
    key = golden.machine_key()
    recordings = golden.read(GOLDEN)["recordings"]
    if key not in recordings:
        pytest.skip(f"no exact recording for {key}")
    cfg = SearchConfig(supernet=str(supernet_ckpt), run_root=str(tmp_path), **{**SMALL, "val_size": 59})
    assert _golden_view(search(cfg).parent) != recordings[key]


def test_search_sets_any_training_setting_of_the_supernet_it_trains_first(tmp_path):
    """SearchConfig nests the training config: attack and sampling of the supernet trained first."""
    from nasctl.errors import NasctlError

    with pytest.raises(NasctlError, match="leave them out"):
        SearchConfig(supernet="x.pt", train={"attack": "trades"}).validate()
    with pytest.raises(NasctlError, match="on the search itself"):
        SearchConfig(train={"dataset": "cifar10"}).validate()
    with pytest.raises(NasctlError, match="did you mean 'attack'"):
        SearchConfig(train={"atack": "pgd"}).validate()
    with pytest.raises(NasctlError, match="attack"):
        SearchConfig(train={"attack": "no-such-attack"}).validate()
    tcfg = SearchConfig(seed=3, epochs=1, train={"attack": "fgsm-rs", "sampling": "sandwich"}).train_config()
    assert (tcfg.attack, tcfg.sampling, tcfg.seed, tcfg.epochs, tcfg.dataset) == ("fgsm-rs", "sandwich", 3, 1,
                                                                                  "digits")
    cfg = SearchConfig(epochs=1, run_root=str(tmp_path), test_size=50,
                       train={"attack": "fgsm-rs", "train_subset": 300, "eval_size": 20, "eval_steps": 1},
                       **{**SMALL, "pop_size": 2, "generations": 1})
    run = search(cfg).parent
    trained = json.loads((run / "supernet" / "config.json").read_text())["config"]
    assert trained["attack"] == "fgsm-rs" and trained["train_subset"] == 300 and trained["epochs"] == 1
    pareto = json.loads((run / "pareto.json").read_text())
    assert pareto["final_images"] == 50 and pareto["train_subset"] == 300  # the search used the same subset
    assert "class-balanced subset of 300 training images" in (run / "summary.md").read_text()
    assert json.loads((run / "config.json").read_text())["config"]["train"]["attack"] == "fgsm-rs"


def test_a_registered_objective_is_searched_end_to_end(supernet_ckpt, tmp_path, monkeypatch):
    """docs/design.md §11: a new objective is a function and one registry line. Registered here (as the
    line in nas/objectives.py would), it is offered to --objectives, recorded for every candidate,
    scaled by the largest subnet's value and drives the front, with no other edit."""
    from nasctl.nas.search.objectives import OBJECTIVES, Objective

    def conv_layers(space, genome, info):  # the design doc's example: depth, what a phone pays per layer
        return sum(1 for g in genome.layers if g.op != "skip")

    line = Objective("conv_layers", False, "", "searchable layers used", conv_layers)
    monkeypatch.setitem(OBJECTIVES, "conv_layers", line)
    doc = json.loads(search(SearchConfig(supernet=str(supernet_ckpt), run_root=str(tmp_path),
                                         objectives="clean_acc,adv_acc,conv_layers", **SMALL)).read_text())
    run = tmp_path / "search"
    records = [json.loads(line) for line in next(run.glob("*/archive.jsonl")).read_text().splitlines()]
    assert records and all(r["conv_layers"] == conv_layers(None, _parse(supernet_ckpt, r["genome"]), None)
                           for r in records)
    front = doc["front"]
    assert front and all("conv_layers" in m for m in front)
    # the front is non-dominated in the three objectives it was searched on (none of them params)
    point = [(m["clean_acc"], m["adv_acc"], -m["conv_layers"]) for m in front]
    assert not any(q != p and all(qi >= pi for qi, pi in zip(q, p)) for p in point for q in point)


def _parse(ckpt, genome: str):
    from nasctl.nas.supernet.checkpoint import load_supernet

    return load_supernet(ckpt).space.parse(genome)
