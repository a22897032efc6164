"""End-to-end export: every block type of the registry through ONNX -> TFLite float32 -> int8 ->
LiteRT, with every number read back from the written files and re-measured here.

One module-scoped fixture trains a few tiny digits subnets (a few seconds each) whose genomes
together use every registered block type (and ``skip``), and exports each once (onnx2tf takes
~10 s a model): the first through the CLI, the others through the library, one of them with a
3-channel input (the case where onnx2tf would try to download sample images: must work offline).
The tests then reopen the artifacts with their runtimes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nasctl.core import atomic_torch_save
from nasctl.export import TARGETS, ExportConfig, export
from nasctl.export.source import load_source
from nasctl.export.targets import missing_modules
from nasctl.nas.data import DatasetInfo, DataSplits, TensorSplit, load_dataset
from nasctl.nas.space import BLOCKS, SKIP, Genome, SearchSpace
from nasctl.nas.supernet import BNCalibration, Supernet, prepare_subnet
from nasctl.nas.supernet.checkpoint import FORMAT

pytestmark = pytest.mark.skipif(
    bool(missing_modules(TARGETS["tflite"].modules)),
    reason="export extra not installed (pip install 'nasctl[export]')",
)

TOKENS = sorted(BLOCKS) + [SKIP]
SEED = 0
# small robustness budget: the numbers only need to exist and be consistent here
ROBUST = {"robust_images": 64, "pgd_steps": 10, "square_queries": 100}


def all_blocks_space() -> SearchSpace:
    """10 layers (5 at 8x8, 5 at 4x4) that may use every registered block type: two genomes cover the
    19 tokens, so the chain runs twice (once grey, once RGB) and not three times."""
    return SearchSpace.from_dict(
        {
            "name": "export-all-blocks",
            "stem_channels": 8,
            "stem_stride": 1,
            "stages": [{"layers": 5, "stride": 1, "widths": [8]}, {"layers": 5, "stride": 2, "widths": [16]}],
            "blocks": TOKENS,
            "head_channels": 32,
        }
    )


def covering_genomes(space: SearchSpace) -> list[Genome]:
    """As few genomes as the layers allow whose union uses every token (new blocks included)."""
    left, genomes = list(TOKENS), []
    while left:
        genes = []
        for lc in space.layers:
            tok = next((t for t in left if t in lc.ops), "dsc_k3")
            if tok in left:
                left.remove(tok)
            genes.append(tok if tok == SKIP else f"{tok}_c{lc.channels[0]}")
        genomes.append(space.parse("-".join(genes)))
    return genomes


def rgb_digits(splits: DataSplits) -> DataSplits:
    """Digits with the grey channel repeated three times: a 3-channel data set that needs no files."""
    info = splits.info
    rgb = DatasetInfo(
        "digits-rgb", 3, info.resolution, info.num_classes, info.mean * 3, info.std * 3, info.default_eps
    )

    def three(s: TensorSplit) -> TensorSplit:
        return TensorSplit(s.images.repeat(1, 3, 1, 1).contiguous(), s.labels, s.source_indices)

    return DataSplits(rgb, three(splits.train), three(splits.val), three(splits.test))


def train_path_checkpoint(
    space: SearchSpace, genome: Genome, splits: DataSplits, path: Path, epochs: int = 15
) -> None:
    """Train one path of a fresh supernet (clean, Adam, a few seconds) and save a real checkpoint."""
    info = splits.info
    torch.manual_seed(SEED)
    net = Supernet(space, info.in_channels, info.num_classes, info.mean, info.std)
    net.set_active(genome)
    net.train()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        for x, y in splits.train.batches(64, shuffle=True, generator=gen):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    atomic_torch_save(
        {
            "format": FORMAT,
            "space": space.to_dict(),
            "dataset": info.to_dict(),
            "config": {"seed": SEED, "dataset": info.name},
            "epoch": epochs,
            "model": net.state_dict(),
        },
        path,
    )


@dataclass
class Exported:
    genome: str
    out: Path
    checkpoint: Path
    splits: DataSplits
    model: torch.nn.Module  # the float reference, rebuilt here the way the pipeline builds it
    via_cli: bool
    stdout: str = ""
    rc: int = 0

    def report(self) -> dict:
        return json.loads((self.out / "report.json").read_text())

    def metadata(self) -> dict:
        return json.loads((self.out / "metadata.json").read_text())

    def torch_logits(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.model(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> list[Exported]:
    from nasctl.cli import main

    root = tmp_path_factory.mktemp("export")
    space = all_blocks_space()
    digits = load_dataset("digits", seed=SEED)
    done = []
    for i, genome in enumerate(covering_genomes(space)):
        splits = digits if i % 2 == 0 else rgb_digits(digits)
        ckpt = root / f"supernet{i}.pt"
        train_path_checkpoint(space, genome, splits, ckpt)
        out = root / f"export{i}"
        if i == 0:  # the CLI, as a user runs it (data set by name from the checkpoint)
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                rc = main(
                    [
                        "export",
                        "--checkpoint",
                        str(ckpt),
                        "--arch",
                        genome.encode(),
                        "--target",
                        "tflite",
                        "--int8",
                        "--out",
                        str(out),
                        "--robust-images",
                        str(ROBUST["robust_images"]),
                        "--pgd-steps",
                        str(ROBUST["pgd_steps"]),
                        "--square-queries",
                        str(ROBUST["square_queries"]),
                    ]
                )
            stdout = buf.getvalue()
        else:
            result = export(
                ExportConfig(
                    checkpoint=str(ckpt),
                    arch=genome.encode(),
                    target="tflite",
                    int8=True,
                    out=str(out),
                    **ROBUST,
                ),
                splits=splits,
            )
            rc, stdout = (0 if result.ok else 1), ""
        model = load_source(ckpt, genome.encode()).model
        prepare_subnet(model, splits.train, BNCalibration(seed=SEED))  # as the export does
        done.append(Exported(genome.encode(), out, ckpt, splits, model.eval(), i == 0, stdout, rc))
    yield done


def _for_token(exports: list[Exported], token: str) -> Exported:
    for e in exports:
        if token in [g.op for g in Genome.decode(e.genome).layers]:
            return e
    raise AssertionError(f"no exported genome uses {token!r}")


def _val(e: Exported, n: int = 200) -> np.ndarray:
    return e.splits.val.subset(n).numpy_images()


def _litert(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    return it


def _run_litert(it, x_nchw: np.ndarray) -> np.ndarray:
    """Run a batch-1 interpreter image by image, quantising with the model's own scale/zero point."""
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    assert list(inp["shape"]) == [1, x_nchw.shape[2], x_nchw.shape[3], x_nchw.shape[1]]  # NHWC
    x = x_nchw.transpose(0, 2, 3, 1)
    res = []
    for i in range(len(x)):
        xi = x[i : i + 1]
        if inp["dtype"] == np.int8:
            s, z = inp["quantization"]
            xi = np.clip(np.floor(xi / s + 0.5) + z, -128, 127).astype(np.int8)  # xi >= 0: half away from 0
        it.set_tensor(inp["index"], xi)
        it.invoke()
        y = it.get_tensor(out["index"]).astype(np.float32)
        if out["dtype"] == np.int8:
            s, z = out["quantization"]
            y = (y - z) * s
        res.append(y)
    return np.concatenate(res)


