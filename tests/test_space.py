"""Search space: genome strings, validation, registry, YAML spaces and analytic costs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nasctl.nas.space import BLOCKS, SKIP, Genome, GenomeError, SearchSpace, builtin_spaces, load_space
from nasctl.nas.supernet import Supernet

SPACES = {"digits": (1, 8), "tam": (3, 32)}


def _genome_strategy(space: SearchSpace):
    return st.tuples(*[st.integers(0, n - 1) for n in space.gene_bounds()]).map(space.from_vector)


@pytest.mark.parametrize("name", sorted(SPACES))
def test_builtin_spaces_load(name):
    assert name in builtin_spaces()
    space = load_space(name)
    assert space.layers and all(SKIP not in lc.ops for lc in space.layers if lc.stride != 1)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_genome_string_round_trips(data):
    for name in SPACES:
        space = load_space(name, width_mult=data.draw(st.sampled_from([0.5, 1.0, 1.5])))
        g = data.draw(_genome_strategy(space))
        text = g.encode()
        assert Genome.decode(text) == g
        assert space.parse(text) == g
        assert Genome.decode(text).encode() == text
        assert space.from_vector(space.to_vector(g)) == g


@pytest.mark.parametrize("bad, token", [
    ("ir_k3_e6_c16-foo_c8", "foo_c8"),
    ("ir_k3_e6_c16-ir_k3_e6", "ir_k3_e6"),
    ("ir_k3_e6_c0", "ir_k3_e6_c0"),
    ("ir_k3_e6_c16--skip", "''"),
    ("nope_k9_c8", "nope_k9"),
])
def test_bad_genome_string_names_the_token(bad, token):
    with pytest.raises(GenomeError) as e:
        Genome.decode(bad)
    assert token.strip("'") in str(e.value)


def test_empty_genome_string():
    with pytest.raises(GenomeError, match="empty genome"):
        Genome.decode("  ")


def test_genome_from_another_space_is_rejected():
    digits, tam = load_space("digits"), load_space("tam")
    g = digits.largest()
    with pytest.raises(GenomeError, match="layers"):
        tam.validate(g)
    with pytest.raises(GenomeError, match="channels"):
        load_space("digits", width_mult=0.5).validate(g)
    stride2 = next(lc.index for lc in digits.layers if lc.stride == 2)
    layers = list(digits.smallest().layers)
    layers[stride2] = Genome.decode("skip").layers[0]
    with pytest.raises(GenomeError, match="not allowed"):
        digits.validate(Genome(tuple(layers)))


def _conv_macs_by_hooks(model: torch.nn.Module, x: torch.Tensor) -> int:
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, torch.nn.Conv2d):
            total += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, torch.nn.Linear):
            total += m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total


@pytest.mark.parametrize("name", sorted(SPACES))
@pytest.mark.parametrize("width", [0.5, 1.0])
def test_analytic_params_and_macs_equal_the_extracted_model(name, width):
    space = load_space(name, width_mult=width)
    cin, res = SPACES[name]
    net = Supernet(space, cin, 10, [0.5] * cin, [0.25] * cin)
    rng = np.random.default_rng(1)
    for g in [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(12)]:
        sub = net.extract(g)
        params, macs = space.cost(g, cin, res, 10)
        assert params == sum(p.numel() for p in sub.parameters()), g
        assert macs == _conv_macs_by_hooks(sub.eval(), torch.rand(1, cin, res, res)), g


def test_largest_is_larger_than_smallest():
    for name, (cin, res) in SPACES.items():
        space = load_space(name)
        assert (space.cost(space.largest(), cin, res, 10)[0]
                > 3 * space.cost(space.smallest(), cin, res, 10)[0])
        assert (space.int8_bytes(space.largest(), cin, res, 10)
                > space.int8_bytes(space.smallest(), cin, res, 10))


def test_width_multiplier_scales_channels():
    base, wide = load_space("tam"), load_space("tam", width_mult=2.0)
    assert [max(lc.channels) for lc in wide.layers] == [2 * max(lc.channels) for lc in base.layers]
    assert wide.stem == 2 * base.stem and wide.head == 2 * base.head


def test_yaml_space_and_unknown_keys(tmp_path):
    p = tmp_path / "mini.yaml"
    p.write_text("name: mini\nstem_channels: 4\nstages:\n  - {layers: 2, stride: 1, widths: [4, 8]}\n"
                 "blocks: [ghost, dsc_k3, skip]\nhead_channels: 16\n")
    space = load_space(str(p))
    assert (space.name == "mini" and len(space.layers) == 2
            and space.layers[0].ops == ("ghost", "dsc_k3", "skip"))
    p.write_text(p.read_text() + "head_chanels: 3\n")
    with pytest.raises(ValueError, match="did you mean 'head_channels'"):
        load_space(str(p))
    with pytest.raises(ValueError, match="unknown search space"):
        load_space("nosuchspace")


@pytest.mark.parametrize("token", sorted(BLOCKS))
@pytest.mark.parametrize("stride", [1, 2])
def test_every_block_slices_exactly(token, stride):
    """Every registered block: a sliced (active) slim block equals its static copy, with the
    parameter count its specs declare."""
    from nasctl.nas.space import to_static

    torch.manual_seed(0)
    block = BLOCKS[token](16, 24, stride).eval()
    for m in block.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    block.set_active(12, 16)
    x = torch.randn(2, 12, 8, 8)
    import copy

    static = to_static(copy.deepcopy(block))
    static.drop_inactive()
    assert all(not hasattr(m, "max_spec") for m in static.modules())
    assert torch.allclose(block(x), static(x), atol=1e-6)
    assert static(x).shape == (2, 16, 4 if stride == 2 else 8, 4 if stride == 2 else 8)
    assert sum(p.numel() for p in static.parameters()) == block.cost(12, 16, 8)[0]
