"""Supernet checkpoints: self-describing, written atomically, loaded with clear errors.

A checkpoint carries the space definition, the data set's shape and normalisation, and the full
training config next to the weights (like nanoGPT's ``ckpt.pt``), so ``load_supernet`` rebuilds the
exact network without any other file. Files are written to a temporary name and renamed, so a
crash mid-write never leaves a truncated checkpoint under the real name.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nasctl.core import (
    mem_available_bytes,
    sha256_file,  # noqa: F401 (the checkpoint's identity, used with load_supernet)
)
from nasctl.errors import NasctlError

from ..space import SearchSpace
from .model import Supernet

FORMAT = "nasctl.supernet.v1"
SUBNET_FORMAT = "nasctl.subnet.v1"  # a fine-tuned subnet (nasctl.nas.supernet.subnet_ckpt writes it)


def read_checkpoint(path: str | os.PathLike, formats: tuple[str, ...] = (FORMAT,)) -> dict[str, Any]:
    """Load a nasctl checkpoint dict, turning every way it can be unreadable into one clear error.

    ``formats``: the checkpoint kinds the caller can use (supernet by default; a fine-tuned subnet's
    ``nasctl.subnet.v1`` too where either works). A run folder stands for the checkpoint inside it.
    """
    path = Path(path)
    if path.is_dir():
        for name in ("supernet.pt", "checkpoint.pt", "subnet.pt"):
            if (path / name).exists():
                path = path / name
                break
        else:
            raise NasctlError(f"{str(path)!r} is a folder without a checkpoint (no supernet.pt, "
                              f"checkpoint.pt or subnet.pt in it): give a training run folder, a finetune "
                              f"run folder or the checkpoint file itself")
    if not path.exists():
        raise NasctlError(f"checkpoint {str(path)!r} does not exist: give the path of a supernet.pt or "
                          f"checkpoint.pt written by 'nasctl train' (or its run folder)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError,
            AttributeError, TypeError) as e:
        raise NasctlError(f"checkpoint {str(path)!r} is corrupt or truncated ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:120] if str(e) else 'unreadable'}): "
                          f"re-run 'nasctl train' "
                          f"(with --resume on its run folder) or pick another checkpoint") from e
    except Exception as e:  # torch's UnpicklingError and friends
        raise NasctlError(f"checkpoint {str(path)!r} is not a nasctl checkpoint ({type(e).__name__}): "
                          f"give a file written by 'nasctl train'") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") not in formats:
        got = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        hint = ("a fine-tuned subnet: use it with 'nasctl eval --checkpoint' or 'nasctl export --checkpoint'"
                if got == SUBNET_FORMAT else "give a file written by 'nasctl train'")
        raise NasctlError(f"checkpoint {str(path)!r} is not a nasctl supernet checkpoint (format {got!r}, "
                          f"expected {' or '.join(map(repr, formats))}): {hint}")
    ckpt["path"] = str(path)
    check_metadata(ckpt)
    return ckpt


DATASET_COUNTS = ("in_channels", "resolution", "num_classes")  # DatasetInfo's fields a model is built from


def check_metadata(ckpt: dict[str, Any]) -> None:
    """The one check of a checkpoint's metadata, run by :func:`read_checkpoint` on every file it reads.

    Every reader (``load_supernet``, a subnet's loader, ``eval``, ``export``, ``profile``, resume) then
    uses ``model``, ``space``, ``dataset``, ``eps`` and ``genome`` without a check of its own: a file that
    loads but whose metadata is missing or of the wrong type -- not written by nasctl, or edited -- is
    one :class:`NasctlError` naming the file, what is wrong and the fix, never a KeyError later.
    """
    from ..space import GenomeError

    subnet = ckpt.get("format") == SUBNET_FORMAT
    redo = ("fine-tune the subnet again ('nasctl finetune', or the search's fine-tune stage)" if subnet
            else "train the supernet again ('nasctl train')")

    def bad(what: str) -> NasctlError:
        return NasctlError(f"checkpoint {ckpt['path']!r} has {what}: it was not written by nasctl, or was "
                           f"edited; {redo}, or pick another checkpoint")

    if not isinstance(ckpt.get("model"), dict):
        raise bad("no model weights ('model' is missing or not a state dict)")
    if not isinstance(ckpt.get("space"), dict):
        raise bad("no search-space definition ('space' is missing or not a mapping)")
    try:
        space = SearchSpace.from_dict(ckpt["space"])
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as e:
        why = f"missing key {e}" if isinstance(e, KeyError) else str(e).splitlines()[0][:160]
        raise bad(f"a search-space definition that does not build ({why})") from e
    dataset = ckpt.get("dataset")
    if not isinstance(dataset, dict):
        raise bad("no data-set description ('dataset' is missing or not a mapping)")
    if not isinstance(dataset.get("name"), str):
        raise bad(f"a data-set description without a name ('name' is {dataset.get('name')!r})")
    for key in DATASET_COUNTS:
        value = dataset.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            got = "missing" if key not in dataset else repr(value)
            raise bad(f"a data-set description whose {key!r} is {got}, not a positive whole number")
    for key in ("mean", "std"):
        values = dataset.get(key)
        if (not isinstance(values, (list, tuple)) or len(values) != dataset["in_channels"]
                or not all(_is_number(v) for v in values)
                or (key == "std" and not all(v > 0 for v in values))):
            raise bad(f"a data-set description whose {key!r} is {values!r}, not {dataset['in_channels']} "
                      f"{'positive ' if key == 'std' else ''}numbers, one per input channel")
    if "eps" in ckpt or subnet:
        eps, key = ckpt.get("eps"), "an eps of"
    else:  # supernet checkpoints from before 'eps' was stored: the data set's default threat model
        eps, key = dataset.get("default_eps"), "no eps and a data-set default_eps of"
    if not _is_number(eps) or not 0 <= eps <= 1:
        raise bad(f"{key} {eps!r}, not an L-inf radius in [0, 1] (pixels are in [0, 1])")
    for key in ("config", "train_config", "source"):
        if ckpt.get(key) is not None and not isinstance(ckpt[key], dict):
            raise bad(f"a {key!r} that is {type(ckpt[key]).__name__}, not a mapping")
    epoch = ckpt.get("epoch", 0)
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise bad(f"an 'epoch' of {epoch!r}, not a count of epochs")
    if subnet:
        if not isinstance(ckpt.get("genome"), str):
            raise bad(f"no genome string ('genome' is {ckpt.get('genome')!r})")
        try:
            space.parse(ckpt["genome"])
        except GenomeError as e:
            raise bad(f"a genome that is not in its own space ({e})") from e


def _is_number(v: Any) -> bool:
    import math

    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class LoadedSupernet:
    supernet: Supernet
    space: SearchSpace
    dataset: dict[str, Any]  # DatasetInfo.to_dict() of the data set it was trained on
    config: dict[str, Any]  # the training config
    epoch: int  # epochs completed
    path: str
    eps: float  # the L-inf budget it was trained with (the data set's default for older checkpoints)


def build_supernet(space: SearchSpace, dataset: dict[str, Any]) -> Supernet:
    return Supernet(space, dataset["in_channels"], dataset["num_classes"], dataset["mean"], dataset["std"])


# bytes of memory training needs per supernet parameter, at least: float32 weights, their gradients and SGD's
# momentum (4 B each), and as much again for activations and the attack's copies (a floor, not a bound)
TRAINING_BYTES_PER_PARAM = 16


def supernet_params(space: SearchSpace, in_channels: int, num_classes: int) -> int:
    """Parameters of ``Supernet(space, in_channels, num_classes, ...)``, from the layer specs alone.

    Nothing is allocated (each family's shapes come from a 2-channel instance's specs), so it is safe for
    any width a space takes; equal to the built supernet's count (tested). Stem and head are counted
    once per few-shot sub-supernet, every layer once per weight family, at the layer's largest width.
    """
    from ..space.blocks import BLOCKS
    from ..space.layers import BNSpec, ConvSpec, LinearSpec
    from .model import last_width, layer_plan, sub_supernets

    n_sub = max(sub_supernets(space)) + 1
    stem = ConvSpec(in_channels, space.stem, 3, space.stem_stride).params() + BNSpec(space.stem).params()
    total = n_sub * stem
    for lc, families, max_in, max_out in layer_plan(space):
        for tokens in families.values():
            tiny = BLOCKS[tokens[0]](2, 2, lc.stride)  # only asked for the shapes of the family's union
            total += sum(spec.params() for spec in tiny.union_specs(tuple(tokens), max_in, max_out).values())
    max_in = last_width(space)
    top = max(space.head_choices)
    head = (ConvSpec(max_in, top, 1).params() + BNSpec(top).params() + LinearSpec(top, num_classes).params()
            if top else 0)
    if 0 in space.head_choices:
        head += LinearSpec(max_in, num_classes).params()
    return total + n_sub * head


def available_memory_bytes() -> int | None:
    """Memory this process could still get: the kernel's MemAvailable (``/proc/meminfo``), capped by a
    cgroup v2 limit when there is one; ``os.sysconf``'s free pages where neither exists; None: unknown."""
    avail = mem_available_bytes()
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit.isdigit():
            avail = min(avail, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return avail


def check_supernet_fits(space: SearchSpace, in_channels: int, num_classes: int,
                        available: int | None = None) -> int:
    """Refuse, before anything is allocated, a supernet whose training cannot fit in memory.

    The estimate is :func:`supernet_params` x :data:`TRAINING_BYTES_PER_PARAM`, compared with
    ``available`` bytes (default: :func:`available_memory_bytes`; the supernet is built in host memory
    first, even when it trains on a GPU). Returns the estimate in bytes. Train, search (the supernet it
    trains first) and the width study all pass here, through ``TrainConfig.validate``.
    """
    params = supernet_params(space, in_channels, num_classes)
    need = params * TRAINING_BYTES_PER_PARAM
    available = available_memory_bytes() if available is None else available
    if available is not None and need > available:
        raise NasctlError(f"--width-mult {space.width_mult:g} is too wide for this machine: the supernet "
                          f"of space {space.describe()} would have {params / 1e6:,.1f} M parameters, and "
                          f"training it needs at least {_gib(need)} of memory (float32 weights, gradients, "
                          f"optimiser state, activations) but {_gib(available)} is available: choose a "
                          f"smaller --width-mult (or a smaller --space)")
    return need


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**27 else f"{n / 2**20:,.0f} MiB"


def load_weights(model: torch.nn.Module, ckpt: dict[str, Any], what: str) -> None:
    """Load a checkpoint's ``model`` weights into the network its own ``what`` (space, genome) describes:
    a mismatch means another nasctl version wrote it, said in one line."""
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, AttributeError, KeyError) as e:
        raise NasctlError(f"checkpoint {ckpt['path']!r} does not match its own {what} "
                          f"({str(e).splitlines()[0][:120]}): it was written by another nasctl "
                          f"version") from e


def load_supernet(path: str | os.PathLike, expect_space: SearchSpace | None = None) -> LoadedSupernet:
    """Rebuild a trained supernet from its checkpoint (eval mode, on the CPU).

    ``expect_space`` guards against mixing runs: a checkpoint from another space or width raises.
    """
    ckpt = read_checkpoint(path)
    space = SearchSpace.from_dict(ckpt["space"])
    if expect_space is not None and space.to_dict() != expect_space.to_dict():
        raise NasctlError(f"checkpoint {ckpt['path']!r} was trained on space {space.describe()}, not "
                          f"{expect_space.describe()}: pass the matching --space/--width-mult "
                          f"or another checkpoint")
    net = build_supernet(space, ckpt["dataset"])
    load_weights(net, ckpt, "space definition")
    net.eval()
    return LoadedSupernet(net, space, ckpt["dataset"], ckpt.get("config") or {}, int(ckpt.get("epoch", 0)),
                          ckpt["path"],
                          float(ckpt["eps"] if "eps" in ckpt else ckpt["dataset"]["default_eps"]))
