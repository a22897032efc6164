"""Shared fixtures: small real data and tiny trained models, made by the tests themselves."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
# One thread for every torch in the session: the library calls (the fixture below), the CLI's own
# thread rule (nasctl.threads reads OMP_NUM_THREADS) and the nasctl processes tests start.
os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(scope="session")
def digits():
    from nasctl.nas.data import load_dataset

    return load_dataset("digits", seed=0)


@pytest.fixture(scope="session")
def undefended_model(digits):
    """A small static subnet trained without adversarial examples (clean ~90 %+), for attack tests."""
    from nasctl.nas.space import load_space
    from nasctl.nas.supernet import Supernet

    torch.manual_seed(0)
    space = load_space("digits-ir")
    info = digits.info
    net = Supernet(space, info.in_channels, info.num_classes, info.mean, info.std)
    model = net.extract(space.parse("ir_k3_e3_c16-skip-ir_k3_e3_c32-skip-ir_k3_e3_c48-skip"))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(15):
        for x, y in digits.train.batches(64, shuffle=True, generator=gen):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models run as fast on one thread, and a second busy process on a 2-core machine
    (a benchmark, another test run) then cannot make OpenMP threads spin against each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def load_bench():
    """Import a script from ``bench/`` (not a package) so a test can call its ``main(argv)``."""
    import importlib.util
    from pathlib import Path

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
