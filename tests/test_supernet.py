"""Supernet: extracted subnets equal the active path, own their weights, and BN recalibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nasctl.nas.space import load_space
from nasctl.nas.supernet import Supernet, recalibrate_bn

SPACES = {"digits": (1, 8), "tam": (3, 32)}


def _warm_bn(net: Supernet, cin: int, res: int, rng) -> None:
    """Give the shared BN statistics non-trivial values through a few training-mode passes."""
    net.train()
    with torch.no_grad():
        for _ in range(4):
            net.set_active(net.sample(rng))
            net(torch.rand(16, cin, res, res))
    net.eval()


@pytest.mark.parametrize("name", sorted(SPACES))
def test_extracted_subnet_equals_active_path(name):
    torch.manual_seed(0)
    cin, res = SPACES[name]
    space = load_space(name)
    net = Supernet(space, cin, 10, [0.4] * cin, [0.3] * cin)
    rng = np.random.default_rng(0)
    _warm_bn(net, cin, res, rng)
    x = torch.rand(4, cin, res, res)
    for g in [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(10)]:
        sub = net.extract(g).eval()
        net.set_active(g)
        with torch.no_grad():
            diff = (sub(x) - net(x)).abs().max().item()
        assert diff <= 1e-5, (g, diff)
        assert sub.genome == g.encode()


def test_extracted_subnet_owns_its_weights():
    space = load_space("digits")
    net = Supernet(space, 1, 10, [0.3], [0.4]).eval()
    g = space.largest()
    sub = net.extract(g)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in sub.parameters():
            p.add_(1.0)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any(type(m).__name__.startswith("Slim") for m in sub.modules())


def test_bn_recalibration_matches_data_statistics():
    torch.manual_seed(0)
    space = load_space("digits")
    net = Supernet(space, 1, 10, [0.3], [0.4])
    g = space.sample(np.random.default_rng(3))
    sub = net.extract(g)
    batches = [torch.rand(32, 1, 8, 8) for _ in range(3)]
    seen = recalibrate_bn(sub, batches)
    assert seen == 96 and not sub.training
    # the stem BN sees the stem conv output of the normalised input: its statistics must equal
    # the mean and (unbiased, per-batch averaged) variance of exactly those activations
    with torch.no_grad():
        acts = [sub.stem.conv(sub.normalize(b)) for b in batches]
    mean = torch.stack([a.mean(dim=(0, 2, 3)) for a in acts]).mean(0)
    var = torch.stack([a.var(dim=(0, 2, 3), unbiased=True) for a in acts]).mean(0)
    assert torch.allclose(sub.stem.bn.running_mean, mean, atol=1e-5)
    assert torch.allclose(sub.stem.bn.running_var, var, atol=1e-4)


def test_bn_recalibration_feeds_the_models_own_device():
    """A subnet extracted from a CUDA supernet lives on the GPU while the data stays on the CPU: the
    fine-tune stage's recalibration crashed there (cuda:0 vs cpu) until the batches followed the model.
    The meta device stands in for CUDA (a probe module: BatchNorm itself cannot run on meta)."""

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.empty(1, device="meta"))
            self.seen = []

        def forward(self, x):
            self.seen.append(x.device.type)
            return x

    probe = Probe()
    assert recalibrate_bn(probe, [torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8)]) == 8
    assert probe.seen == ["meta", "meta"] and not probe.training
    recalibrate_bn(probe, [torch.rand(4, 1, 8, 8)], "cpu")  # an explicit device still wins
    assert probe.seen[-1] == "cpu"


def test_width_multiplier_supernet_builds_and_runs():
    space = load_space("digits", width_mult=0.5)
    net = Supernet(space, 1, 10, [0.3], [0.4]).eval()
    g = space.largest()
    net.set_active(g)
    assert net(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    small = sum(p.numel() for p in net.extract(g).parameters())
    big_space = load_space("digits")
    assert small < sum(p.numel() for p in
                       Supernet(big_space, 1, 10, [0.3], [0.4]).extract(big_space.largest()).parameters())


def test_extract_keeps_the_supernets_device_and_dtype():
    """A supernet on a GPU must give a subnet on that GPU (validation during CUDA training recalibrates
    BN on the training device); the meta device stands in for CUDA on machines without one."""
    space = load_space("digits")
    net = Supernet(space, 1, 10, [0.4], [0.3]).to(device="meta", dtype=torch.float64)
    sub = net.extract(space.sample(np.random.default_rng(1)))
    tensors = list(sub.parameters()) + list(sub.buffers())
    assert tensors and {t.device.type for t in tensors} == {"meta"}
    assert {t.dtype for t in sub.parameters()} == {torch.float64}


DENSE = ["conv_k3", "conv_k5", "fir_k3_e2", "fir_k3_e4"]


def _dense_space():
    from nasctl.nas.space import SearchSpace

    return SearchSpace.from_dict({"name": "dense", "stem_channels": 8,
                                  "stages": [{"layers": 2, "stride": 1, "widths": [8, 16]},
                                             {"layers": 2, "stride": 2, "widths": [16, 24]}],
                                  "blocks": DENSE + ["skip"], "head_channels": 16})


def test_dense_family_nests_in_one_block():
    """conv_k3/k5 and fir_k3_e2/e4 share one family block per layer: the plain conv's filters are
    the first filters (kernel centre) of the fused block's expansion conv, so both train the same
    weights; every variant still extracts exactly and costs what its specs say."""
    from nasctl.nas.space import BLOCKS

    assert len({BLOCKS[t].family for t in DENSE}) == 1
    torch.manual_seed(0)
    space = _dense_space()
    net = Supernet(space, 1, 10, [0.3], [0.4])
    rng = np.random.default_rng(0)
    _warm_bn(net, 1, 8, rng)
    layer = net.choices[1]
    assert len(layer) == 1
    block = next(iter(layer.values()))
    # stored at the union of all variants: 5x5 kernel, out = max(cin * 4, cout) = max(64, 16)
    assert tuple(block.conv.weight.shape) == (64, 16, 5, 5)
    x = torch.rand(4, 1, 8, 8)
    for first in DENSE:
        g = space.parse(f"{first}_c16-{first}_c16-fir_k3_e4_c24-conv_k3_c24")
        sub = net.extract(g).eval()
        net.set_active(g)
        with torch.no_grad():
            assert (sub(x) - net(x)).abs().max().item() <= 1e-5
        assert sum(p.numel() for p in sub.parameters()) == space.cost(g, 1, 8, 10)[0]
        k = 5 if first == "conv_k5" else 3
        off = (5 - k) // 2
        w = sub.blocks[1].conv.weight  # 16 -> 16 (conv) or 16 -> 32 / 64 (fir expansion)
        assert torch.equal(w, block.conv.weight[: w.shape[0], :16, off: off + k, off: off + k].detach())


def test_sub_supernets_share_stem_and_head_only_across_shared_weights():
    """Block groups that share a weight family (conv_k3 inside fir_k3) share one stem and head; a
    group of unrelated blocks (ir) gets its own, and its subnets run through it."""
    from nasctl.nas.space import SearchSpace
    from nasctl.nas.supernet import sub_supernets

    digits = load_space("digits")
    assert sub_supernets(digits) == [0, 0]
    net = Supernet(digits, 1, 10, [0.3], [0.4])
    assert hasattr(net, "stem") and not hasattr(net, "stems")
    d = {**digits.to_dict(), "blocks": ["conv_k3", "ir_k3_e3", "fir_k3_e2", "skip"],
         "block_groups": [["conv_k3"], ["ir_k3_e3"], ["fir_k3_e2"]]}
    space = SearchSpace.from_dict(d)
    assert sub_supernets(space) == [0, 1, 0]
    torch.manual_seed(0)
    net = Supernet(space, 1, 10, [0.3], [0.4]).eval()
    assert len(net.stems) == len(net.heads) == 2
    x = torch.rand(2, 1, 8, 8)
    ir = space.parse("stem_c8-ir_k3_e3_c8-skip-ir_k3_e3_c16-skip-skip")
    net.set_active(ir)
    assert net.active_stem() is net.stems[1] and net.active_head() is net.heads[1]
    with torch.no_grad():
        assert torch.allclose(net.extract(ir).eval()(x), net(x), atol=1e-5)
        conv = space.parse("stem_c8-conv_k3_c8-skip-conv_k3_c16-skip-skip")
        before = net.extract(conv).eval()(x)
        net.stems[1].conv.weight.add_(1.0)  # the ir group's stem: conv paths do not use it
        assert torch.equal(net.extract(conv).eval()(x), before)
        net.stems[0].conv.weight.add_(1.0)
        assert not torch.allclose(net.extract(conv).eval()(x), before)


def test_extract_leaves_the_active_path_alone():
    space = load_space("digits")
    net = Supernet(space, 1, 10, [0.4], [0.3])
    rng = np.random.default_rng(3)
    a, b = space.sample(rng), space.sample(rng)
    net.set_active(a)
    net.extract(b)
    assert net.active == a


def test_package_names_are_the_functions_they_list():
    import nasctl.nas as nas
    import nasctl.nas.search.evaluator  # noqa: F401 (a submodule import must not rebind the name)
    from nasctl.nas.attacks import accuracy_under_attack

    assert nas.accuracy_under_attack is accuracy_under_attack and callable(nas.accuracy_under_attack)


def test_build_subnet_is_seeded_without_touching_the_global_rng():
    """A from-scratch subnet's weights come from its own seed; the caller's torch RNG is left alone
    (randomness is passed in everywhere, so a library call must not reseed the process)."""
    from nasctl.nas.supernet import build_subnet

    space = load_space("digits")
    genome = space.sample(np.random.default_rng(0))
    args = (space, genome, 1, 10, [0.5], [0.25])
    a, b, c = build_subnet(*args, seed=3), build_subnet(*args, seed=3), build_subnet(*args, seed=4)
    flat = [torch.cat([p.detach().flatten() for p in m.parameters()]) for m in (a, b, c)]
    assert torch.equal(flat[0], flat[1]) and not torch.equal(flat[0], flat[2])
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_subnet(*args, seed=3)
    assert torch.equal(torch.rand(3), expected)