# --- coverage of the block registry -----------------------------------------------------------------
@pytest.mark.parametrize("token", TOKENS)
def test_every_block_type_survives_the_export_chain(exports, token):
    e = _for_token(exports, token)
    report = e.report()
    assert report["status"] == "ok", report["failed_checks"]
    assert [s["name"] for s in report["steps"]] == list(TARGETS["tflite"].plan(True))
    for name in ("model.onnx", "model_float32.tflite", "model_int8.tflite", "metadata.json", "report.json"):
        assert (e.out / name).is_file(), name
    # each artifact runs in its runtime and agrees with PyTorch on a few images
    import onnxruntime as ort

    x = _val(e, 16)
    ref = e.torch_logits(x)
    sess = ort.InferenceSession(str(e.out / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = np.concatenate([sess.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])
    assert np.abs(onnx_out - ref).max() <= 1e-4
    assert np.abs(_run_litert(_litert(e.out / "model_float32.tflite"), x) - ref).max() <= 1e-4
    int8 = _run_litert(_litert(e.out / "model_int8.tflite"), x)
    assert (int8.argmax(1) == ref.argmax(1)).mean() >= 0.8


def test_fixture_covers_the_registry_and_both_input_kinds(exports):
    used = {g.op for e in exports for g in Genome.decode(e.genome).layers}
    assert set(TOKENS) <= used
    assert {e.splits.info.in_channels for e in exports} == {1, 3}


# --- done-when criteria, re-measured from the files ---------------------------------------------------
@pytest.mark.parametrize("i", [0, 1])
def test_onnx_matches_pytorch_within_1e4(exports, i):
    import onnx
    import onnxruntime as ort

    e = exports[i]
    proto = onnx.load(str(e.out / "model.onnx"))
    onnx.checker.check_model(proto)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}  # folded
    x = _val(e)
    sess = ort.InferenceSession(str(e.out / "model.onnx"), providers=["CPUExecutionProvider"])
    out = np.concatenate([sess.run(None, {"input": x[j : j + 1]})[0] for j in range(len(x))])
    diff = float(np.abs(out - e.torch_logits(x)).max())
    assert diff <= 1e-4
    check = e.report()["checks"]["onnx"]
    assert check["passed"] and check["value"] <= 1e-4
    assert check["value"] == pytest.approx(diff, abs=1e-5)


@pytest.mark.parametrize("i", [0, 1])
def test_float_tflite_matches_onnx_within_1e4(exports, i):
    import onnxruntime as ort

    e = exports[i]
    x = _val(e)
    sess = ort.InferenceSession(str(e.out / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = np.concatenate([sess.run(None, {"input": x[j : j + 1]})[0] for j in range(len(x))])
    tfl = _run_litert(_litert(e.out / "model_float32.tflite"), x)
    assert float(np.abs(tfl - onnx_out).max()) <= 1e-4
    check = e.report()["checks"]["tflite_float32"]
    assert check["passed"] and check["value"] <= 1e-4


@pytest.mark.parametrize("i", [0, 1])
def test_int8_accuracy_within_two_points_of_float(exports, i):
    e = exports[i]
    it = _litert(e.out / "model_int8.tflite")
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    test = e.splits.test
    x, y = test.numpy_images(), test.labels.numpy()
    float_acc = 100 * float((e.torch_logits(x).argmax(1) == y).mean())
    int8_acc = 100 * float((_run_litert(it, x).argmax(1) == y).mean())
    assert float_acc > 80, "the fixture's training should give a usable model"
    assert float_acc - int8_acc <= 2.0
    check = e.report()["checks"]["tflite_int8"]
    assert check["passed"]
    assert check["detail"]["int8_acc"] == pytest.approx(int8_acc, abs=1e-6)
    assert check["detail"]["float_acc"] == pytest.approx(float_acc, abs=1e-6)
    assert check["detail"]["top1_agreement"] >= 90
    # per-channel weights: conv weight tensors carry one scale per output channel
    per_channel = [
        t
        for t in it.get_tensor_details()
        if len(t["quantization_parameters"]["scales"]) > 1 and t["dtype"] == np.int8
    ]
    assert per_channel


def test_metadata_in_json_and_onnx(exports):
    from nasctl.export.onnx import read_metadata

    for e in exports:
        meta = e.metadata()
        assert meta["genome"] == e.genome
        assert meta["checkpoint_sha256"] == hashlib.sha256(e.checkpoint.read_bytes()).hexdigest()
        assert meta["seed"] == SEED
        for pkg in ("nasctl", "torch", "onnx", "onnx2tf", "tensorflow", "ai-edge-litert"):
            assert meta["versions"][pkg], pkg
        c, r = e.splits.info.in_channels, e.splits.info.resolution
        assert meta["io"]["onnx"]["input"]["shape"] == [1, c, r, r]
        assert meta["io"]["onnx"]["input"]["layout"] == "NCHW"
        for art in ("tflite_float32", "tflite_int8"):
            assert meta["io"][art]["input"]["shape"] == [1, r, r, c]
            assert meta["io"][art]["input"]["layout"] == "NHWC"
        it = _litert(e.out / "model_int8.tflite")
        scale, zp = it.get_input_details()[0]["quantization"]
        q = meta["io"]["tflite_int8"]
        assert (q["input"]["scale"], q["input"]["zero_point"]) == (pytest.approx(scale), zp)
        oscale, ozp = it.get_output_details()[0]["quantization"]
        assert (q["output"]["scale"], q["output"]["zero_point"]) == (pytest.approx(oscale), ozp)
        assert read_metadata(e.out / "model.onnx") == meta  # the same dict in the ONNX metadata_props
        # calibration set: size and fingerprint reproducible from the train split and the seed
        cal = meta["calibration"]
        assert cal["size"] == 300 and cal["split"] == "train"
        idx = np.sort(np.random.default_rng(SEED).choice(len(e.splits.train), 300, replace=False))
        nhwc = np.ascontiguousarray(e.splits.train.subset(idx).numpy_images().transpose(0, 2, 3, 1))
        assert cal["sha256"] == hashlib.sha256(nhwc.astype(np.float32).tobytes()).hexdigest()


def test_report_records_deployed_robustness(exports):
    for e in exports:
        rob = e.report()["robustness"]
        assert rob["images"] == ROBUST["robust_images"] and rob["eps"] == pytest.approx(0.1)
        assert set(rob["attacks"]) == {"transfer_pgd", "fakequant_pgd", "square"}
        for a in rob["attacks"].values():
            assert 0 <= a["int8_robust_acc"] <= rob["int8_clean_acc"]
            assert 0 <= a["float_robust_acc"] <= rob["float_clean_acc"]
            assert a["max_linf"] <= 0.1 + 1e-6  # rounded to the uint8 grid inside the eps-ball
        assert rob["attacks"]["transfer_pgd"]["settings"]["steps"] == ROBUST["pgd_steps"]
        assert rob["attacks"]["square"]["settings"]["queries"] == ROBUST["square_queries"]
        assert rob["attacks"]["square"]["max_queries"] <= ROBUST["square_queries"]
        assert rob["int8_robust_acc_min"] == min(a["int8_robust_acc"] for a in rob["attacks"].values())
        assert rob["int8_robust_acc_all_attacks"] <= rob["int8_robust_acc_min"]
        assert rob["twin_top1_agreement_with_int8"] >= 80


def test_report_lists_artifacts_with_sizes_and_times(exports):
    e = exports[0]
    report = e.report()
    for name, art in report["artifacts"].items():
        data = (e.out / name).read_bytes()
        assert art["size_bytes"] == len(data)
        assert art["sha256"] == hashlib.sha256(data).hexdigest()
    assert (
        report["artifacts"]["model_int8.tflite"]["size_bytes"]
        < report["artifacts"]["model_float32.tflite"]["size_bytes"]
    )
    assert all(s["seconds"] > 0 for s in report["steps"])
    log = (e.out / "onnx2tf.log").read_text()
    assert "onnx2tf" in log  # the converter's chatter went to the log, not the terminal


def test_cli_prints_each_step_with_time_size_and_check(exports):
    e = next(x for x in exports if x.via_cli)
    assert e.rc == 0
    lines = [ln for ln in e.stdout.splitlines() if ln.startswith("[")]
    assert [re.match(r"\[(\d)/5\] (\w+)", ln).group(2) for ln in lines] == list(TARGETS["tflite"].plan(True))
    for ln in lines:
        assert re.search(r"\d+\.\d s", ln), ln
    for ln in lines[1:4]:
        assert re.search(r"\.(onnx|tflite) +\d+\.\d KB", ln) and ln.rstrip().endswith("ok"), ln
    assert "XNNPACK" not in e.stdout and "onnx2tf" not in e.stdout.lower().replace("onnx2tf.log", "")
    assert e.stdout.strip().splitlines()[-1].startswith("done in")


def test_same_seed_same_artifacts(exports, tmp_path):
    """Exporting twice gives a byte-identical ONNX graph and an int8 model with the same quantisation
    and the same int8 outputs (seeded recalibration and calibration). The .tflite bytes themselves
    differ: TensorFlow numbers the saved_model's internal names per process."""
    import onnx

    e = exports[1]
    result = export(
        ExportConfig(
            checkpoint=str(e.checkpoint),
            arch=e.genome,
            int8=True,
            out=str(tmp_path / "again"),
            robust_images=0,
        ),
        splits=e.splits,
    )
    assert result.ok
    a, b = onnx.load(str(e.out / "model.onnx")), onnx.load(str(tmp_path / "again" / "model.onnx"))
    assert a.graph.SerializeToString() == b.graph.SerializeToString()
    first, second = _litert(e.out / "model_int8.tflite"), _litert(tmp_path / "again" / "model_int8.tflite")
    for get in ("get_input_details", "get_output_details"):
        assert getattr(first, get)()[0]["quantization"] == getattr(second, get)()[0]["quantization"]
    x = e.splits.test.subset(100).numpy_images()
    np.testing.assert_array_equal(_run_litert(first, x), _run_litert(second, x))
    assert dataclasses.asdict(result.steps[0])["info"]["bn_folded"] > 0


@pytest.mark.slow
def test_bench_export_script(exports, tmp_path, capsys, load_bench):
    """bench/bench_export.py end to end on the fixture's checkpoint (three more onnx2tf runs)."""
    bench = load_bench("bench_export")
    out = tmp_path / "bench"
    assert (
        bench.main(
            [
                "--checkpoint",
                str(exports[0].checkpoint),
                "--out",
                str(out),
                "--robust-images",
                "16",
                "--pgd-steps",
                "2",
                "--square-queries",
                "20",
                "--latency-runs",
                "10",
                "--warmup-runs",
                "2",
            ]
        )
        == 0
    )
    doc = json.loads((out / "results.json").read_text())
    assert len(doc["models"]) == 3
    params = [m["params"] for m in doc["models"]]
    assert params[0] < params[1] < params[2]
    for m in doc["models"]:
        assert set(m["latency"]) == {"onnxruntime", "litert_float32", "litert_int8"}
        assert all(v["p50_ms"] > 0 for v in m["latency"].values())
        assert m["report"]["robustness"]["attacks"].keys() == {"transfer_pgd", "fakequant_pgd", "square"}
    table = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("|")]
    assert len(table) == 2 + 3
