"""A hostile user's probe (issue 24, item 4), case by case through the command line: each bad input ends
with one ``nasctl: error:`` line naming the problem, the file and the fix, exit status 2, no traceback,
nothing already written lost and no silent wrong answer.

1. ``report --out`` never replaces a file no report wrote (a run's own pareto.json, config.json, ...).
2. A checkpoint that loads but whose metadata is missing or of the wrong type is one line, for eval and
   export, subnet and supernet checkpoints alike (its metadata is checked once, in ``read_checkpoint``).
3. ``--width-mult`` is finite, > 0 and sized against the memory the supernet needs before anything is
   allocated (train, search, the width study).
4. ``--arch`` with a fine-tuned subnet checkpoint must be that subnet's genome.
5. ``--name`` is one path component: the run folder never lands outside ``<run-root>/<command>/``.
6. ``--threads`` is between 1 and the cores there are (the host's affinity, the phone's core count).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from nasctl.cli import main
from nasctl.errors import NasctlError
from nasctl.nas.runs.search import search
from nasctl.nas.search import SearchConfig
from nasctl.nas.training.supernet import TrainConfig, train_supernet

from .test_android_bench import arm64_binary, model, phones  # noqa: F401 (the fake adb's fixtures)

TINY_SEARCH = dict(pop_size=4, generations=1, val_size=20, pgd_steps=1, calib_batches=1, final_steps=1,
                   final_restarts=1, test_size=20, finetune_members=1, finetune_epochs=1)


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (but run locks) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def error_line(capsys, *needles: str) -> str:
    """The one error line (log lines aside), with each of ``needles`` in it, and no traceback."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("nasctl: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def fails(capsys, args: list[str], *needles: str) -> str:
    assert main(args) == 2
    return error_line(capsys, *needles)


