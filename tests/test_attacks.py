"""Attacks against a really trained undefended model, cross-checked with ART's PGD."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nasctl.errors import NasctlError
from nasctl.nas.attacks import (
    ATTACKS,
    FGSM,
    FGSMRS,
    NFGSM,
    PGD,
    accuracy_under_attack,
    make_attack,
    trades_loss,
)
from nasctl.nas.attacks.square import Square


def _acc(model, digits, attack, n=397, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return accuracy_under_attack(model, digits.test.subset(n).batches(400), attack, gen=gen)


def test_undefended_model_is_trained(undefended_model, digits):
    r = _acc(undefended_model, digits, None)
    assert r.clean_acc > 85.0


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_eps_zero_leaves_accuracy_unchanged(undefended_model, digits, name):
    short = {"steps": 5, "queries": 20}  # keep iterative and query attacks quick
    attack = make_attack(name, eps=0.0, **{k: v for k, v in short.items() if k in ATTACKS[name].settings()})
    r = _acc(undefended_model, digits, attack)
    assert r.adv_acc == pytest.approx(r.clean_acc)


def test_pgd_at_least_as_strong_as_fgsm(undefended_model, digits):
    fgsm = _acc(undefended_model, digits, FGSM(eps=0.1)).adv_acc
    pgd = _acc(undefended_model, digits, PGD(eps=0.1, steps=20)).adv_acc
    clean = _acc(undefended_model, digits, None).clean_acc
    assert pgd <= fgsm < clean


def test_large_eps_breaks_undefended_model(undefended_model, digits):
    assert _acc(undefended_model, digits, PGD(eps=0.3, steps=20)).adv_acc < 10.0


def test_restarts_never_weaker(undefended_model, digits):
    one = _acc(undefended_model, digits, PGD(eps=0.05, steps=10, restarts=1)).adv_acc
    three = _acc(undefended_model, digits, PGD(eps=0.05, steps=10, restarts=3)).adv_acc
    assert three <= one


@pytest.mark.parametrize("attack, bound", [(FGSM(eps=0.1), 0.1), (FGSMRS(eps=0.1), 0.1),
                                           (PGD(eps=0.1, steps=5), 0.1), (NFGSM(eps=0.1), 0.3),
                                           (Square(eps=0.1, queries=30), 0.1)])
def test_perturbation_stays_in_budget_and_pixel_range(undefended_model, digits, attack, bound):
    x, y = next(digits.test.batches(64))
    x_adv = attack(undefended_model, x, y, torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= bound + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_square_is_a_registered_query_only_attack_that_fools_without_gradients(undefended_model, digits):
    """The black-box Square attack, through the same registry and accuracy_under_attack() as PGD: it lowers an
    undefended model's accuracy using logits alone, and never beats white-box PGD by much."""
    sq = make_attack("square", eps=0.1, queries=200, seed=0)
    assert isinstance(sq, Square) and sq.query_only and not PGD.query_only
    assert sq.to_dict()["attack"] == "square" and sq.to_dict()["queries"] == 200
    clean = _acc(undefended_model, digits, None, n=200).clean_acc
    square = _acc(undefended_model, digits, sq, n=200).adv_acc
    pgd = _acc(undefended_model, digits, PGD(eps=0.1, steps=20), n=200).adv_acc
    assert square < clean - 20  # it really attacks
    assert pgd <= square + 5  # gradients are not masked on an undefended model: PGD is at least as strong
    again = _acc(undefended_model, digits, make_attack("square", eps=0.1, queries=200, seed=0), n=200).adv_acc
    assert again == square  # seeded


def test_attack_restores_model_state(undefended_model, digits):
    x, y = next(digits.test.batches(32))
    undefended_model.train()
    req = [p.requires_grad for p in undefended_model.parameters()]
    try:
        PGD(eps=0.1, steps=2)(undefended_model, x, y)
        assert undefended_model.training
        assert [p.requires_grad for p in undefended_model.parameters()] == req
    finally:
        undefended_model.eval()


