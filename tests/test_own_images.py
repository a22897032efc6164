"""A user's own images end to end: an RGB image folder in, a searched, fine-tuned, labelled and verified
int8 TFLite model out, at 16x16, 32x32 and 64x64 (the ``auto`` space at each resolution).

The int8 model is then checked the way its user would: the folder's test images read with plain
Pillow (not nasctl), run through LiteRT, and scored against ``labels.txt``; the accuracy must be
within a point of what ``report.json`` says.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nasctl.cli import main

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def rgb_digits_folder(root: Path, size: int, per_class_test: int = 6) -> Path:
    """scikit-learn's digits as RGB PNGs of ``size`` x ``size`` in ``root/train|test/<name>/``: each
    class's first ``per_class_test`` images are its test images."""
    from sklearn.datasets import load_digits

    d = load_digits()
    seen: dict[int, int] = {}
    for i, (img, y) in enumerate(zip(d.images, d.target)):
        g = Image.fromarray((img / 16 * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
        g = np.asarray(g)
        rgb = np.stack([g, (g * 0.6).astype(np.uint8), 255 - g], -1)  # colour that carries the digit
        split = "test" if seen.get(int(y), 0) < per_class_test else "train"
        seen[int(y)] = seen.get(int(y), 0) + 1
        out = root / split / NAMES[y] / f"{i:05d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(out)
    return root


def int8_accuracy_by_pillow(model: Path, labels: list[str], test_dir: Path) -> float:
    """Top-1 accuracy of a full-int8 TFLite model on a folder of class folders, read by Pillow."""
    # imported here, late: TensorFlow's libraries must load after torch's
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(str(model))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    scale, zero = inp["quantization"]
    right = total = 0
    for path in sorted(test_dir.glob("*/*.png")):
        x = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)[None] / 255.0  # NHWC in [0, 1]
        q = np.clip(np.round(x / scale + zero), -128, 127).astype(inp["dtype"])
        it.set_tensor(inp["index"], q)
        it.invoke()
        pred = labels[int(np.argmax(it.get_tensor(out["index"])[0]))]
        right += pred == path.parent.name
        total += 1
    return 100.0 * right / total


# 16x16 in every run of the suite; 32x32 and 64x64 (a minute more each) with -m slow
SLOW = pytest.mark.slow


@pytest.mark.parametrize("size", [16, pytest.param(32, marks=SLOW), pytest.param(64, marks=SLOW)])
def test_a_folder_of_rgb_images_becomes_a_labelled_verified_int8_model(size, tmp_path, monkeypatch):
    monkeypatch.setenv("NASCTL_CACHE_DIR", str(tmp_path / "cache"))
    folder = rgb_digits_folder(tmp_path / "images", size)
    runs = tmp_path / "runs"
    assert main(["search", "--dataset", f"folder:{folder}", "--epochs", "2", "--pop-size", "4",
                 "--generations", "1", "--val-size", "40", "--pgd-steps", "1", "--finetune-members", "1",
                 "--finetune-epochs", "2", "--max-params", "30000", "--run-root", str(runs)]) == 0
    run = next((runs / "search").iterdir())
    pareto = json.loads((run / "pareto.json").read_text())
    assert pareto["dataset"] == f"folder:{folder}" and pareto["classes"] == sorted(NAMES)
    assert pareto["space"]["name"] == f"auto-{size}" and pareto["eps"] == pytest.approx(8 / 255)
    assert json.loads((run / "config.json").read_text())["config"]["dataset"] == f"folder:{folder}"

    out = tmp_path / "export"
    assert main(["export", "--run", str(run), "--target", "tflite", "--int8", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "ok" and report["labels"] == "labels.txt" and "labels.txt" in report["files"]
    labels = (out / "labels.txt").read_text().splitlines()
    assert labels == sorted(NAMES)
    assert json.loads((out / "metadata.json").read_text())["labels"]["names"] == labels
    check = report["checks"]["tflite_int8"]["detail"]
    assert check["split"] == "test" and check["images"] == 60  # the folder's test/ images, all of them
    ours = int8_accuracy_by_pillow(out / "model_int8.tflite", labels, folder / "test")
    assert abs(ours - check["int8_acc"]) <= 1.0, (ours, check)
    if size != 16:
        return
    # the commands that reload the data from the run's stored name take it too
    assert main(["eval", "--run", str(run), "--steps", "2", "--restarts", "1", "--square-queries", "10",
                 "--n-images", "20", "--autoattack", "apgd", "--run-root", str(runs)]) == 0
    evald = json.loads(next((runs / "eval").glob("*/eval.json")).read_text())
    # scored on the folder's test images (20 of its 60) under the folder's threat model, read from the run
    assert evald["status"] == "complete" and evald["results"][0]["images"] == 20
    assert evald["results"][0]["eps"] == pytest.approx(8 / 255)
    assert main(["finetune", "--run", str(run), "--epochs", "1", "--run-root", str(runs)]) == 0
    tuned = json.loads(next((runs / "finetune").glob("*/result.json")).read_text())
    assert tuned["images"] == 60 and 0 <= tuned["clean_acc"] <= 100
    assert main(["report", str(run), "--run-root", str(runs)]) == 0
    assert "classes (10): eight, five, four" in (run / "report.md").read_text()


def test_the_same_folder_gives_the_same_front_decoded_or_from_the_cache(tmp_path, monkeypatch):
    """Same seed, same front: the first search decodes the folder, the second reads the decode cache."""
    monkeypatch.setenv("NASCTL_CACHE_DIR", str(tmp_path / "cache"))
    folder = rgb_digits_folder(tmp_path / "images", 8)
    fronts = []
    for i in range(2):
        runs = tmp_path / f"runs{i}"
        assert main(["search", "--dataset", f"folder:{folder}", "--epochs", "1", "--pop-size", "4",
                     "--generations", "2", "--val-size", "40", "--pgd-steps", "1", "--finetune-members", "0",
                     "--test-size", "30", "--run-root", str(runs)]) == 0
        doc = json.loads(next((runs / "search").glob("*/pareto.json")).read_text())
        fronts.append([(m["genome"], m["clean_acc"], m["adv_acc"], m["final_adv_acc"]) for m in doc["front"]])
    assert fronts[0] == fronts[1] and fronts[0]
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 1  # decoded once


def test_the_search_takes_ready_splits_and_gives_the_front_of_the_same_data_by_name(tmp_path):
    """``search(cfg, data=splits)``: the splits a caller has in hand. The built-in digits passed as splits
    give exactly the front of the search that loads them by name; the same arrays under a name nasctl
    does not know are searched in the ``auto`` space built for their resolution."""
    import dataclasses

    from nasctl.nas.data import DataSplits, load_dataset
    from nasctl.nas.runs.search import search
    from nasctl.nas.search import SearchConfig

    small = dict(epochs=1, pop_size=4, generations=2, val_size=40, pgd_steps=1, finetune_members=0,
                 test_size=30, train={"train_subset": 300})
    by_name = json.loads(search(SearchConfig(run_root=str(tmp_path / "a"), **small)).read_text())
    digits = load_dataset("digits", seed=0)
    given = json.loads(search(SearchConfig(run_root=str(tmp_path / "b"), **small), data=digits).read_text())
    assert given["front"] and [m["genome"] for m in given["front"]] == [m["genome"] for m in by_name["front"]]
    assert ([(m["clean_acc"], m["adv_acc"], m["final_adv_acc"]) for m in given["front"]]
            == [(m["clean_acc"], m["adv_acc"], m["final_adv_acc"]) for m in by_name["front"]])
    info = dataclasses.replace(digits.info, name="my-digits")
    mine = DataSplits(info, digits.train, digits.val, digits.test)
    doc = json.loads(search(SearchConfig(run_root=str(tmp_path / "c"), **small), data=mine).read_text())
    assert doc["dataset"] == "my-digits" and doc["space"]["name"] == "auto-8" and doc["front"]
