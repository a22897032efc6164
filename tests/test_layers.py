"""The layers of the product packages, read from the source with ``ast`` (function-local imports
included: a late import does not dodge the rule).

The ground layer (``nasctl.errors``, ``nasctl.yaml_strict``, ``nasctl.core``, ``nasctl.config``,
``nasctl.runfolder``, ``nasctl.threads``) imports nothing above it, so any package can use run folders,
configs and errors without pulling in the search. Above it the packages stand in the order of
:data:`PACKAGE_ORDER`; an import from a lower package into a higher one fails. What a lower layer needs
from a higher one is handed in (the search's ``LatencyProvider``) or named as a ``module:function``
plug-in (profiling's ``DEVICE_PLUGINS``), never imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# import name -> source folder (pyproject's package-dir)
PACKAGES = {"nasctl": ROOT / "nasctl", "nasctl.nas": ROOT / "nas", "nasctl.export": ROOT / "export",
            "nasctl.profiling": ROOT / "profiling", "nasctl.android_bench": ROOT / "android_bench"}
GROUND = ("nasctl.errors", "nasctl.yaml_strict", "nasctl.core", "nasctl.config", "nasctl.runfolder",
          "nasctl.threads", "nasctl.workers", "nasctl.procfs")
# low to high; the CLI and the Python API (everything else under nasctl/) sit on top of all of them
PACKAGE_ORDER = ("ground", "nasctl.nas", "nasctl.export", "nasctl.profiling", "nasctl.android_bench",
                 "nasctl (cli, api)")
# nas/'s own layers, low to high (docs/design.md §12): a module of one may import only its own layer and
# those before it. The package's __init__ (the lazy facade over all of them) stands above them all.
NAS_LAYERS = ("data", "space", "supernet", "attacks", "training", "search", "render", "runs", "experiments",
              "report")


def module_files() -> dict[str, Path]:
    """Every product module by its import name."""
    out = {}
    for pkg, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("").parts
            if pkg == "nasctl" and rel[0] in ("nas", "export", "profiling", "android_bench"):
                continue  # a development symlink, not part of the nasctl/ folder
            parts = rel[:-1] if rel[-1] == "__init__" else rel
            out[".".join((pkg, *parts))] = path
    return out


def imports_of(name: str, path: Path) -> set[str]:
    """The product modules ``name`` imports anywhere in its file (top level or inside functions)."""
    tree = ast.parse(path.read_text(), str(path))
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from pkg import name``: pkg.name, which edges() trims to the module it is in (pkg itself, or
            # the submodule pkg.name)
            found.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {t for t in found if t == "nasctl" or t.startswith("nasctl.")}


def layer(name: str) -> int:
    if name in GROUND or any(name.startswith(g + ".") for g in GROUND):
        return 0
    for i, pkg in enumerate(PACKAGE_ORDER[1:-1], start=1):
        if name == pkg or name.startswith(pkg + "."):
            return i
    return len(PACKAGE_ORDER) - 1


def resolve(target: str, files: dict) -> str:
    """The module an imported dotted name lives in: itself when it is a module, else its nearest parent."""
    while target not in files and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


def edges() -> set[tuple[str, str]]:
    files = module_files()
    out = set()
    for name, path in files.items():
        for target in imports_of(name, path):
            target = resolve(target, files)
            if target in files and target != name:
                out.add((name, target))
    return out


def test_the_import_reader_sees_late_imports(tmp_path):
    """The reader itself: a function-local import and a relative one are both seen."""
    src = tmp_path / "m.py"
    src.write_text("from .errors import NasctlError\n\ndef f():\n    from nasctl.profiling import store\n")
    assert imports_of("nasctl.nas.m", src) == {"nasctl.nas.errors.NasctlError", "nasctl.profiling.store"}
    names = dict.fromkeys(["nasctl.nas.m", "nasctl.nas.errors", "nasctl.profiling", "nasctl.profiling.store"])
    assert resolve("nasctl.nas.errors.NasctlError", names) == "nasctl.nas.errors"  # a name: its module
    assert resolve("nasctl.profiling.store", names) == "nasctl.profiling.store"  # a submodule: itself


def test_ground_layer_imports_nothing_above_it():
    files = module_files()
    assert set(GROUND) <= set(files), "a ground module is missing"
    above = sorted((a, b) for a, b in edges() if layer(a) == 0 and layer(b) > 0)
    assert not above, f"ground modules import layers above them: {above}"


def test_no_package_imports_one_above_it():
    upward = {(a, b) for a, b in edges() if layer(b) > layer(a)}
    assert not upward, (f"imports from a lower layer into a higher one (order: {' < '.join(PACKAGE_ORDER)}): "
                        f"{sorted(upward)}")



def nas_layer(name: str) -> int | None:
    """The rank of a ``nasctl.nas`` module's layer (None: the package facade, or not under nas)."""
    parts = name.split(".")
    if parts[:2] != ["nasctl", "nas"] or len(parts) < 3:
        return None
    return NAS_LAYERS.index(parts[2])


def test_nas_is_layered_subpackages():
    """nas/ shows its layers as folders: at most four modules at its top level, each other module in one
    of :data:`NAS_LAYERS`, and no module imports a layer above its own."""
    top = sorted(p.name for p in (ROOT / "nas").glob("*.py"))
    assert len(top) <= 4, f"nas/ has {len(top)} top-level modules: {top}"
    files = module_files()
    for name in files:
        if name.startswith("nasctl.nas.") and name.split(".")[2] not in NAS_LAYERS:
            raise AssertionError(f"{name} is in no layer of NAS_LAYERS {NAS_LAYERS}")
    upward = sorted((a, b) for a, b in edges()
                    if nas_layer(a) is not None and nas_layer(b) is not None and nas_layer(b) > nas_layer(a))
    assert not upward, f"nas/ modules import a layer above their own ({' < '.join(NAS_LAYERS)}): {upward}"


def test_no_import_circle():
    """No product module reaches itself through its imports (function-local ones included)."""
    import graphlib

    graph: dict[str, set[str]] = {}
    for a, b in edges():
        graph.setdefault(a, set()).add(b)
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        raise AssertionError(f"import circle: {' -> '.join(e.args[1])}") from None


def test_every_lazily_exported_name_resolves():
    """The packages that resolve names on first use (PEP 562) serve every name they list: a module moved
    under a subpackage cannot leave a name pointing at its old place."""
    import importlib

    for pkg in ("nasctl", "nasctl.nas", "nasctl.nas.data", "nasctl.nas.runs", "nasctl.nas.training",
                "nasctl.nas.render", "nasctl.profiling"):
        module = importlib.import_module(pkg)
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{pkg}.{name}"


def test_pyproject_lists_every_package_folder():
    """A plain (non-editable) ``pip install .`` packages only what ``[tool.setuptools] packages`` lists:
    the layered subpackages of ``nas/`` were once missing from it, which an editable install hides (it
    finds them through the folder) but a wheel drops, so ``import nasctl.nas.runs`` failed there. Every
    folder with an ``__init__.py`` under the product folders must be listed, and every listed one exist."""
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {k: ROOT / v for k, v in cfg["package-dir"].items()} == PACKAGES
    on_disk = {name for name, path in module_files().items() if path.name == "__init__.py"}
    assert set(cfg["packages"]) == on_disk, (sorted(on_disk - set(cfg["packages"])),
                                             sorted(set(cfg["packages"]) - on_disk))