@pytest.fixture(scope="module")
def supernet(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    return train_supernet(TrainConfig(limit_train=64, epochs=1, width_mult=0.5, eval_size=20, eval_steps=1,
                                      attack_steps=1, run_root=str(root)))[0]


@pytest.fixture(scope="module")
def search_run(supernet, tmp_path_factory) -> Path:
    """A finished search whose knee the fine-tune stage trained on its own (a real subnet.pt)."""
    root = tmp_path_factory.mktemp("runs")
    return search(SearchConfig(supernet=str(supernet), run_root=str(root), **TINY_SEARCH)).parent


@pytest.fixture(scope="module")
def subnet(search_run) -> tuple[Path, str]:
    """(a fine-tuned subnet.pt of the search, its genome)."""
    entry = next(e for e in json.loads((search_run / "pareto.json").read_text())["front"]
                 if e.get("finetuned_checkpoint"))
    return search_run / entry["finetuned_checkpoint"], entry["genome"]


def _other_genome(ckpt: Path, genome: str) -> str:
    from nasctl.nas.space import SearchSpace

    space = SearchSpace.from_dict(torch.load(ckpt, weights_only=True)["space"])
    return next(g.encode() for g in (space.largest(), space.smallest()) if g.encode() != genome)


# --- 1. report --out never replaces a file it did not write ---------------------------------------------
@pytest.mark.parametrize("name", ["pareto.json", "config.json", "archive.jsonl", "summary.html",
                                  "summary.md", "layer_stats.csv"])
def test_report_out_refuses_the_runs_own_files(search_run, name, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(search_run, run)
    before = tree(run)
    line = fails(capsys, ["report", str(run), "--out", str(run / name)], f"--out {str(run / name)!r}")
    assert "must name an .html file" in line or "one of the run's own files" in line
    assert tree(run) == before  # nothing replaced, no page written beside it either


def test_report_out_refuses_a_users_file_and_replaces_only_its_own(search_run, tmp_path, capsys):
    mine = tmp_path / "notes.html"
    mine.write_text("<html>my own notes</html>")
    fails(capsys, ["report", str(search_run), "--out", str(mine)], f"--out {str(mine)!r} is a file",
          "no 'nasctl report' wrote", "never replaces a file it did not write")
    assert mine.read_text() == "<html>my own notes</html>"
    page, md = tmp_path / "page.html", tmp_path / "page.md"
    md.write_text("# my notes, not a report\n")
    fails(capsys, ["report", str(search_run), "--out", str(page)], str(md))
    assert md.read_text() == "# my notes, not a report\n" and not page.exists()
    md.unlink()
    for _ in range(2):  # a report replaces the report it wrote
        assert main(["report", str(search_run), "--out", str(page)]) == 0
    assert page.is_file() and md.read_text().startswith("<!-- generator: nasctl report -->")
    fails(capsys, ["report", str(search_run), "--out", str(tmp_path / "page.json")],
          "must name an .html file")
    assert not (tmp_path / "page.json").exists()


def test_report_replaces_a_page_of_an_older_version(search_run, tmp_path):
    """Pages written before the marker existed are still recognised as reports (their opening)."""
    from nasctl.nas.report import HTML_MARKER, MD_MARKER

    page = tmp_path / "old.html"
    assert main(["report", str(search_run), "--out", str(page)]) == 0
    page.write_text(page.read_text().replace(HTML_MARKER, ""))
    md = page.with_suffix(".md")
    md.write_text(md.read_text().replace(MD_MARKER + "\n\n", ""))
    assert main(["report", str(search_run), "--out", str(page)]) == 0
    assert HTML_MARKER in page.read_text()


# --- 2. checkpoint metadata, checked once ------------------------------------------------------------------
DEFECTS = {
    "no-space": lambda c: c.pop("space"),
    "space-without-stages": lambda c: c["space"].pop("stages"),
    "dataset-without-in_channels": lambda c: c["dataset"].pop("in_channels"),
    "eps-abc": lambda c: c.__setitem__("eps", "abc"),
}


def _broken(src: Path, defect: str, dst: Path) -> Path:
    ckpt = torch.load(src, weights_only=True)
    DEFECTS[defect](ckpt)
    torch.save(ckpt, dst)
    return dst


@pytest.mark.parametrize("defect", list(DEFECTS))
@pytest.mark.parametrize("command", ["eval", "export"])
@pytest.mark.parametrize("kind", ["subnet", "supernet"])
def test_checkpoint_with_bad_metadata_is_one_line(kind, command, defect, supernet, subnet, tmp_path, capsys):
    src = subnet[0] if kind == "subnet" else supernet
    bad = _broken(src, defect, tmp_path / "bad.pt")
    args = [command, "--checkpoint", str(bad), "--run-root", str(tmp_path / "runs")]
    if kind == "supernet":
        args += ["--arch", subnet[1]]
    if command == "export":
        args += ["--target", "onnx"]
    line = fails(capsys, args, str(bad), "not written by nasctl, or was edited", "or pick another checkpoint")
    assert {"no-space": "search-space", "space-without-stages": "'stages'",
            "dataset-without-in_channels": "'in_channels' is missing", "eps-abc": "'abc'"}[defect] in line
    assert not (tmp_path / "runs").exists()  # nothing was started


@pytest.mark.parametrize("edit, needle", [
    (lambda c: c.pop("model"), "no model weights"),
    (lambda c: c["dataset"].__setitem__("mean", [0.5, 0.5]), "'mean'"),
    (lambda c: c["dataset"].__setitem__("num_classes", "10"), "'num_classes' is '10'"),
    (lambda c: c.__setitem__("eps", float("nan")), "nan"),
    (lambda c: c.__setitem__("eps", 8), "not an L-inf radius in [0, 1]"),
    (lambda c: c["space"].__setitem__("width_mult", float("inf")), "does not build"),
    (lambda c: c.__setitem__("genome", "ir_k3_e3_c8-bogus"), "genome"),
    (lambda c: c.__setitem__("config", [1, 2]), "'config'"),
])
def test_read_checkpoint_checks_every_field_it_hands_out(edit, needle, subnet, tmp_path):
    from nasctl.nas.supernet.checkpoint import read_checkpoint
    from nasctl.nas.supernet.subnet_ckpt import load_subnet

    ckpt = torch.load(subnet[0], weights_only=True)
    edit(ckpt)
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(NasctlError, match="not written by nasctl") as e:
        read_checkpoint(tmp_path / "bad.pt", formats=("nasctl.subnet.v1",))
    assert needle in str(e.value) and str(tmp_path / "bad.pt") in str(e.value)
    assert load_subnet(subnet[0]).genome == subnet[1]  # the good one still loads


# --- 3. --width-mult: finite, > 0, and sized against memory before anything is allocated ------------------
@pytest.mark.parametrize("args", [
    ["train", "--width-mult", "1000"], ["train", "--width-mult", "inf"], ["train", "--width-mult", "nan"],
    ["train", "--width-mult", "0"], ["search", "--width-mult", "1000"], ["search", "--width-mult", "inf"],
    ["experiment", "width", "--width-mult", "0.5,1000"], ["experiment", "width", "--width-mult", "1,inf"],
])
def test_absurd_width_is_one_line_before_anything(args, tmp_path, capsys):
    fails(capsys, [*args, "--run-root", str(tmp_path)], "--width-mult must be a finite number in (0, 64]")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("args", [["train", "--width-mult", "4"], ["search", "--width-mult", "4"],
                                  ["experiment", "width", "--width-mult", "0.5,4"]])
def test_width_too_wide_for_the_memory_is_refused_with_the_estimate(args, tmp_path, capsys, monkeypatch):
    import nasctl.nas.supernet.checkpoint as ckpt_mod

    monkeypatch.setattr(ckpt_mod, "available_memory_bytes", lambda: 64 * 2**20)  # a 64 MiB machine
    line = fails(capsys, [*args, "--run-root", str(tmp_path)], "--width-mult 4 is too wide for this machine",
                 "64 MiB is available", "choose a smaller --width-mult")
    assert "M parameters" in line and "x4" in line
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("space, dataset", [("digits", "digits"), ("tam", "cifar10")])
def test_supernet_param_estimate_is_the_built_supernets(space, dataset):
    from nasctl.nas.data import dataset_info
    from nasctl.nas.space import load_space
    from nasctl.nas.supernet.checkpoint import build_supernet, supernet_params

    info = dataset_info(dataset)
    for width in (0.5, 1.0):
        sp = load_space(space, width)
        built = sum(p.numel() for p in build_supernet(sp, info.to_dict()).parameters())
        assert supernet_params(sp, info.in_channels, info.num_classes) == built
    # the largest width a space takes is estimated without allocating anything
    assert supernet_params(load_space(space, 64), info.in_channels, info.num_classes) > 10**9


# --- 4. --arch with a fine-tuned subnet checkpoint --------------------------------------------------------
@pytest.mark.parametrize("command", ["eval", "export"])
def test_arch_other_than_the_subnets_genome_is_refused(command, subnet, tmp_path, capsys):
    path, genome = subnet
    other = _other_genome(path, genome)
    args = [command, "--checkpoint", str(path), "--arch", other, "--run-root", str(tmp_path)]
    if command == "export":
        args += ["--target", "onnx"]
    fails(capsys, args, f"--arch {other!r} is not the subnet in checkpoint {str(path)!r}",
          f"holds genome {genome}", "drop --arch", "--checkpoint SUPERNET.pt --arch GENOME")
    assert not any(tmp_path.iterdir())


def test_arch_equal_to_the_subnets_genome_is_fine(subnet, tmp_path, capsys):
    from nasctl.export.source import load_source

    path, genome = subnet
    assert main(["eval", "--checkpoint", str(path), "--arch", genome, "--steps", "1", "--restarts", "1",
                 "--square-queries", "0", "--n-images", "10", "--autoattack", "off",
                 "--run-root", str(tmp_path)]) == 0
    result = json.loads(next(tmp_path.glob("eval/*/eval.json")).read_text())["results"]
    assert [(r["genome"], r["weights"]) for r in result] == [(genome, "fine-tuned")]
    assert load_source(path, genome).genome == genome and load_source(path, None).kind == "subnet"


# --- 5. --name is one path component ----------------------------------------------------------------------
BAD_NAMES = ["../../../x", "a/b", "/abs/path", "..", ".", "a\\b", "nul\x00byte", "   ", "x" * 200]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_every_config_refuses_a_name_that_leaves_its_folder(name, tmp_path):
    from .test_runs import _command_configs

    for cls in _command_configs():
        with pytest.raises(NasctlError, match="--name"):
            cls(run_root=str(tmp_path), name=name)
    from nasctl.runfolder import make_run_dir

    with pytest.raises(NasctlError, match="one path component"):
        make_run_dir(tmp_path, "cmd", name)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["../../../x", "a/b", "/abs/path"])
def test_cli_name_escape_is_one_line_and_makes_nothing(name, search_run, subnet, tmp_path, capsys):
    root = tmp_path / "root" / "deep"
    root.mkdir(parents=True)
    for args in (["train", "--epochs", "1"], ["search", "--supernet", str(search_run / "missing.pt")],
                 ["eval", "--checkpoint", str(subnet[0])], ["finetune", "--run", str(search_run)],
                 ["export", "--checkpoint", str(subnet[0]), "--target", "onnx"],
                 ["experiment", "width"]):
        fails(capsys, [*args, "--name", name, "--run-root", str(root)], f"--name {name!r}",
              "one path component")
    assert [p for p in tmp_path.rglob("*") if p.name not in ("root", "deep")] == []


def test_plain_names_still_name_the_folder(tmp_path):
    from nasctl.runfolder import make_run_dir

    for name in ("digits-w2", "ünïcode name", "a.b"):
        path = make_run_dir(tmp_path, "cmd", name)
        assert path.parent == tmp_path / "cmd" and path.name.endswith(f"-{name}")


# --- 6. --threads within the cores there are ---------------------------------------------------------------
def test_profile_threads_beyond_the_cores_is_one_line(tmp_path, capsys):
    from nasctl.profiling.device import affinity

    cores = len(affinity())
    model_file = tmp_path / "m.onnx"
    model_file.write_bytes(b"not read before the check")
    for threads in (1000, cores + 1):
        fails(capsys, ["profile", str(model_file), "--threads", str(threads), "--store",
                       str(tmp_path / "s.sqlite")],
              f"--threads must be between 1 and {cores} (the cores this process may use", f"got {threads}")
    fails(capsys, ["profile", "--build-lut", "--space", "digits", "--threads", "1000", "--store",
                   str(tmp_path / "s.sqlite")], f"between 1 and {cores}")


def test_check_threads_on_host_and_phones():
    from nasctl.profiling.backends import PHONE_MAX_THREADS, check_threads
    from nasctl.profiling.device import DeviceInfo, affinity

    assert check_threads(1) == 1 and check_threads(len(affinity())) == len(affinity())
    phone = DeviceInfo("R58", "Pixel 7", "gs201", "arm64-v8a", "Android 14", cores=8)
    assert check_threads(8, phone) == 8
    with pytest.raises(NasctlError, match="phone 'R58' has 8 cores"):
        check_threads(9, phone)
    unknown = DeviceInfo("R59", "x", "", "arm64-v8a", "Android 14", cores=0)
    assert check_threads(PHONE_MAX_THREADS, unknown) == PHONE_MAX_THREADS
    with pytest.raises(NasctlError, match="did not say its core count"):
        check_threads(PHONE_MAX_THREADS + 1, unknown)
    with pytest.raises(NasctlError, match="--threads must be between 1"):
        check_threads(0)


def test_bench_threads_beyond_the_phones_cores_pushes_nothing(phones, model, arm64_binary, tmp_path,  # noqa: F811
                                                                capsys):
    phones.add("A", cpu_possible="0-3")  # a 4-core phone
    fails(capsys, ["bench", str(model), "--threads", "5", "--benchmark-binary", str(arm64_binary),
                   "--store", str(tmp_path / "s.sqlite"), "--cooldown", "0"],
          "--threads must be between 1 and 4", "phone 'A' has 4 cores")
    assert not [c for c in phones.calls("A") if c[2] == "push" or "mkdir" in " ".join(c)]
