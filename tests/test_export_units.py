"""Unit tests of the export building blocks that need no converter: targets, run picking, BatchNorm
folding (over the whole block registry), calibration sets, the uint8 grid, Square, fake quantisation."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from nasctl.export import TARGETS, ExportError, get_target
from nasctl.export.fakequant import (
    FakeQuantTwin,
    activation_qparams,
    fake_quant,
    make_fake_quant_twin,
    quantize_weight_per_channel,
)
from nasctl.export.prepare import calibration_set, fold_batchnorm
from nasctl.export.robustness import to_uint8_grid
from nasctl.export.source import latest_run, pick_from_run
from nasctl.export.targets import EXTRA_HINT, require_installed
from nasctl.nas.attacks.square import Square, margin_loss, p_schedule
from nasctl.nas.data import TensorSplit, load_dataset
from nasctl.nas.runs.select import SelectionError
from nasctl.nas.space import BLOCKS, GenomeError, SearchSpace, load_space
from nasctl.nas.supernet import BNCalibration, Supernet, prepare_subnet


# --- targets --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_target_plans_prepare_then_onnx(name):
    t = TARGETS[name]
    assert t.plan(False)[:2] == ("prepare", "onnx")
    assert "model.onnx" in t.artifacts
    from nasctl.export.pipeline import STEPS

    assert set(t.plan(True)) <= set(STEPS)
    assert t.supports_int8 == bool(t.int8_artifacts)


def test_unknown_target_names_the_known_ones():
    with pytest.raises(
        ExportError, match=r"unknown export target 'tflight'; did you mean 'tflite'\? .*onnx, tflite"
    ):
        get_target("tflight")


def test_missing_export_extra_says_what_to_install(monkeypatch):
    t = TARGETS["tflite"]
    monkeypatch.setitem(
        TARGETS, "tflite", dataclasses.replace(t, modules=t.modules + ("nasctl_no_such_module",))
    )
    with pytest.raises(ExportError) as info:
        require_installed(TARGETS["tflite"])
    msg = str(info.value)
    assert "nasctl_no_such_module" in msg and EXTRA_HINT in msg and "\n" not in msg


def test_missing_onnx2tf_at_import_time_says_what_to_install(monkeypatch):
    from nasctl.export.tflite import import_converters

    monkeypatch.setitem(sys.modules, "onnx2tf", None)
    monkeypatch.setitem(sys.modules, "onnx2tf.onnx2tf", None)
    with pytest.raises(ExportError, match=r"pip install 'nasctl\[export\]'"):
        import_converters()


# --- picking from a search run --------------------------------------------------------------------
FRONT = [
    "dsc_k3_c8-skip-ghost_c16-skip-shuffle_c24-skip",
    "ir_k3_e3_c12-skip-ghost_c16-skip-shuffle_c24-skip",
    "ir_k3_e6_c16-ghost_c16-ghost_c32-ir_k5_e3_c32-shuffle_c48-dsc_k3_c48",
]


def write_run(path, front=FRONT, knee=1, supernet="supernet.pt"):
    path.mkdir(parents=True)
    (path / "supernet.pt").write_bytes(b"x")
    doc = {
        "objectives": ["clean_err", "adv_err", "params"],
        "knee": knee,
        "supernet": supernet,
        "dataset": "digits",
        "data_dir": None,
        "seed": 3,
        "front": [
            {"genome": g, "clean_acc": 90.0, "adv_acc": 60.0, "params": 1000 * (i + 1), "rank": 0}
            for i, g in enumerate(front)
        ],
    }
    (path / "pareto.json").write_text(json.dumps(doc))
    return path


def test_pick_knee_index_and_genome(tmp_path):
    run = write_run(tmp_path / "search" / "20250101-000000-a")
    knee = pick_from_run(run)
    assert (knee.index, knee.genome, knee.is_knee, knee.seed) == (1, FRONT[1], True, 3)
    assert knee.checkpoint == str(run / "supernet.pt")  # relative to the run folder
    assert pick_from_run(run, "2").genome == FRONT[2] and not pick_from_run(run, 2).is_knee
    assert pick_from_run(run / "pareto.json", FRONT[0]).index == 0
    assert pick_from_run(run, " " + FRONT[2] + " ").index == 2


@pytest.mark.parametrize(
    "pick, match",
    [
        ("3", r"--pick 3 is outside the front .* 3 members"),
        ("-1", r"--pick -1 is outside the front .* pick 0\.\.2"),  # what the message says is what works
        ("ir_k3_e3_c8-skip-ghost_c16-skip-shuffle_c24-skip", r"is not on the front"),
    ],
)
def test_bad_picks(tmp_path, pick, match):
    run = write_run(tmp_path / "r")
    with pytest.raises(SelectionError, match=match):
        pick_from_run(run, pick)


def test_malformed_genome_pick_is_a_genome_error(tmp_path):
    with pytest.raises(GenomeError):
        pick_from_run(write_run(tmp_path / "r"), "ir_k3_e3-oops")


def test_runs_without_a_front(tmp_path):
    with pytest.raises(SelectionError, match="does not exist"):
        pick_from_run(tmp_path / "nope")
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(SelectionError, match="has no pareto.json"):
        pick_from_run(tmp_path / "unfinished")
    with pytest.raises(SelectionError, match="empty front"):
        pick_from_run(write_run(tmp_path / "empty", front=[]))
    with pytest.raises(SelectionError, match="no valid knee"):
        pick_from_run(write_run(tmp_path / "kneeless", knee=None))
    with pytest.raises(SelectionError, match="does not exist .*--checkpoint"):
        pick_from_run(write_run(tmp_path / "moved", supernet="/nowhere/supernet.pt"))


def test_latest_run(tmp_path):
    with pytest.raises(SelectionError, match="no finished search run"):
        latest_run(tmp_path)
    write_run(tmp_path / "search" / "20250101-000000-a")
    write_run(tmp_path / "search" / "20250102-000000-b")
    (tmp_path / "search" / "20250103-000000-unfinished").mkdir()
    assert latest_run(tmp_path).name == "20250102-000000-b"


# --- model preparation ----------------------------------------------------------------------------
def one_block_space(token: str) -> SearchSpace:
    return SearchSpace.from_dict(
        {
            "name": f"one-{token}",
            "stem_channels": 8,
            "stem_stride": 1,
            "stages": [{"layers": 1, "stride": 1, "widths": [8]}, {"layers": 1, "stride": 2, "widths": [12]}],
            "blocks": [token, "dsc_k3"],
            "head_channels": 16,
        }
    )


@pytest.mark.parametrize("token", sorted(BLOCKS))
def test_fold_batchnorm_is_exact_for_every_block_type(token):
    space = one_block_space(token)
    torch.manual_seed(0)
    net = Supernet(space, 1, 10, [0.3], [0.4])
    model = net.extract(space.parse(f"{token}_c8-{token}_c12"))
    x = torch.rand(64, 1, 8, 8)
    prepare_subnet(model, TensorSplit(x, torch.zeros(64, dtype=torch.int64)), BNCalibration(2, 32, seed=0))
    for m in model.modules():  # non-trivial affine parameters, so folding really has work to do
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    folded, folds = fold_batchnorm(model, x[:1])
    assert folds == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        assert torch.allclose(model(x), folded(x), atol=1e-5)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched


def test_calibration_set_is_seeded_and_fingerprinted():
    train = load_dataset("digits").train
    a, b, c = calibration_set(train, 300, 0), calibration_set(train, 300, 0), calibration_set(train, 300, 1)
    assert a.images.shape == (300, 1, 8, 8) and a.images.dtype == np.float32
    assert a.sha256 == b.sha256 != c.sha256
    assert (
        a.sha256 == hashlib.sha256(np.ascontiguousarray(a.images.transpose(0, 2, 3, 1)).tobytes()).hexdigest()
    )
    assert len(np.unique(a.indices)) == 300
    assert calibration_set(train, 10_000, 0).images.shape[0] == len(train)


# --- uint8 grid and Square ------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [0.1, 8 / 255, 0.001])
def test_uint8_grid_rounding_stays_in_the_ball(eps):
    rng = np.random.default_rng(0)
    x = rng.random((50, 3, 4, 4)).astype(np.float32)
    x[:, :, 0] = 0.0
    x[:, :, 1] = 1.0
    x_adv = np.clip(x + rng.uniform(-2 * eps, 2 * eps, x.shape), 0, 1).astype(np.float32)
    q = to_uint8_grid(x_adv, x, eps)
    assert np.allclose(q * 255, np.round(q * 255), atol=1e-4)  # on the grid
    assert q.min() >= 0 and q.max() <= 1
    if eps >= 1 / 255:
        assert np.abs(q - x).max() <= eps + 1e-6
        # nearest allowed grid value: brute force over all 256 levels
        levels = np.arange(256) / 255.0
        j = (0, 1, 2, 3)
        allowed = levels[np.abs(levels - x[j]) <= eps + 1e-6]
        assert q[j] == pytest.approx(allowed[np.argmin(np.abs(allowed - x_adv[j]))], abs=1e-6)
    else:  # no grid value within eps of an off-grid pixel: the grid value nearest to x
        assert np.abs(q - x).max() <= 0.5 / 255 + 1e-6


def linear_model(seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(10, 64)).astype(np.float32)
    calls = {"n": 0}

    def predict(x):
        calls["n"] += len(x)
        return x.reshape(len(x), -1) @ w.T

    return predict, calls


def test_square_attack_fools_a_linear_model_within_budget():
    predict, calls = linear_model()
    rng = np.random.default_rng(1)
    x = rng.random((40, 1, 8, 8)).astype(np.float32)
    y = predict(x).argmax(1)
    y[:5] = (y[:5] + 1) % 10  # 5 images start misclassified: they must come back unchanged
    calls["n"] = 0
    attack = Square(eps=0.1, queries=200, seed=0)
    x_adv, queries = attack.run(predict, x, y)
    assert np.abs(x_adv - x).max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert queries.max() <= 200 and calls["n"] == queries.sum()
    np.testing.assert_array_equal(x_adv[:5], x[:5])
    assert (queries[:5] == 1).all()
    fooled = margin_loss(predict(x_adv), y)[5:] < 0
    assert fooled.mean() > 0.5
    x_again, _ = Square(eps=0.1, queries=200, seed=0).run(predict, x, y)
    np.testing.assert_array_equal(x_adv, x_again)  # seeded


def test_square_attack_uses_the_projection():
    predict, _ = linear_model()
    x = np.random.default_rng(2).random((10, 1, 8, 8)).astype(np.float32)
    y = predict(x).argmax(1)
    x_adv, _ = Square(eps=0.1, queries=50).run(
        predict, x, y, project=lambda c, x0: to_uint8_grid(c, x0, 0.1)
    )
    changed = np.any(x_adv != x, axis=(1, 2, 3))
    assert np.allclose(x_adv[changed] * 255, np.round(x_adv[changed] * 255), atol=1e-4)


def test_p_schedule_halves_and_never_grows():
    ps = [p_schedule(0.05, i, 1000) for i in range(1000)]
    assert ps[0] == 0.05 and all(a >= b for a, b in itertools.pairwise(ps)) and ps[-1] < 0.05 / 100


# --- fake quantisation ----------------------------------------------------------------------------
def test_fake_quant_is_straight_through():
    x = torch.linspace(-1, 1, 101, requires_grad=True)
    y = fake_quant(x, 2 / 255, 0)
    y.sum().backward()
    assert torch.all(x.grad == 1)
    scale = 2 / 255
    expected = torch.clamp(torch.round(x.detach() / scale), -128, 127) * scale  # 1.0 saturates at 127
    assert float(y[-1].detach()) == pytest.approx(127 * scale)
    assert torch.allclose(y, expected, atol=1e-6)
    assert activation_qparams(0.0, 1.0) == (pytest.approx(1 / 255), -128)  # [0, 1] pixels, as TFLite
    assert activation_qparams(-1.0, 1.0)[1] in (-1, 0)  # symmetric range: zero point in the middle
    assert activation_qparams(0.5, 2.0)[1] == -128  # the range always includes 0


def test_per_channel_weight_quantisation():
    w = torch.randn(6, 4, 3, 3) * torch.arange(1, 7).view(6, 1, 1, 1)
    q = quantize_weight_per_channel(w)
    scale = w.abs().amax(dim=(1, 2, 3), keepdim=True) / 127
    assert torch.all((q - w).abs() <= scale / 2 + 1e-7)
    assert all(len(torch.unique(torch.round(q[i] / scale[i]))) <= 255 for i in range(6))


def test_twin_tracks_the_float_model_and_has_gradients():
    space = SearchSpace.from_dict({**load_space("digits-ir").to_dict(), "name": "digits-mixed",
                                   "blocks": ["ir_k3_e3", "ir_k3_e6", "ir_k5_e3", "dsc_k3", "ghost",
                                              "shuffle", "skip"]})
    torch.manual_seed(0)
    net = Supernet(space, 1, 10, [0.3], [0.4])
    model = net.extract(space.parse("shuffle_c12-ghost_c8-ghost_c24-shuffle_c16-ir_k5_e3_c32-dsc_k3_c48"))
    data = load_dataset("digits")
    prepare_subnet(model, data.train, BNCalibration(seed=0))
    folded, _ = fold_batchnorm(model, torch.zeros(1, 1, 8, 8))
    twin = make_fake_quant_twin(folded, data.train.subset(200).numpy_images())
    assert isinstance(twin, FakeQuantTwin) and all(not o.observing for o in twin.observers)
    x = data.val.subset(64).numpy_images()
    xt = torch.from_numpy(x)
    with torch.no_grad():
        ref, tw = model(xt), twin(xt)
    assert (ref.argmax(1) == tw.argmax(1)).float().mean() >= 0.8
    assert (ref - tw).abs().max() < 0.25 * ref.abs().max()
    xg = xt.clone().requires_grad_(True)
    twin(xg).logsumexp(1).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in twin.parameters())


def test_training_after_tensorflow_does_not_crash():
    """Loading the converters (TensorFlow) and then creating a torch optimiser in one process
    segfaulted before the converters started loading torch._dynamo first."""
    code = ("from nasctl.export.tflite import import_converters; import_converters(); import torch; "
            "torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1); print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
