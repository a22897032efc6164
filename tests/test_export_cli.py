"""``nasctl export`` on the command line: the ONNX target end to end from a search run, and every
kind of bad input -> one clear line, non-zero exit, earlier artifacts kept. Only the last test runs
a real converter (a model with an op onnx2tf cannot convert)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nasctl.cli import main
from nasctl.core import atomic_torch_save
from nasctl.export import TARGETS, ConversionError
from nasctl.export.pipeline import FLOAT_FILE, INT8_FILE, STEPS, StepRecord
from nasctl.export.targets import missing_modules
from nasctl.export.verify import Check
from nasctl.nas.data import load_dataset
from nasctl.nas.space import SearchSpace, load_space
from nasctl.nas.supernet import Supernet
from nasctl.nas.supernet.checkpoint import FORMAT

GENOMES = [
    "dsc_k3_c8-skip-ghost_c16-skip-shuffle_c24-skip",
    "ir_k3_e3_c12-skip-ghost_c16-skip-shuffle_c24-skip",
    "ir_k3_e6_c16-ghost_c16-ghost_c32-ir_k5_e3_c32-shuffle_c48-dsc_k3_c48",
]



@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An (untrained) digits supernet checkpoint in the format 'nasctl train' writes."""
    # the 6-layer digits-ir layout with every block family (the built-in spaces offer fewer)
    space = SearchSpace.from_dict({**load_space("digits-ir").to_dict(), "name": "digits-mixed",
                                   "blocks": ["ir_k3_e3", "ir_k3_e6", "ir_k5_e3", "dsc_k3", "ghost",
                                              "shuffle", "skip"]})
    info = load_dataset("digits").info
    torch.manual_seed(0)
    net = Supernet(space, info.in_channels, info.num_classes, info.mean, info.std)
    path = tmp_path_factory.mktemp("ckpt") / "supernet.pt"
    atomic_torch_save(
        {
            "format": FORMAT,
            "space": space.to_dict(),
            "dataset": info.to_dict(),
            "config": {"seed": 0},
            "epoch": 1,
            "model": net.state_dict(),
        },
        path,
    )
    return path


@pytest.fixture
def run_dir(tmp_path, checkpoint) -> Path:
    run = tmp_path / "runs" / "search" / "20250101-000000-digits"
    run.mkdir(parents=True)
    front = [
        {"genome": g, "clean_acc": 90.0 + i, "adv_acc": 60.0 - i, "params": 1000 * (i + 1), "rank": 0}
        for i, g in enumerate(GENOMES)
    ]
    (run / "pareto.json").write_text(
        json.dumps(
            {
                "objectives": ["clean_err", "adv_err", "params"],
                "knee": 1,
                "supernet": str(checkpoint),
                "dataset": "digits",
                "data_dir": None,
                "seed": 0,
                "front": front,
            }
        )
    )
    return run


def cli(*args: str) -> int:
    return main(["export", *args])


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("nasctl: error: ")
    return lines[0]


