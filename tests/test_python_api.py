"""The Python API (``import nasctl``): docs/python.md's code runs as written, ``member.model()`` is the
network export ships, and a bad argument is named as the caller wrote it."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest
import torch

import nasctl

PAGE = Path(__file__).resolve().parents[1] / "docs" / "python.md"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)


@pytest.fixture(scope="module")
def page_run(tmp_path_factory):
    """Every ```python block of docs/python.md, run in order in one namespace (``tmp``: a fresh folder)."""
    blocks = _python_blocks(PAGE.read_text())
    assert len(blocks) >= 3, "docs/python.md lost its code blocks"
    ns = {"tmp": tmp_path_factory.mktemp("py")}
    for code in blocks:
        exec(compile(code, str(PAGE), "exec"), ns)  # noqa: S102 - the page's own code, as a reader runs it
    return ns


def test_python_page_runs(page_run):
    run, result = page_run["run"], page_run["result"]
    assert isinstance(run, nasctl.SearchRun) and run.front and run.knee is page_run["knee"]
    assert (run.run_dir / "pareto.json").is_file() and run.config["pop_size"] == 6
    assert run.knee.is_knee and run.knee.finetuned and run.knee.finetuned_adv_acc is not None
    assert result.ok and (result.out_dir / "model.onnx").is_file()
    assert result.report["source"]["front_index"] == run.knee.index


def test_member_model_is_the_network_export_ships(page_run, tmp_path):
    """Fine-tuned: the checkpoint's weights. Inherited: BatchNorm statistics equal to those export's
    prepare step computes for the same member."""
    from nasctl.export import pipeline
    from nasctl.export.steps import STEPS
    from nasctl.nas.supernet.subnet_ckpt import load_subnet

    run = page_run["run"]
    knee = run.knee
    want = load_subnet(run.run_dir / knee.entry["finetuned_checkpoint"]).model.state_dict()
    got = knee.model().state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)

    inherited = next((m for m in run.front if not m.finetuned), None)
    if inherited is None:
        pytest.skip("every member of this front was fine-tuned")
    model = inherited.model()
    assert not model.training and sum(p.numel() for p in model.parameters()) == inherited.params
    cfg = pipeline.ExportConfig(run=str(run.run_dir), pick=str(inherited.index), target="onnx",
                                out=str(tmp_path / "e"))
    with contextlib.ExitStack() as held:
        ctx = pipeline.setup_export(cfg, None, held)
        STEPS["prepare"](ctx)
    exported, ours = ctx.float_model.state_dict(), model.state_dict()
    stats = [k for k in ours if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(ours[k], exported[k]) for k in stats)
    x = torch.rand(4, 1, 8, 8)
    assert torch.allclose(model(x), ctx.float_model.eval()(x), atol=1e-6)


def test_open_run_reads_the_same_front(page_run):
    run = page_run["run"]
    again = nasctl.open_run(run.run_dir / "pareto.json")
    assert [(m.genome, m.params, m.adv_acc) for m in again.front] == [
        (m.genome, m.params, m.adv_acc) for m in run.front]
    assert again.knee.index == run.knee.index


def test_bad_arguments_are_named_as_written(tmp_path, page_run):
    from nasctl.errors import NasctlError

    with pytest.raises(NasctlError, match=r"unknown setting 'pop_sise'.*did you mean 'pop_size'"):
        nasctl.search(pop_sise=4, run_root=str(tmp_path))
    with pytest.raises(NasctlError) as e:
        nasctl.search(finetune_members=-1, run_root=str(tmp_path))
    assert "finetune_members must be >= 0" in str(e.value) and "--" not in str(e.value)
    with pytest.raises(NasctlError, match="unknown argument 'in8'"):
        nasctl.export(page_run["run"].knee, in8=True)
    with pytest.raises(NasctlError, match="run folder|does not exist|no pareto.json"):
        nasctl.open_run(tmp_path / "nowhere")
    assert not (tmp_path / "search").exists()  # refused before any run folder


def test_the_names_are_visible_without_loading_torch_first():
    """``nasctl.__all__`` lists the API; ``nasctl.export`` is the export package and callable."""
    assert {"search", "open_run", "export", "SearchRun", "Member", "Progress"} <= set(nasctl.__all__)
    assert callable(nasctl.export) and nasctl.export.ExportConfig is not None
    assert nasctl.search is nasctl.api.search