def test_same_generator_seed_same_result(undefended_model, digits):
    x, y = next(digits.test.batches(64))
    a = PGD(eps=0.1, steps=3)(undefended_model, x, y, torch.Generator().manual_seed(5))
    b = PGD(eps=0.1, steps=3)(undefended_model, x, y, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_pgd_agrees_with_adversarial_robustness_toolbox(undefended_model, digits):
    """Our PGD and ART's independent ProjectedGradientDescent, same eps/step/steps/restarts: within 2
    points. Five random restarts each: with one, the random start alone moved the two by 2.8 points on
    the ``default`` kernel (ATEN_CPU_CAPABILITY=default), where the fixture trains another model."""
    pytest.importorskip("art")
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    eps, steps, restarts = 0.1, 20, 5
    clf = PyTorchClassifier(model=undefended_model, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 8, 8),
                            nb_classes=10, clip_values=(0.0, 1.0))
    x = digits.test.numpy_images()
    y = digits.test.labels.numpy()
    art_pgd = ProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=2.5 * eps / steps, max_iter=steps,
                                       num_random_init=restarts, batch_size=400, verbose=False)
    np.random.seed(0)  # ART draws its random start from numpy's global generator
    x_adv = art_pgd.generate(x=x)
    with torch.no_grad():
        clean_ok = undefended_model(torch.from_numpy(x)).argmax(1).numpy() == y
        art_acc = 100.0 * np.mean(clean_ok
                                  & (undefended_model(torch.from_numpy(x_adv)).argmax(1).numpy() == y))
    ours = _acc(undefended_model, digits, PGD(eps=eps, steps=steps, restarts=restarts)).adv_acc
    assert abs(ours - art_acc) <= 2.0, (ours, art_acc)
    assert ours < 70.0  # and the attack does real work at this budget


def test_trades_loss_reduces_to_cross_entropy_when_outputs_agree():
    logits = torch.randn(8, 10)
    y = torch.randint(0, 10, (8,))
    ce = torch.nn.functional.cross_entropy(logits, y)
    assert torch.allclose(trades_loss(logits, logits.clone(), y, beta=6.0), ce, atol=1e-6)
    assert trades_loss(logits, logits + torch.randn(8, 10), y, beta=6.0) > ce


def test_unknown_attack_is_a_clear_error():
    with pytest.raises(NasctlError, match="unknown attack 'pgdd'"):
        make_attack("pgdd", eps=0.1)


def test_unknown_setting_is_refused_not_dropped():
    with pytest.raises(NasctlError, match="'fgsm-rs' takes no setting 'steps'"):
        make_attack("fgsm-rs", eps=0.1, steps=7)
    with pytest.raises(NasctlError, match="did you mean 'restarts'"):
        make_attack("pgd", eps=0.1, restart=3)


@pytest.mark.parametrize("name", sorted(n for n, c in ATTACKS.items() if c.trainable))
def test_training_attacks_come_from_the_registry(name):
    from nasctl.nas.training.supernet import TRAIN_ATTACKS

    cls = ATTACKS[name]
    assert name in TRAIN_ATTACKS
    a = cls.for_training(0.1, steps=7, beta=6.0)
    assert a.model_mode == "train" and a.eps == 0.1
    if cls.train_step is not None:
        assert a.alpha == pytest.approx(cls.train_step * 0.1)  # PGD/TRADES: step eps/4
    assert cls.for_training(0.1, steps=7, alpha=0.05).to_dict().get("alpha", 0.05) == 0.05
    logits, y = torch.randn(4, 10), torch.randint(0, 10, (4,))
    loss = a.training_loss(logits, y, logits.clone() if cls.needs_clean_logits else None)
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_to_dict_states_threat_model():
    d = PGD(eps=0.1, steps=20, restarts=2).to_dict()
    assert d["attack"] == "pgd" and d["norm"] == "Linf" and d["eps"] == 0.1 and d["steps"] == 20


def test_the_design_docs_new_attack_registers_with_its_one_line(undefended_model, digits, monkeypatch):
    """docs/design.md §11's MIM example, run as written: importing its file registers it, make_attack
    builds it by name with its own setting, refuses others, and it fools the undefended model within
    its budget about as PGD does (momentum changes the path, not the threat model)."""
    import re
    import sys
    import types
    from pathlib import Path

    import nasctl.nas.attacks as attacks

    doc = (Path(__file__).resolve().parents[1] / "docs" / "design.md").read_text()
    code = re.search(r"```python\n(.*?class MIM\(PGD\).*?)```", doc, re.S).group(1)
    monkeypatch.setitem(attacks.ATTACKS, "mim", None)  # the registration below is undone afterwards
    module = types.ModuleType("nasctl.nas.attacks.mim")
    module.__package__ = "nasctl.nas.attacks"
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, "docs/design.md (attacks/mim.py)", "exec"), module.__dict__)

    mim = attacks.make_attack("mim", eps=0.1, steps=20, decay=0.5)
    assert type(mim).__name__ == "MIM" and mim.decay == 0.5
    with pytest.raises(NasctlError, match="takes no setting 'queries'"):
        attacks.make_attack("mim", eps=0.1, queries=10)
    clean = _acc(undefended_model, digits, None).clean_acc
    fooled = _acc(undefended_model, digits, mim).adv_acc
    pgd = _acc(undefended_model, digits, PGD(eps=0.1, steps=20)).adv_acc
    assert fooled < clean - 30 and abs(fooled - pgd) < 15
    x, y = digits.test.images[:64].float(), digits.test.labels[:64]
    x_adv = mim(undefended_model, x, y, torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
