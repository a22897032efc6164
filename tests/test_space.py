"""Search space: genome strings, validation, registry, YAML spaces and analytic costs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nasctl.nas.search.objectives import SIZE_OBJECTIVES
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
    with pytest.raises(GenomeError, match="stem width"):
        load_space("digits", width_mult=0.5).validate(g)
    stride2 = next(lc.index for lc in digits.layers if lc.stride == 2)
    layers = list(digits.smallest().layers)
    layers[stride2] = Genome.decode("skip").layers[0]
    with pytest.raises(GenomeError, match="not allowed"):
        digits.validate(dataclasses.replace(digits.smallest(), layers=tuple(layers)))


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


# the hand-designed CNNs of bench/bench_baselines.py as genomes of the built-in digits space, with
# their parameter counts: 24 / 48 / 96 / 80 fewer than the same nets written with conv biases
# (1,466 / 5,226 / 19,658 / 14,538), because a bias in front of BatchNorm is redundant
HAND_DESIGNED = {
    "stem_c8-skip-skip-conv_k3_c16-skip-skip": 1_442,
    "stem_c16-skip-skip-conv_k3_c32-skip-skip": 5_178,
    "stem_c32-skip-skip-conv_k3_c64-skip-skip": 19_562,
    "stem_c16-skip-skip-conv_k3_c32-conv_k3_c32-skip": 14_458,
}


@pytest.mark.parametrize("text, params", sorted(HAND_DESIGNED.items()))
def test_digits_space_contains_the_hand_designed_cnns(text, params):
    space = load_space("digits")
    g = space.parse(text)
    assert g.encode() == text and g.stem == int(text.split("-")[0][6:]) and g.head is None
    assert space.head_of(g) == 0  # the digits space has no head conv: GAP -> FC, like these nets
    assert space.cost(g, 1, 8, 10)[0] == params
    net = Supernet(space, 1, 10, [0.5], [0.25])
    sub = net.extract(g)
    assert sum(p.numel() for p in sub.parameters()) == params
    convs = [m for m in sub.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs][:2] == [
        (1, g.stem, (3, 3), (1, 1)), (g.stem, 2 * g.stem, (3, 3), (2, 2))]
    assert not hasattr(sub.head, "conv") and sub.head.fc_direct.in_features == convs[-1].out_channels


def test_digits_space_ranges_from_about_1k_parameters():
    space = load_space("digits")
    small, large = space.cost(space.smallest(), 1, 8, 10)[0], space.cost(space.largest(), 1, 8, 10)[0]
    assert 1_000 <= small <= 1_500 and large >= 50_000


def test_stem_and_head_tokens():
    g = Genome.decode("stem_c8-skip-ir_k3_e3_c16-head_c64")
    assert (g.stem, g.head, len(g.layers)) == (8, 64, 2)
    assert Genome.decode("stem_c8-conv_k3_c16-head_none").head == 0
    assert Genome.decode("conv_k3_c16-skip").stem is None and Genome.decode("conv_k3_c16-skip").head is None
    for bad, needle in (("skip-stem_c8-conv_k3_c16", "first"), ("head_c8-conv_k3_c16", "last"),
                        ("stem_c8-head_none", "no layers")):
        with pytest.raises(GenomeError, match=needle):
            Genome.decode(bad)
    tam = load_space("tam")
    with pytest.raises(GenomeError, match="fixes it"):
        tam.validate(dataclasses.replace(tam.largest(), stem=16))
    digits = load_space("digits")
    with pytest.raises(GenomeError, match="stem_c8, stem_c16, stem_c32"):
        digits.validate(dataclasses.replace(digits.largest(), stem=None))
    searched = SearchSpace.from_dict({**digits.to_dict(), "head_channels": [0, 64]})
    with pytest.raises(GenomeError, match="head_none, head_c64"):
        searched.validate(digits.largest())
    g = dataclasses.replace(digits.largest(), head=0)
    assert searched.validate(g).encode().endswith("-head_none")
    assert searched.cost(g, 1, 8, 10) == digits.cost(digits.largest(), 1, 8, 10)


def test_block_groups_keep_each_subnet_in_one_group():
    space = load_space("digits")
    assert len(space.groups) == 2
    with pytest.raises(GenomeError, match="mixes blocks of several groups"):
        space.parse("stem_c8-conv_k3_c8-fir_k3_e2_c8-conv_k3_c16-skip-skip")
    rng = np.random.default_rng(0)
    seen = [space.group_of(space.sample(rng)) for _ in range(300)]
    assert set(seen) == set(range(len(space.groups))) and min(np.bincount(seen)) > 100  # about half each
    # block gene 0 is skip in every group, so crossover between groups keeps the depth
    x = space.to_vector(space.parse("stem_c8-skip-conv_k3_c8-conv_k3_c16-skip-skip"))
    x[0] = 1  # the group gene: now the fir group
    assert space.from_vector(x).encode() == "stem_c8-skip-fir_k3_e2_c8-fir_k3_e2_c16-skip-skip"
    # every gene vector is a valid genome (block genes are taken modulo the group's choices)
    for _ in range(200):
        x = [rng.integers(n) for n in space.gene_bounds()]
        g = space.from_vector(x)
        assert space.validate(g) is g and space.from_vector(space.to_vector(g)) == g


def test_space_dict_without_new_keys_is_unchanged():
    """Spaces without groups or searched stem/head serialise exactly as before (checkpoints compare
    these dicts), and dicts round-trip."""
    tam = load_space("tam")
    assert "block_groups" not in tam.to_dict() and isinstance(tam.to_dict()["head_channels"], int)
    for name in SPACES:
        space = load_space(name)
        assert SearchSpace.from_dict(space.to_dict()) == space
        assert SearchSpace.from_dict(space.to_dict()).to_dict() == space.to_dict()


@pytest.mark.parametrize("name", SIZE_OBJECTIVES)
def test_every_genome_cost_objective_is_computed_and_searchable(name):
    """A registered cost objective reaches the records (genome_costs), the parser and the minimised value,
    and grows from the space's smallest to its largest subnet."""
    from nasctl.nas.search.objectives import OBJECTIVES, genome_costs, minimised, parse_objectives

    space = load_space("digits")
    info = {"in_channels": 1, "resolution": 8, "num_classes": 10}
    small, large = genome_costs(space, space.smallest(), info), genome_costs(space, space.largest(), info)
    assert 0 < small[name] < large[name]
    assert parse_objectives(f"clean_acc,{name}") == ("clean_acc", name)
    assert minimised(name, large[name], {name: large[name]}) == 1.0
    assert not OBJECTIVES[name].maximize
