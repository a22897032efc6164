"""A hostile user's probe (issue 26), case by case through the command line, each against real run folders:

1. ``report --out X.html`` writes its Markdown twin ``X.md`` only where no one else's file is (a user's
   notes, the run's own ``summary.md``), atomically, and never over a file that appears meanwhile.
2. A plot missing from a run folder is a visible note on the page (naming it and the command that draws
   it again) and a warning line on stderr; the command it names does draw it again.
3. Strings from the data (genomes, folder and class names) cannot inject HTML or Markdown into the report.
4. A YAML file (``--config``, ``--space``) that sets one key twice is one error line naming the key, the
   file and both lines, not a silent "the later wins".
5. After Ctrl-C the printed continue command is one that works (train stopped during or after epoch 1,
   a study stopped between cells); it is run exactly as printed.
6. Each command handed a folder of the wrong kind says what the folder is, and every flag its error line
   suggests exists on the command it is suggested for.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shlex
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from nasctl.cli import COMMANDS, build_parser, interrupt_hint, main
from nasctl.errors import NasctlError
from nasctl.nas import report as report_page
from nasctl.yaml_strict import DuplicateKeyError, load_strict

from .test_probe import error_line, fails, search_run, supernet, tree  # noqa: F401 (the fixtures)

PLOTS = ("front_projections.png", "hypervolume.png", "layer_heatmap.png")


def copy_run(search_run: Path, tmp_path: Path, name: str = "run") -> Path:  # noqa: F811
    run = tmp_path / name
    shutil.copytree(search_run, run)
    return run


def temp_files(folder: Path) -> list[str]:
    """Leftovers of a write that was not atomic or not cleaned up (atomic_write_with's temp names)."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# --- 1. the Markdown twin of --out ------------------------------------------------------------------------
def test_report_out_refuses_to_replace_a_users_markdown_beside_it(search_run, tmp_path, capsys):  # noqa: F811
    notes = tmp_path / "mynotes.md"
    notes.write_text("# my notes\n\nnot a report\n")
    page = tmp_path / "mynotes.html"
    line = fails(capsys, ["report", str(search_run), "--out", str(page)],
                 f"--out {str(page)!r} would write {str(notes)!r}", "no 'nasctl report' wrote",
                 "never replaces a file it did not write", "move that file away")
    assert "give a new file name ending in .html with --out" in line
    assert notes.read_text() == "# my notes\n\nnot a report\n"
    assert not page.exists() and temp_files(tmp_path) == []


def test_report_never_touches_the_runs_summary_md(search_run, tmp_path, capsys):  # noqa: F811
    run = copy_run(search_run, tmp_path)
    before = tree(run)
    fails(capsys, ["report", str(run), "--out", str(run / "summary.html")],
          f"would write {str(run / 'summary.md')!r}", "one of the run's own files")
    assert tree(run) == before
    # elsewhere too: a summary.md that is not a report (here another run's) is never replaced
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(run / "summary.md", other / "summary.md")
    fails(capsys, ["report", str(run), "--out", str(other / "summary.html")], str(other / "summary.md"),
          "no 'nasctl report' wrote")
    assert (other / "summary.md").read_bytes() == before["summary.md"]
    # the default page goes beside it and leaves it as it was
    assert main(["report", str(run)]) == 0
    assert (run / "summary.md").read_bytes() == before["summary.md"]
    assert (run / "report.md").read_text().startswith(report_page.MD_MARKER)


def test_report_replaces_its_own_pages_atomically(search_run, tmp_path):  # noqa: F811
    page, md = tmp_path / "out" / "page.html", tmp_path / "out" / "page.md"
    assert main(["report", str(search_run), "--out", str(page)]) == 0  # a new folder is made for it
    first = md.read_text()
    md.write_text(first.replace("## Provenance", "## stale"))  # still our marker: an earlier report
    assert main(["report", str(search_run), "--out", str(page)]) == 0
    assert md.read_text() == first and temp_files(page.parent) == []


def test_report_does_not_replace_a_file_that_appears_while_it_renders(search_run, tmp_path, monkeypatch):  # noqa: F811
    page, md = tmp_path / "page.html", tmp_path / "page.md"
    collect = report_page.collect

    def collect_while_someone_writes(*args, **kwargs):
        md.write_text("written by someone else meanwhile\n")
        return collect(*args, **kwargs)

    monkeypatch.setattr(report_page, "collect", collect_while_someone_writes)
    with pytest.raises(NasctlError, match="which is now a file that no 'nasctl report' wrote"):
        report_page.write_report(search_run, page)
    assert md.read_text() == "written by someone else meanwhile\n"
    assert not page.exists() and temp_files(tmp_path) == []  # neither page written, nothing left behind


# --- 2. a missing plot ------------------------------------------------------------------------------------
def test_missing_plot_is_a_note_on_the_page_and_a_warning_and_the_fix_works(search_run, tmp_path,  # noqa: F811
                                                                           capsys):
    run = copy_run(search_run, tmp_path)
    (run / "hypervolume.png").unlink()
    (run / "layer_heatmap.png").unlink()
    assert main(["report", str(run)]) == 0
    err = capsys.readouterr().err
    # (the run's tiny fine-tunings may add an AutoAttack-gap note of their own: not this test's)
    warnings = [ln for ln in err.splitlines() if ln.startswith("nasctl: warning: the plot ")]
    assert len(warnings) == 2, err
    redraw = f"nasctl search --resume {run}"
    for name, warning in zip(("hypervolume.png", "layer_heatmap.png"), warnings):
        assert f"the plot {name}" in warning and f"missing from {run}" in warning and redraw in warning
    html = (run / "report.html").read_text()
    md = (run / "report.md").read_text()
    notes = re.findall(r'<p class="note"><strong>Note:</strong> (the plot .*?)</p>', html)
    assert len(notes) == 2 and "hypervolume.png" in notes[0] and "layer_heatmap.png" in notes[1]
    assert all(redraw in n for n in notes)
    assert html.count("<img ") == 1  # the front projections only
    md_notes = [ln for ln in md.splitlines() if ln.startswith("**Note:** the plot")]
    assert len(md_notes) == 2 and "hypervolume.png" in md_notes[0] and redraw in md_notes[0]

    # the command the note names draws them again; then the page has every plot and nothing to warn about
    assert main(shlex.split(redraw)[1:]) == 0
    assert all((run / p).is_file() for p in PLOTS)
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    assert "warning: the plot" not in capsys.readouterr().err
    html = (run / "report.html").read_text()
    assert "Note:</strong> the plot" not in html and html.count("<img ") == 3


# --- 3. HTML and Markdown from the data -------------------------------------------------------------------
class _Cells(HTMLParser):
    """Text of every table cell, and every start tag, of an HTML page."""

    def __init__(self):
        super().__init__()
        self.cells: list[str] = []
        self.tags: set[str] = set()
        self._cell: str | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag == "td":
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.cells.append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def test_report_escapes_html_and_markdown_from_the_data(search_run, tmp_path):  # noqa: F811
    from nasctl.nas.render.outputs import summary_markdown

    run = copy_run(search_run, tmp_path, "20250101-<b>bold<i>")
    doc = json.loads((run / "pareto.json").read_text())
    evil = "<script>alert(1)</script>"
    doc["front"][0]["genome"] = evil
    doc["classes"] = ["<b>cat</b>", "*dog*", "[x](http://evil)"]
    doc["dataset"] = "folder:/data/<img src=x onerror=alert(1)>"
    (run / "pareto.json").write_text(json.dumps(doc))
    html_path, md_path = report_page.write_report(run)

    md = md_path.read_text()
    for raw in ("<script", "<b>", "<img", "*dog*"):
        assert raw not in md, raw
    assert not re.search(r"(?<!\\)\]\(http://evil\)", md)  # no link: its bracket is escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in md and "&lt;b&gt;bold&lt;i&gt;" in md
    assert "\\*dog\\*" in md and "\\[x\\](http://evil)" in md
    assert "&lt;img src=x onerror=alert(1)&gt;" in md

    html = html_path.read_text()
    page = _Cells()
    page.feed(html)
    assert "script" not in page.tags and "b" not in page.tags and page.tags >= {"table", "img"}
    assert evil in page.cells  # shown as text, exactly as the data has it
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<b>" not in html

    # the search's own summary.md takes the run's and data set's names through the same escaping
    history = json.loads((run / "history.json").read_text())["generations"]
    summary = summary_markdown({**doc, "run": run.name}, doc["front"], doc["knee"], history)
    assert "<b>" not in summary and "<img" not in summary and "&lt;b&gt;bold&lt;i&gt;" in summary


def test_md_escape_keeps_genomes_and_file_names_readable():
    esc = report_page.md_escape
    assert esc("stem_c4-conv_k3_c16-skip") == "stem_c4-conv_k3_c16-skip"
    assert esc("front_projections.png") == "front_projections.png"
    assert esc("# not a heading") == "\\# not a heading" and esc("- not a list") == "\\- not a list"
    assert esc("12. not a list") == "12\\. not a list" and esc("_x_ `y` |z|") == "\\_x\\_ \\`y\\` \\|z\\|"
    assert esc("two\nlines") == "two lines"


# --- 4. duplicate YAML keys -------------------------------------------------------------------------------
def test_config_with_a_key_twice_is_one_line_naming_key_file_and_lines(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("epochs: 60\nbatch_size: 32\nepochs: 2\n")
    fails(capsys, ["train", "--config", str(cfg), "--run-root", str(tmp_path)],
          f"config file {str(cfg)!r} sets 'epochs' twice, at line 1 and again at line 3", "keep one of them")
    cfg.write_text("lr: 0.1\nbatch-size: 8\nbatch_size: 16\n")  # two spellings of one setting
    fails(capsys, ["train", "--config", str(cfg), "--run-root", str(tmp_path)],
          "sets 'batch_size' twice, at line 2 and again at line 3")
    assert not (tmp_path / "train").exists()  # refused before any run folder


def test_space_file_with_a_key_twice_is_one_line(tmp_path, capsys):
    from nasctl.nas.space.space import BUILTIN_DIR

    text = (BUILTIN_DIR / "digits.yaml").read_text()
    assert re.search(r"^stem_stride:", text, re.M), "the built-in space names its stem stride"
    space = tmp_path / "space.yaml"
    space.write_text(text + "stem_stride: 2\n")
    first = 1 + text.splitlines().index(next(ln for ln in text.splitlines() if ln.startswith("stem_stride:")))
    last = len(text.splitlines()) + 1
    fails(capsys, ["train", "--space", str(space), "--epochs", "1", "--run-root", str(tmp_path)],
          f"search space file {str(space)!r} sets 'stem_stride' twice",
          f"at line {first} and again at line {last}")
    assert not list(tmp_path.rglob("config.json"))  # no run folder left behind


def test_load_strict_keeps_merge_keys_and_catches_flow_mappings():
    assert load_strict("a: &x {k: 1}\nb:\n  <<: *x\n  k: 2\n") == {"a": {"k": 1}, "b": {"k": 2}}
    with pytest.raises(DuplicateKeyError) as e:
        load_strict("outer:\n  {a: 1, a: 2}\n")
    assert (e.value.key, e.value.first, e.value.line) == ("a", 2, 2)


# --- 5. Ctrl-C, then exactly the printed command ----------------------------------------------------------
TINY_TRAIN = ["--limit-train", "64", "--epochs", "2", "--width-mult", "0.5", "--attack-steps", "1"]


def _interrupting_progress(monkeypatch, hook: str):
    """``nasctl train``'s epoch callbacks, raising KeyboardInterrupt once from ``hook`` (as Ctrl-C would)."""
    import nasctl.commands.train as train_cmd
    from nasctl.commands._common import epoch_progress

    fired = []

    def progress():
        cb = epoch_progress()
        inner = getattr(cb, hook)

        def hooked(*args):
            inner(*args)
            if not fired:
                fired.append(hook)
                raise KeyboardInterrupt

        setattr(cb, hook, hooked)
        return cb

    monkeypatch.setattr(train_cmd, "epoch_progress", progress)


def _continue_command(err: str) -> list[str]:
    lines = [ln for ln in err.splitlines() if ln.startswith("nasctl: interrupted")]
    assert len(lines) == 1, err
    m = re.search(r"\(continue with: (nasctl .+)\)$", lines[0])
    assert m, lines[0]
    return shlex.split(m.group(1))


@pytest.mark.parametrize("hook", ["on_epoch_end", "on_batch"])  # after epoch 1's checkpoint; during epoch 1
def test_ctrl_c_in_train_prints_a_resume_command_that_works(hook, tmp_path, capsys, monkeypatch):
    _interrupting_progress(monkeypatch, hook)
    root = tmp_path / "my runs"  # a space in the path: the printed command is still pasteable
    assert main(["train", *TINY_TRAIN, "--run-root", str(root)]) == 130
    command = _continue_command(capsys.readouterr().err)
    (run,) = (root / "train").iterdir()
    assert command == ["nasctl", "train", "--resume", str(run)]
    assert (run / "checkpoint.pt").is_file() == (hook == "on_epoch_end")
    assert main(command[1:]) == 0  # exactly as printed
    assert (run / "supernet.pt").is_file()
    epochs = [json.loads(ln)["epoch"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]  # every epoch once, none lost or repeated


def test_ctrl_c_in_a_study_prints_its_resume_command_that_works(search_run, tmp_path, capsys,  # noqa: F811
                                                                monkeypatch):
    from nasctl.nas.experiments import transfer

    craft, calls = transfer._craft_and_score, []

    def interrupted_second_source(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return craft(*args, **kwargs)

    monkeypatch.setattr(transfer, "_craft_and_score", interrupted_second_source)
    args = ["experiment", "transfer", "--run", str(search_run), "--members", "1", "--steps", "1",
            "--restarts", "1", "--run-root", str(tmp_path)]
    assert main(args) == 130
    command = _continue_command(capsys.readouterr().err)
    (folder,) = (tmp_path / "experiment").iterdir()
    assert command == ["nasctl", "experiment", "transfer", "--resume", str(folder)]
    assert len((folder / "results.jsonl").read_text().splitlines()) == 1  # the first source is kept
    assert main(command[1:]) == 0
    assert json.loads((folder / "result.json").read_text())["study"] == "transfer"
    assert len((folder / "results.jsonl").read_text().splitlines()) == 2
    assert len(calls) == 3  # the finished source was not crafted again


def test_ctrl_c_before_a_run_folder_and_in_finetune_say_to_start_again(tmp_path, capsys, monkeypatch):
    import nasctl.commands.train as train_cmd

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_cmd, "dataset_from_args", interrupted)
    assert main(["train", *TINY_TRAIN, "--run-root", str(tmp_path)]) == 130
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.endswith("(no run folder was made yet; run the same command again to start it over)")
    assert "--resume" not in line and not (tmp_path / "train").exists()
    hint = interrupt_hint(argparse.Namespace(command="finetune"), tmp_path / "ft")
    assert hint == f" (partial results in {tmp_path / 'ft'}; run the same command again to start it over)"


# --- 6. folders of the wrong kind: every suggested flag exists where it is suggested --------------------
STUDIES = ("transfer", "width", "finetune-vs-scratch")
MENTION = re.compile(r"nasctl (" + "|".join(COMMANDS) + r")(?: (" + "|".join(STUDIES) + r"))?\b")
FLAG = re.compile(r"(?<![\w/-])--[a-z][a-z0-9-]*")
CLAUSE_END = re.compile(r";|: |,? or ")


def parser_flags(command: str, study: str | None = None) -> set[str]:
    """Every ``--flag`` of ``nasctl COMMAND [STUDY]``, from the CLI's own parser."""
    parser = build_parser([command])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    if study:
        sub = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices[study]
    return {o for a in sub._actions for o in a.option_strings if o.startswith("--")}


def suggested_flags(line: str, raised_by: tuple[str, str | None]) -> list[tuple[tuple[str, str | None], str]]:
    """(command, flag) for every ``--flag`` an error line names: a flag in the same clause as an explicit
    ``nasctl CMD`` (up to the next ``;``, ``: `` or ``or``) belongs to CMD, any other to the command that
    raised the error."""
    body = line.removeprefix("nasctl: error: ")
    events = sorted([(m.start(), "mention", (m.group(1), m.group(2))) for m in MENTION.finditer(body)]
                    + [(m.start(), "flag", m.group(0)) for m in FLAG.finditer(body)]
                    + [(m.start(), "end", None) for m in CLAUSE_END.finditer(body)])
    owner, out = raised_by, []
    for _, kind, value in events:
        if kind == "mention":
            owner = value
        elif kind == "end":
            owner = raised_by
        else:
            out.append((owner, value))
    return out


def test_suggested_flags_reads_clauses():
    line = ("nasctl: error: x: resume it with 'nasctl search --resume R', or pass --checkpoint C; re-run "
            "'nasctl train' (with --resume on its run folder) or pick another --out")
    assert suggested_flags(line, ("report", None)) == [
        (("search", None), "--resume"), (("report", None), "--checkpoint"), (("train", None), "--resume"),
        (("report", None), "--out")]


@pytest.fixture(scope="module")
def folders(supernet, search_run, tmp_path_factory) -> dict[str, Path]:  # noqa: F811
    """One real folder of each kind nasctl makes, plus an unfinished search, an empty folder and a folder
    of someone else's files."""
    root = tmp_path_factory.mktemp("kinds")
    quiet = ["--run-root", str(root)]
    assert main(["finetune", "--run", str(search_run), "--epochs", "1", *quiet]) == 0
    assert main(["eval", "--run", str(search_run), "--steps", "1", "--restarts", "1", "--square-queries", "0",
                 "--n-images", "20", "--autoattack", "off", *quiet]) == 0
    assert main(["experiment", "transfer", "--run", str(search_run), "--members", "1", "--steps", "1",
                 "--restarts", "1", *quiet]) == 0
    out = {"train": supernet.parent, "search": search_run}
    for kind in ("finetune", "eval", "experiment"):
        (out[kind],) = (root / kind).iterdir()
    if _made_export(search_run, quiet):
        (out["export"],) = (root / "export").iterdir()
    unfinished = root / "unfinished-search"
    unfinished.mkdir()
    shutil.copy(search_run / "config.json", unfinished / "config.json")  # stopped before its first result
    (root / "empty").mkdir()
    (root / "not-nasctl").mkdir()
    (root / "not-nasctl" / "notes.txt").write_text("mine\n")
    return {**out, "unfinished-search": unfinished, "empty": root / "empty",
            "not-nasctl": root / "not-nasctl"}


def _made_export(search_run: Path, run_root: list[str]) -> bool:  # noqa: F811
    """An ONNX export of the run, where this machine can make one (the export tests cover that part)."""
    if not (importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime")):
        return False
    try:
        return main(["export", "--run", str(search_run), "--target", "onnx", *run_root]) == 0
    except Exception:  # noqa: BLE001 (export's own failure is its tests' business, not this probe's)
        return False


# use -> (arguments around the folder, the command and study that raise, the kinds it takes)
USES = {
    "report RUN": (lambda d: ["report", d], ("report", None), {"search"}),
    "finetune --run": (lambda d: ["finetune", "--run", d, "--epochs", "1"], ("finetune", None), {"search"}),
    "eval --run": (lambda d: ["eval", "--run", d, "--steps", "1", "--restarts", "1"], ("eval", None),
                   {"search"}),
    "eval --checkpoint": (lambda d: ["eval", "--checkpoint", d, "--steps", "1"], ("eval", None),
                          {"train", "finetune"}),
    "export --run": (lambda d: ["export", "--run", d, "--target", "onnx"], ("export", None), {"search"}),
    "export --checkpoint": (lambda d: ["export", "--checkpoint", d, "--target", "onnx"], ("export", None),
                            {"train", "finetune"}),
    "train --resume": (lambda d: ["train", "--resume", d], ("train", None), {"train"}),
    "search --resume": (lambda d: ["search", "--resume", d], ("search", None),
                        {"search", "unfinished-search"}),
    "search --supernet": (lambda d: ["search", "--supernet", d, "--pop-size", "2"], ("search", None),
                          {"train"}),
    **{f"experiment {s} --resume": (lambda d, s=s: ["experiment", s, "--resume", d], ("experiment", s),
                                    {"experiment"}) for s in STUDIES},
    **{f"experiment {s} --run": (lambda d, s=s: ["experiment", s, "--run", d, "--epochs" if s != "transfer"
                                                 else "--steps", "1"], ("experiment", s), {"search"})
       for s in ("transfer", "finetune-vs-scratch")},
}
KINDS = ("train", "search", "finetune", "eval", "experiment", "export", "unfinished-search", "empty",
         "not-nasctl")
# errors of nas/supernet/checkpoint.py's reader for a folder without a checkpoint: they name no kind (yet)
KIND_UNNAMED = {"eval --checkpoint", "export --checkpoint"}
PAIRS = [(use, kind) for use, (_, _, takes) in USES.items() for kind in KINDS if kind not in takes]


@pytest.mark.parametrize("use, kind", PAIRS, ids=[f"{u}<-{k}" for u, k in PAIRS])
def test_wrong_kind_of_folder_names_it_and_only_flags_that_exist(use, kind, folders, tmp_path, capsys):
    if kind not in folders:
        pytest.skip("no real export folder could be made here")
    args, raised_by, _ = USES[use]
    folder = str(folders[kind])
    line = fails(capsys, [*args(folder), "--run-root", str(tmp_path / "runs")], folder)
    for (command, study), flag in suggested_flags(line, raised_by):
        where = f"nasctl {command}" + (f" {study}" if study else "")
        assert flag in parser_flags(command, study), f"{flag} suggested for '{where}', which lacks it: {line}"
    if use not in KIND_UNNAMED:  # what the folder is, in words
        named = {"unfinished-search": ("'nasctl search' run", "it has not finished"), "empty": ("not a",),
                 "not-nasctl": ("not a",)}
        if (use, kind) == ("search --supernet", "finetune"):
            named["finetune"] = ("a fine-tuned subnet",)
        assert any(words in line for words in named.get(kind, (f"'nasctl {kind}",))), line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("config.json"))


@pytest.mark.parametrize("args, raised_by", [
    (["finetune"], ("finetune", None)),
    (["experiment", "transfer"], ("experiment", "transfer")),
    (["experiment", "finetune-vs-scratch"], ("experiment", "finetune-vs-scratch")),
    (["export", "--target", "onnx"], ("export", None)),
])
def test_no_search_run_yet_suggests_only_flags_that_exist(args, raised_by, tmp_path, capsys):
    line = fails(capsys, [*args, "--run-root", str(tmp_path)], "no finished search run", "--run RUN")
    for (command, study), flag in suggested_flags(line, raised_by):
        assert flag in parser_flags(command, study), line
