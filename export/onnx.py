"""PyTorch -> ONNX at a fixed opset, checked with ``onnx.checker``, metadata stamped into the file.

Exporter choice: the TorchScript exporter (``dynamo=False``) at opset 17. On torch 2.14 the dynamo
exporter (the default) took 3.3 s instead of 0.15 s for an 8x8 digits subnet, emits opset 20 and
puts weights into a side ``.onnx.data`` file unless told otherwise; opset 17 is also what onnx2tf
and ONNX Runtime are best tested on. The graph is exported from the BatchNorm-folded model, so it
holds plain Conv (with bias) nodes, which is what onnx2tf and int8 quantisation want.

The model has one input ``input`` (float32 [1, C, H, W], pixels in [0, 1], normalisation inside)
and one output ``logits`` (float32 [1, classes]). A batch of 1 keeps every shape static, as phones
run it; the checks loop over images.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasctl.core import atomic_write_bytes

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
EXPORTER = "torch.onnx.export(dynamo=False) (TorchScript exporter)"


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | os.PathLike) -> dict[str, Any]:
    """Export ``model`` (eval mode) traced on ``example`` [1, C, H, W] to ``path`` atomically.

    Returns facts for the report: opset, exporter, node counts by op type.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                model,
                (example,),
                tmp,
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                do_constant_folding=True,
            )
        proto = onnx.load(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)
    proto.producer_name = "nasctl"
    proto.doc_string = getattr(model, "genome", "") or ""
    onnx.checker.check_model(proto, full_check=True)
    atomic_write_bytes(path, proto.SerializeToString())
    return {"opset": OPSET, "exporter": EXPORTER, "ops": dict(Counter(n.op_type for n in proto.graph.node))}


METADATA_KEY = "nasctl"


def stamp_metadata(path: str | os.PathLike, metadata: dict[str, Any]) -> None:
    """Replace the ONNX file's ``metadata_props`` with ``metadata``.

    The whole dict goes, JSON-encoded, under the key ``nasctl`` (what :func:`read_metadata` returns);
    its scalar top-level entries are repeated as plain string props for viewers such as Netron.
    Only the metadata changes; the graph and weights are written back untouched.
    """
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(metadata, sort_keys=True, default=str))
    for key, value in metadata.items():
        if isinstance(value, (str, int, float, bool)) and key != METADATA_KEY:
            proto.metadata_props.add(key=str(key), value=str(value))
    onnx.checker.check_model(proto)
    atomic_write_bytes(path, proto.SerializeToString())


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata dict stamped by :func:`stamp_metadata` (empty if the file has none)."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(props[METADATA_KEY]) if METADATA_KEY in props else {}