# --- the ONNX target end to end ---------------------------------------------------------------------
def test_onnx_target_from_a_run(run_dir, tmp_path, capsys):
    import onnx
    import onnxruntime as ort

    from nasctl.export.onnx import read_metadata

    out = tmp_path / "out"
    assert cli("--run", str(run_dir), "--pick", "2", "--target", "onnx", "--out", str(out)) == 0
    stdout = capsys.readouterr().out
    assert "[1/2] prepare" in stdout and "[2/2] onnx" in stdout and "model.onnx" in stdout and " ok" in stdout
    assert sorted(p.name for p in out.iterdir()) == [
        ".lock",  # held while an export writes the folder (kept: deleting a lock file races)
        "config.json",
        "labels.txt",
        "metadata.json",
        "model.onnx",
        "report.json",
    ]
    assert (out / "labels.txt").read_text().splitlines() == [str(i) for i in range(10)]  # digits' class names
    report = json.loads((out / "report.json").read_text())
    assert (
        report["status"] == "ok" and report["plan"] == ["prepare", "onnx"] and report["genome"] == GENOMES[2]
    )
    assert report["checks"]["onnx"]["value"] <= 1e-4
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["source"]["front_index"] == 2 and meta["source"]["run"] == str(run_dir)
    assert meta["source"]["front_entry"]["params"] == 3000 and not meta["source"]["knee"]
    assert read_metadata(out / "model.onnx")["genome"] == GENOMES[2]
    props = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert props["genome"] == GENOMES[2] and props["checkpoint_sha256"] == meta["checkpoint_sha256"]
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": np.zeros((1, 1, 8, 8), np.float32)})[0].shape == (1, 10)


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (but run locks) with its bytes: for byte-for-byte 'untouched' checks."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def test_exporting_again_into_a_folder_replaces_the_old_export(run_dir, tmp_path):
    out = tmp_path / "out"
    assert cli("--run", str(run_dir), "--target", "onnx", "--out", str(out), "--threads", "1") == 0
    # as if that earlier export had also written an int8 model: it recorded it as its own
    (out / "model_int8.tflite").write_bytes(b"old")
    report = json.loads((out / "report.json").read_text())
    assert "model.onnx" in report["files"] and "config.json" in report["files"]
    report["files"].append("model_int8.tflite")
    (out / "report.json").write_text(json.dumps(report))
    (out / "notes.txt").write_text("mine")
    assert cli("--run", str(run_dir), "--target", "onnx", "--out", str(out), "--threads", "1") == 0
    assert not (out / "model_int8.tflite").exists()  # a stale int8 file must not pass for this export's
    assert (out / "notes.txt").read_text() == "mine"
    assert "model_int8.tflite" not in json.loads((out / "report.json").read_text())["artifacts"]


@pytest.mark.parametrize("own_files", [{"model.onnx": b"my model"}, {"config.json": b'{"mine": 1}'},
                                       {"model_int8.tflite": b"tfl3", "metadata.json": b"{}"}])
def test_export_never_overwrites_files_it_did_not_write(run_dir, tmp_path, capsys, own_files):
    out = tmp_path / "mine"
    out.mkdir()
    for name, data in {**own_files, "notes.txt": b"keep"}.items():
        (out / name).write_bytes(data)
    before = _tree(out)
    assert cli("--run", str(run_dir), "--target", "onnx", "--out", str(out), "--threads", "1") == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(out) in line and ("did not write" in line or "no export wrote" in line)
    assert _tree(out) == before


def test_export_into_a_search_run_is_refused_and_the_run_still_resumes(tmp_path, capsys):
    """The reported repro: 'nasctl export --run r --out r' replaced the search's config.json."""
    from nasctl.nas.runs.search import resume_search, search
    from nasctl.nas.search import SearchConfig
    from nasctl.nas.training.supernet import TrainConfig, train_supernet

    ckpt = train_supernet(TrainConfig(limit_train=128, epochs=1, eval_size=20, eval_steps=1, attack_steps=1,
                                      run_root=str(tmp_path / "t")))[0]
    run = search(SearchConfig(supernet=str(ckpt), run_root=str(tmp_path), pop_size=4, generations=1,
                              val_size=20, pgd_steps=1, calib_batches=1, final_steps=1,
                              final_restarts=1, finetune_members=0)).parent
    before = _tree(run)
    assert cli("--run", str(run), "--target", "onnx", "--out", str(run), "--threads", "1") == 2
    line = one_error_line(capsys.readouterr().err)
    assert "'search' run" in line
    assert _tree(run) == before
    assert json.loads(resume_search(run).read_text())["front"]  # --resume still accepts the run


