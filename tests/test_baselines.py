"""bench/bench_baselines.py: the hand-designed CNNs are genomes of the digits space with the right
sizes and layers, and the script trains, evaluates and compares them with a run's front."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="module")
def bench(load_bench):
    return load_bench("bench_baselines")


def test_baselines_are_the_issue_nets_built_by_the_space(bench, digits):
    """Each baseline, built by the space, has the issue's parameter count minus one bias per conv
    output channel (the space's convs are bias-free: BatchNorm follows), and the issue's layers."""
    for label, (issue_params, genome) in bench.BASELINES.items():
        model = bench.build(genome, digits)
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        params = sum(p.numel() for p in model.parameters())
        assert params + sum(c.out_channels for c in convs) == issue_params, label
        widths = [int(w.split(")")[0]) for w in label.split("(")[1:]]
        assert [c.out_channels for c in convs] == widths, label
        assert [c.kernel_size for c in convs] == [(3, 3)] * len(convs)
        assert [c.stride for c in convs] == [(1, 1), (2, 2), (1, 1)][: len(convs)]
        assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == len(convs)
        linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        assert len(linear) == 1 and linear[0].in_features == widths[-1]


def test_bench_runs_and_compares_with_a_front(bench, tmp_path, capsys):
    """One epoch on tiny data: the numbers are written, re-read, and put beside a front whose members
    carry fine-tuned numbers (used) or only inherited ones."""
    front = [
        {"genome": "a", "params": 1_400, "final_clean_acc": 10.0, "final_adv_acc": 5.0,
         "finetuned_clean_acc": 100.0, "finetuned_adv_acc": 100.0},
        {"genome": "b", "params": 5_000, "final_clean_acc": 0.0, "final_adv_acc": 0.0},
        {"genome": "c", "params": 20_000, "final_clean_acc": 100.0, "final_adv_acc": 100.0},
    ]
    run = tmp_path / "run"
    run.mkdir()
    (run / "pareto.json").write_text(json.dumps({"front": front}))
    out = tmp_path / "baselines.json"
    labels = list(bench.BASELINES)[:2]
    bench.main(["--epochs", "1", "--limit-train", "128", "--limit-test", "64", "--run", str(run),
                "--out", str(out), "--only", *labels, "--recipe", "project", "--workers", "1"])
    doc = json.loads(out.read_text())
    assert doc["recipe"]["epochs"] == 1 and doc["recipe"]["lr"] == 0.05 and doc["test_images"] == 64
    rows = doc["baselines"]
    assert [r["label"] for r in rows] == labels
    for r in rows:
        assert 0 <= r["adv_acc"] <= r["clean_acc"] <= 100 and r["test_images"] == 64
        assert r["attack"]["steps"] == 20 and r["attack"]["restarts"] == 3
    small, mid = (r["comparison"] for r in rows)
    assert small["nearest"]["genome"] == "a" and small["nearest"]["weights"] == "fine-tuned"
    assert small["beaten_by"]["genome"] == "a"  # 1,400 <= 1,466 params and 100 / 100 %
    assert mid["nearest"]["genome"] == "b" and mid["nearest"]["weights"] == "inherited"
    assert mid["best_within_params"]["genome"] == "a"  # b (5,000 <= 5,226) scores 0 / 0
    assert mid["beaten_by"]["genome"] == "a"  # a smaller member that is better counts too
    printed = capsys.readouterr().out
    assert "2 / 2" in printed and "`a`" in printed
    # a member with more parameters, or below either accuracy, does not count
    base = {"params": 1_442, "issue_params": 1_466, "clean_acc": 98.0, "adv_acc": 60.0}
    near_miss = [{"genome": "x", "params": 1_400, "final_clean_acc": 99.0, "final_adv_acc": 59.9},
                 {"genome": "y", "params": 1_500, "final_clean_acc": 99.0, "final_adv_acc": 70.0}]
    c = bench.compare(base, near_miss)
    assert c["beaten_by"] is None and c["best_within_params"]["genome"] == "x"
    assert c["nearest"]["genome"] == "x"


def test_compare_counts_every_tradeoff_entry_and_one_image_of_slack(bench):
    """A member's accurate entry can beat a baseline its robust entry does not; clean accuracy may be
    up to the slack (one test image) below the baseline's, PGD accuracy never."""
    base = {"params": 1_442, "issue_params": 1_466, "clean_acc": 98.0, "adv_acc": 60.0}
    member = {"genome": "m", "params": 1_442, "final_clean_acc": 90.0, "final_adv_acc": 50.0,
              "finetuned_clean_acc": 95.0, "finetuned_adv_acc": 66.0,
              "finetuned_tradeoffs": {"robust": {"clean_acc": 95.0, "adv_acc": 66.0},
                                      "accurate": {"clean_acc": 97.8, "adv_acc": 61.0}}}
    assert bench.compare(base, [member])["beaten_by"] is None  # 97.8 < 98.0 without slack
    c = bench.compare(base, [member], slack=100 / 397)
    assert c["beaten_by"]["weights"] == "fine-tuned accurate" and c["beaten_by"]["clean_acc"] == 97.8
    assert c["best_within_params"]["weights"] == "fine-tuned robust"  # the highest PGD entry
    worse = {**member, "finetuned_tradeoffs": {"accurate": {"clean_acc": 98.5, "adv_acc": 59.9}}}
    assert bench.compare(base, [worse], slack=100 / 397)["beaten_by"] is None


def test_plain_loop_nets_are_the_issue_nets_and_train(bench, digits):
    """The plain loop's networks are torch-only nn.Sequential stacks with conv biases: exactly the issue's
    parameter counts; one epoch of the loop trains and is scored with the search's final attack."""
    for label, (issue_params, genome) in bench.BASELINES.items():
        model = bench.plain_cnn(genome, 1, 10, (0.3,), (0.4,))
        assert sum(p.numel() for p in model.parameters()) == issue_params, label
        strides = [m.stride for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert strides[:2] == [(1, 1), (2, 2)], label
    small = digits.__class__(digits.info, digits.train, digits.val, digits.test.subset(64))
    r = bench.plain_train(bench.BASELINES[next(iter(bench.BASELINES))][1], small, 0.1, epochs=2, steps=2,
                          restarts=1)
    assert r["params"] == 1_466 and r["test_images"] == 64 and r["recipe"] == "plain"
    assert 0 <= r["adv_acc"] <= r["clean_acc"] <= 100 and r["clean_acc"] > 20  # learnt something


def test_finetune_front_bench_annotates_a_copy(load_bench, tmp_path, digits):
    """bench_finetune_front.py trains the chosen front members from their inherited weights and writes
    finetuned_* fields into a copy of pareto.json; the run's own file is left as it was."""
    import hashlib

    from nasctl.nas.training.supernet import TrainConfig, train_supernet

    ckpt, _ = train_supernet(TrainConfig(limit_train=256, epochs=1, eval_size=40, eval_steps=2,
                                         attack_steps=2, run_root=str(tmp_path / "sn")))
    genomes = ["stem_c8-skip-skip-conv_k3_c16-skip-skip", "stem_c8-skip-skip-conv_k3_c16-conv_k3_c16-skip",
               "stem_c32-skip-skip-conv_k3_c64-skip-skip"]
    from nasctl.nas.space import load_space

    space = load_space("digits")
    front = [{"genome": g, "params": space.cost(space.parse(g), 1, 8, 10)[0], "final_clean_acc": 50.0,
              "final_adv_acc": 10.0 + i} for i, g in enumerate(genomes)]
    run = tmp_path / "run"
    run.mkdir()
    pareto = run / "pareto.json"
    pareto.write_text(json.dumps({"supernet": str(ckpt), "dataset": "digits", "seed": 0, "eps": 0.1,
                                  "front": front}))
    before = hashlib.sha256(pareto.read_bytes()).hexdigest()
    out = tmp_path / "ft"
    load_bench("bench_finetune_front").main([str(run), "--out", str(out), "--epochs", "1",
                                              "--per-baseline", "1"])
    assert hashlib.sha256(pareto.read_bytes()).hexdigest() == before
    doc = json.loads((out / "pareto.json").read_text())
    tuned = {e["genome"]: e for e in doc["front"] if "finetuned_adv_acc" in e}
    # per baseline the member with the best inherited PGD within its size: 1,442 -> the first,
    # 5,226 and 14,538 -> the second (3,778 params), 19,658 -> the third (19,562)
    assert set(tuned) == set(genomes)
    for e in tuned.values():
        assert 0 <= e["finetuned_adv_acc"] <= e["finetuned_clean_acc"] <= 100
        assert e["finetuned_from"] == "inherited"
    assert doc["finetune_recipe"]["epochs"] == 1 and doc["finetune_recipe"]["lr"] == 0.05


def test_baselines_get_every_tradeoff_the_run_fine_tuned_with(bench, tmp_path, monkeypatch):
    """Same recipe on both sides: a run fine-tuned at robust and accurate gives each baseline both
    recipes (the accurate one with the trade-off's settings: attack crafted in eval mode, no Nesterov,
    every batch kept); an older run without the key, and a recipe file, give robust alone."""
    run = tmp_path / "run"
    run.mkdir()
    doc = {"command": "search", "config": {"finetune_tradeoff": "robust,accurate"}}  # as write_run_config
    (run / "config.json").write_text(json.dumps(doc))
    args = type("A", (), {"run": str(run)})()
    assert bench.run_tradeoffs(args) == ["robust", "accurate"]
    (run / "config.json").write_text(json.dumps({"command": "search", "config": {"seed": 0}}))
    assert bench.run_tradeoffs(args) == ["robust"]
    assert bench.run_tradeoffs(type("A", (), {"run": None})()) == ["robust"]

    seen = []
    real = bench.adversarial_train

    def spy(model, data, cfg, **kw):
        seen.append((cfg.craft_mode, cfg.nesterov, cfg.drop_last))
        return real(model, data, cfg, **kw)

    monkeypatch.setattr(bench, "adversarial_train", spy)
    out = tmp_path / "b.json"
    label = next(iter(bench.BASELINES))
    doc = bench.main(["--epochs", "1", "--limit-train", "64", "--limit-test", "16", "--only", label,
                      "--recipe", "accurate", "--out", str(out), "--workers", "1"])
    assert [r["recipe"] for r in doc["baselines"]] == ["accurate"]
    assert seen == [("eval", False, False)]
    assert json.loads(out.read_text())["recipes"] == ["accurate"]
