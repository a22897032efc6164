"""Best-epoch fine-tuning (issue 22): the epoch kept is the one that scored best on the validation split
with the search's attack, early stopping ends a fine-tuning that stopped improving, and the search's
fine-tune stage covers every size decade of its front."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from nasctl.errors import NasctlError
from nasctl.nas.attacks import PGD, accuracy_under_attack
from nasctl.nas.runs.finetune import spread_picks
from nasctl.nas.search import SearchConfig
from nasctl.nas.training.subnet import EpochSelection, SubnetTrainConfig, adversarial_train


def _net(seed: int = 0, bn: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8) if bn else nn.Identity(), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10))


def _small(digits, n: int = 256):
    return dataclasses.replace(digits, train=digits.train.subset(n))


def _val_score(model: nn.Module, digits, sel: EpochSelection, eps: float) -> tuple[float, float]:
    val = digits.val.subset(min(sel.val_size, len(digits.val)))
    r = accuracy_under_attack(model, val.batches(256), PGD(eps=eps, steps=sel.pgd_steps), "cpu",
                 torch.Generator().manual_seed(sel.seed))
    return r.clean_acc, r.adv_acc


def test_best_epoch_is_kept_and_is_the_best_point_of_the_curve(digits):
    data = _small(digits)
    cfg = SubnetTrainConfig(epochs=5, lr=0.2, attack_steps=2, eps=0.1, seed=3)
    sel = EpochSelection(mode="best", every=1, patience=None, val_size=120, pgd_steps=3)
    model = _net()
    stats = adversarial_train(model, data, cfg, select=sel)
    s = stats["selection"]
    assert [p["epoch"] for p in s["curve"]] == [1, 2, 3, 4, 5] and s["epochs_run"] == 5
    best = max(s["curve"], key=lambda p: (p["val_adv_acc"], p["val_clean_acc"], -p["epoch"]))
    assert s["chosen_epoch"] == best["epoch"] and not s["stopped_early"]
    # the weights left in the model are that epoch's: re-scoring them gives that point of the curve
    assert _val_score(model, data, sel, cfg.eps) == (best["val_clean_acc"], best["val_adv_acc"])
    assert s["split"] == "val" and s["attack"]["steps"] == 3 and s["val_images"] == 120


def test_last_mode_keeps_the_training_trajectory_of_no_selection(digits):
    """Scoring the validation split draws no random numbers of the training: with ``last`` the weights
    are bit-identical to a fine-tuning without selection."""
    data = _small(digits, 128)
    cfg = SubnetTrainConfig(epochs=3, lr=0.1, attack_steps=2, eps=0.1, seed=1)
    plain, selected = _net(), _net()
    adversarial_train(plain, data, cfg)
    stats = adversarial_train(selected, data, cfg,
                              select=EpochSelection(mode="last", every=1, patience=None, val_size=50))
    assert stats["selection"]["chosen_epoch"] == 3
    a, b = plain.state_dict(), selected.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_patience_stops_a_fine_tuning_that_does_not_improve(digits):
    """lr 0 and no BatchNorm statistics: the model never changes, the validation score never improves on
    epoch 1's, and training stops ``patience`` epochs into the schedule's second half instead of running
    all of them (10 epochs, patience 2: after epoch 5 + 2)."""
    data = _small(digits, 128)
    cfg = SubnetTrainConfig(epochs=10, lr=0.0, attack_steps=1, eps=0.1)
    epochs_seen: list[int] = []
    stats = adversarial_train(_net(bn=False), data, cfg, on_epoch=lambda e, loss: epochs_seen.append(e),
                              select=EpochSelection(every=1, patience=2, val_size=40, pgd_steps=1))
    s = stats["selection"]
    assert epochs_seen == [1, 2, 3, 4, 5, 6, 7] and s["epochs_run"] == 7 and s["stopped_early"]
    assert s["chosen_epoch"] == 1


@pytest.mark.parametrize("kwargs, needle", [({"mode": "middle"}, "--select"),
                                            ({"every": 0}, "--select-every"),
                                            ({"patience": -1}, "--patience")])
def test_bad_selection_settings_are_one_clear_error(kwargs, needle):
    with pytest.raises(NasctlError, match=needle):
        EpochSelection(**kwargs).validate()
    with pytest.raises(NasctlError, match="--finetune-" + needle[2:]):  # the flag nasctl search has
        SearchConfig(**{f"finetune_{k}" if k != "mode" else "finetune_select": v
                        for k, v in {"select_every" if k == "every" else k: v
                                     for k, v in kwargs.items()}.items()}).validate()


def test_search_fine_tune_stage_chooses_by_the_searchs_validation_attack():
    f = SearchConfig(val_size=77, pgd_steps=5, finetune_patience=0).finetune_config().selection()
    assert (f.val_size, f.pgd_steps, f.mode, f.patience) == (77, 5, "best", 0)


def test_every_size_decade_of_the_front_gets_a_fine_tuned_member():
    params = [900, 1_442, 3_778, 3_970, 8_000, 12_000, 15_000, 19_000, 25_000, 140_000]
    front = [{"params": p} for p in params]
    spread = spread_picks(front, knee=5, k=2)
    assert len(spread) == 2 and 5 in spread
    covered = spread_picks(front, knee=5, k=2, cover_decades=True)
    assert set(spread) <= set(covered)
    decades = {len(str(p)) for p in params}
    assert {len(str(params[i])) for i in covered} == decades  # 100s, 1 K, 10 K and 100 K each have one
    assert spread_picks(front, knee=5, k=len(front), cover_decades=True) == list(range(len(front)))