def test_default_is_the_knee_of_the_newest_run(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(run_dir.parents[2])  # runs/ lives here
    assert cli("--target", "onnx") == 0
    exports = list((run_dir.parents[2] / "runs" / "export").iterdir())
    assert len(exports) == 1 and exports[0].name.endswith(GENOMES[1][:80])
    meta = json.loads((exports[0] / "metadata.json").read_text())
    assert meta["genome"] == GENOMES[1] and meta["source"]["knee"]
    assert (exports[0] / "config.json").is_file()  # the run folder describes itself
    assert "(knee)" in capsys.readouterr().out


# --- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, expected",
    [
        (["--target", "tflight"], "unknown export target 'tflight'; did you mean 'tflite'?"),
        (["--target", "onnx", "--int8"], "--int8 is not supported for --target onnx: use --target tflite"),
        (["--arch", GENOMES[0]], "--arch needs --checkpoint"),
        (["--pick", "7"], "--pick 7 is outside the front"),
        (["--pick", "knee", "--calib-size", "0"], "--calib-size must be >= 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(run_dir, tmp_path, capsys, args, expected):
    rc = (
        cli("--run", str(run_dir), "--out", str(tmp_path / "o"), *args)
        if "--arch" not in args
        else cli("--out", str(tmp_path / "o"), *args)
    )
    assert rc == 2
    assert expected in one_error_line(capsys.readouterr().err)


def test_run_without_a_front(tmp_path, capsys):
    run = tmp_path / "runs" / "search" / "x"
    run.mkdir(parents=True)
    assert cli("--run", str(run), "--target", "onnx") == 2
    assert "has no pareto.json" in one_error_line(capsys.readouterr().err)
    (run / "pareto.json").write_text(json.dumps({"knee": 0, "front": [], "supernet": "x.pt"}))
    assert cli("--run", str(run), "--target", "onnx") == 2
    assert "empty front" in one_error_line(capsys.readouterr().err)


def test_genome_outside_the_checkpoints_space(checkpoint, tmp_path, capsys):
    # ir_k7_e6 exists in the registry but not in the digits space; 7 layers instead of 6 as well
    bad = "ir_k7_e6_c8-skip-ghost_c16-skip-shuffle_c24-skip"
    assert (
        cli("--checkpoint", str(checkpoint), "--arch", bad, "--target", "onnx", "--out", str(tmp_path / "o"))
        == 2
    )
    line = one_error_line(capsys.readouterr().err)
    assert "is not a subnet of checkpoint" in line and "ir_k7_e6" in line and "allowed" in line
    assert cli("--checkpoint", str(checkpoint), "--arch", GENOMES[0] + "-skip", "--target", "onnx") == 2
    assert "7 layers" in one_error_line(capsys.readouterr().err)


def test_missing_export_extra(checkpoint, tmp_path, capsys, monkeypatch):
    import dataclasses

    t = TARGETS["tflite"]
    monkeypatch.setitem(TARGETS, "tflite", dataclasses.replace(t, modules=("onnx", "nasctl_no_onnx2tf_here")))
    assert cli("--checkpoint", str(checkpoint), "--arch", GENOMES[0], "--out", str(tmp_path / "o")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "nasctl_no_onnx2tf_here" in line and "pip install 'nasctl[export]'" in line
    assert not (tmp_path / "o").exists()  # nothing started


# --- failures after some files exist ----------------------------------------------------------------------
def _fake_float32(ctx):
    (ctx.out_dir / FLOAT_FILE).write_bytes(b"float")
    return StepRecord("tflite_float32", 0.0, "ok", "fake", FLOAT_FILE, 5)


def test_converter_failure_keeps_earlier_artifacts(checkpoint, tmp_path, capsys, monkeypatch):
    def failing(ctx):
        raise ConversionError(
            "onnx2tf conversion failed at ONNX node 'n' (LpPool): onnx2tf has no converter for "
            f"the ONNX op LpPool (full converter output: {ctx.out_dir}/onnx2tf.log)",
            op="n",
        )

    monkeypatch.setitem(STEPS, "tflite_float32", failing)
    out = tmp_path / "o"
    assert cli("--checkpoint", str(checkpoint), "--arch", GENOMES[0], "--int8", "--out", str(out)) == 2
    captured = capsys.readouterr()
    assert "LpPool" in one_error_line(captured.err) and "FAILED" in captured.out
    assert (out / "model.onnx").is_file() and not (out / FLOAT_FILE).exists()
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and "LpPool" in report["error"]
    assert [(s["name"], s["status"]) for s in report["steps"]] == [
        ("prepare", "ok"),
        ("onnx", "ok"),
        ("tflite_float32", "failed"),
    ]
    assert report["checks"]["onnx"]["passed"] and "model.onnx" in report["artifacts"]


def test_accuracy_gate_writes_files_then_exits_1(checkpoint, tmp_path, capsys, monkeypatch):
    def int8_too_lossy(ctx):
        (ctx.out_dir / INT8_FILE).write_bytes(b"int8")
        check = Check(
            "tflite_int8",
            "int8_acc_drop",
            3.5,
            ctx.cfg.max_int8_drop,
            False,
            {"float_acc": 97.0, "int8_acc": 93.5, "top1_agreement": 95.0},
        )
        ctx.checks["tflite_int8"] = check
        return StepRecord("tflite_int8", 0.0, "check_failed", check.summary(), INT8_FILE, 4, check.to_dict())

    monkeypatch.setitem(STEPS, "tflite_float32", _fake_float32)
    monkeypatch.setitem(STEPS, "tflite_int8", int8_too_lossy)
    monkeypatch.setitem(STEPS, "robustness", lambda ctx: StepRecord("robustness", 0.0, "ok", "fake"))
    out = tmp_path / "o"
    assert cli("--checkpoint", str(checkpoint), "--arch", GENOMES[0], "--int8", "--out", str(out)) == 1
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    assert "int8 clean accuracy dropped 3.5 points (> --max-int8-drop 2)" in line and str(out) in line
    assert "(drop 3.5 > 2)" in captured.out and "FAILED" in captured.out
    for name in ("model.onnx", FLOAT_FILE, INT8_FILE, "metadata.json", "report.json"):
        assert (out / name).is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "checks_failed" and report["failed_checks"] == ["tflite_int8"]


def test_help_imports_no_heavy_packages():
    code = (
        "import sys; from nasctl.cli import main\n"
        "try:\n    main(['export', '--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'tensorflow', 'onnx', 'onnx2tf') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert "--max-int8-drop" in out and "HEAVY []" in out


# --- a real converter failure ---------------------------------------------------------------------
@pytest.mark.skipif(bool(missing_modules(TARGETS["tflite"].modules)), reason="export extra not installed")
def test_onnx2tf_failure_names_the_op_and_the_log(tmp_path):
    """LpPool has no onnx2tf converter: one short line with the op, the node and the log file."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from nasctl.export.tflite import TFLiteConversion

    w = numpy_helper.from_array(np.random.default_rng(0).random((4, 1, 3, 3), dtype=np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1], name="conv0"),
            helper.make_node(
                "LpPool", ["c"], ["logits"], kernel_shape=[2, 2], strides=[2, 2], p=2, name="pool0"
            ),
        ],
        "lp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 4, 4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "model.onnx")
    log = tmp_path / "onnx2tf.log"
    with pytest.raises(ConversionError) as info, TFLiteConversion(tmp_path / "model.onnx", log) as conv:
        conv.float32(tmp_path / FLOAT_FILE)
    msg = str(info.value)
    assert "LpPool" in msg and "'pool0'" in msg and str(log) in msg
    assert "\n" not in msg and len(msg) < 400
    assert info.value.op and info.value.log_path == str(log)
    assert "LpPool" in log.read_text()  # the converter's own output went to the log
    assert (tmp_path / "model.onnx").is_file() and not (tmp_path / FLOAT_FILE).exists()
    assert not list(tmp_path.glob(".tflite-scratch-*"))  # scratch removed


def test_export_killed_after_a_file_before_its_report_can_be_run_again(run_dir, tmp_path):
    """SIGKILL after model.onnx was written, before the export finished: its files are in the staging
    folder, the output folder has nothing of it, and the same export into the same folder works."""
    import contextlib

    from nasctl.export import pipeline

    out = tmp_path / "out"
    cfg = pipeline.ExportConfig(run=str(run_dir), target="onnx", out=str(out), threads=1)
    with contextlib.ExitStack() as held:  # closing it drops the lock, as the kill would
        ctx = pipeline.setup_export(cfg, None, held)
        pipeline.write_export_report(ctx)  # the state an export leaves right before its first step
        (ctx.out_dir / "model.onnx").write_bytes(b"the killed export's half-verified model")
    assert ctx.out_dir.parent == out and not (out / "model.onnx").exists()
    assert cli("--run", str(run_dir), "--target", "onnx", "--out", str(out), "--threads", "1") == 0
    assert (out / "model.onnx").read_bytes() != b"the killed export's half-verified model"
    assert not (out / pipeline.STAGING).exists()
