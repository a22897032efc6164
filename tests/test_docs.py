"""Every command the documents give (README, BENCHMARKS, docs/) parses as written against today's CLI and
bench scripts, and every repository file it names exists, so a renamed flag or a moved script fails here
instead of on a reader's fresh clone. Parsing only: the commands themselves take minutes to hours (their
results are in BENCHMARKS.md)."""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

from nasctl.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
ENV = re.compile(r"^[A-Z_]+=\S*$")  # OMP_NUM_THREADS=1, OUT=/some/dir
GENERATED = ("bench/cache", "bench/results")  # what the commands write (the cache is ignored by git)
PATHISH = re.compile(r"^(configs|bench|docs|tests|nas|export|profiling|android_bench|nasctl)/[\w./-]+$")


def _fenced_lines(text: str) -> list[str]:
    """The lines of the ```-fenced blocks, continuation lines (ending in a backslash) joined."""
    out, block, pending = [], False, ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            block, pending = not block, ""
            continue
        if not block:
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append(pending + line)
        pending = ""
    return out


def _commands(line: str) -> list[list[str]]:
    """``nasctl ...`` and ``python bench/...`` commands on one shell line (``&&`` chains, env prefixes,
    ``/usr/bin/time -v`` and trailing comments dropped)."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return []
    # "..." stands for the flags of the command above; [--flag VALUE] marks an optional flag
    words = [w.strip("[]") for w in words if w not in ("...", "…")]
    found, cmd = [], []
    for w in [*words, "&&"]:
        if w in ("&&", "||", ";", "|"):
            while cmd and (ENV.match(cmd[0]) or cmd[0] in ("/usr/bin/time", "-v", "time")):
                cmd = cmd[1:]
            if cmd and (cmd[0] in ("nasctl", "bash") or cmd[0].startswith("python") and len(cmd) > 1
                        and cmd[1].startswith("bench/")):
                found.append(cmd)
            cmd = []
        else:
            cmd.append(w)
    return found


def _inline_spans(text: str) -> list[str]:
    """`python bench/...` spans in the prose: a bench script is always given whole. (`nasctl ...` in the
    prose mostly names a command or a flag, with ``…`` for the rest; the fenced blocks give them whole.)"""
    return [m for m in re.findall(r"(?<!`)`([^`\n]+)`(?!`)", text)
            if re.match(r"^(\S+=\S+ )*(/usr/bin/time -v )?python bench/", m)]


def _documented() -> list[tuple[str, list[str]]]:
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for line in [*_fenced_lines(text), *_inline_spans(text)]:
            for cmd in _commands(line):
                out.append((f"{doc.relative_to(ROOT)}: {' '.join(cmd)[:90]}", cmd))
    return out


DOCUMENTED = _documented()


class _Parsed(Exception):
    pass


def _parse_bench_script(script: Path, argv: list[str], monkeypatch) -> None:
    """Run the script's ``main`` up to its ``parse_args`` and stop there."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [str(script), *argv])
    monkeypatch.syspath_prepend(str(script.parent))
    spec = importlib.util.spec_from_file_location(f"_doc_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(_Parsed):
        module.main()


def test_the_documents_give_commands():
    """The extraction finds the README's two set-up commands and the benchmarks' commands (a parser
    change that found none would make every test below vacuous)."""
    names = [label for label, _ in DOCUMENTED]
    assert any(n.startswith("README.md: nasctl search") for n in names)
    assert sum(n.startswith("BENCHMARKS.md: python bench/") for n in names) >= 15
    assert sum(n.startswith("BENCHMARKS.md: nasctl") for n in names) >= 5


@pytest.mark.parametrize("cmd", [c for _, c in DOCUMENTED], ids=[label for label, _ in DOCUMENTED])
def test_documented_command_parses_as_written(cmd, monkeypatch, capsys):
    for word in cmd[1:]:
        generated = any(word == g or word.startswith(g + "/") for g in GENERATED)
        if PATHISH.match(word) and "<" not in word and not generated:
            assert (ROOT / word).exists(), f"{' '.join(cmd)}: {word} is not in the repository"
    if cmd[0] == "nasctl":
        argv = cmd[1:]
        try:
            build_parser(argv).parse_args(argv)
        except SystemExit as e:
            pytest.fail(f"{' '.join(cmd)}: nasctl refuses it ({capsys.readouterr().err.strip()[-300:]}, "
                        f"exit {e.code})")
    elif cmd[0] == "bash":
        assert (ROOT / cmd[1]).is_file(), f"{cmd[1]} is not in the repository"
    else:
        script = ROOT / cmd[1]
        assert script.is_file(), f"{cmd[1]} is not in the repository"
        try:
            _parse_bench_script(script, cmd[2:], monkeypatch)
        except SystemExit as e:
            pytest.fail(f"{' '.join(cmd)}: the script refuses it ({capsys.readouterr().err.strip()[-300:]}, "
                        f"exit {e.code})")
