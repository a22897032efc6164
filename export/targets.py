"""The registry of export targets: what each one writes, which steps it runs, what it needs installed.

A target is data, not an if/elif chain: the pipeline runs ``target.steps`` (plus ``int8_steps`` with
``--int8``) by name. Adding a target is one :func:`register_target` call and the step functions it
names; tests parametrised over :data:`TARGETS` cover it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from nasctl.core import did_you_mean

from .errors import ExportError

EXTRA_HINT = "pip install 'nasctl[export]'"


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    steps: tuple[str, ...]  # step names run in order (see pipeline.STEPS)
    artifacts: tuple[str, ...]  # files written by ``steps``
    modules: tuple[str, ...]  # import names it needs from the export extra
    int8_steps: tuple[str, ...] = ()  # extra steps with --int8; empty: --int8 not supported
    int8_artifacts: tuple[str, ...] = ()

    @property
    def supports_int8(self) -> bool:
        return bool(self.int8_steps)

    def plan(self, int8: bool) -> tuple[str, ...]:
        return self.steps + (self.int8_steps if int8 else ())


TARGETS: dict[str, Target] = {}


def register_target(target: Target) -> Target:
    if target.name in TARGETS:
        raise ValueError(f"export target {target.name!r} registered twice")
    TARGETS[target.name] = target
    return target


register_target(
    Target(
        "onnx",
        "ONNX (opset 17) checked with onnx.checker and ONNX Runtime against PyTorch",
        steps=("prepare", "onnx"),
        artifacts=("model.onnx",),
        modules=("onnx", "onnxruntime"),
    )
)
register_target(
    Target(
        "tflite",
        "TFLite float32 through onnx2tf, optionally full-integer int8, run with LiteRT",
        steps=("prepare", "onnx", "tflite_float32"),
        artifacts=("model.onnx", "model_float32.tflite"),
        modules=("onnx", "onnxruntime", "onnxsim", "onnx2tf", "tensorflow", "tf_keras", "ai_edge_litert"),
        int8_steps=("tflite_int8", "robustness"),
        int8_artifacts=("model_int8.tflite",),
    )
)


def get_target(name: str) -> Target:
    """The registered target ``name``; an unknown name raises with the known ones and a guess."""
    if name in TARGETS:
        return TARGETS[name]
    hint = did_you_mean(name, TARGETS)
    raise ExportError(f"unknown export target {name!r}{hint} (--target takes {', '.join(TARGETS)})")


def missing_modules(modules: tuple[str, ...] | list[str]) -> list[str]:
    """Import names among ``modules`` that cannot be imported (found without importing them)."""
    missing = []
    for mod in modules:
        try:
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):  # a parent package missing, or a module set to None
            found = False
        if not found:
            missing.append(mod)
    return missing


def require_installed(target: Target) -> None:
    """Raise one line naming the missing packages and ``pip install 'nasctl[export]'``."""
    missing = missing_modules(target.modules)
    if missing:
        raise ExportError(
            f"--target {target.name} needs the export extra, which is not installed "
            f"(missing: {', '.join(missing)}): {EXTRA_HINT}"
        )
