"""``nasctl report``: one self-contained page per search run -- parsed back (one front row per member,
every image a real embedded PNG, experiments and exports found), the Markdown twin, and the page
loaded in headless Chromium (every image decoded: naturalWidth > 0)."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from nasctl.cli import main
from nasctl.nas.experiments.transfer import TransferConfig, run_transfer
from nasctl.nas.report import write_report

from .test_experiments import tiny_run  # noqa: F401 (the fixture)


class _Page(HTMLParser):
    """Tables (by id: rows of cell texts) and image sources of an HTML page."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.imgs: list[str] = []
        self._table = self._row = self._cell = None
        self._in_body = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id", "")
            self.tables[self._table] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = ""
        elif tag == "img":
            self.imgs.append(a.get("src", ""))

    def handle_endtag(self, tag):
        if tag == "td" and self._row is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "tbody":
            self._in_body = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


@pytest.fixture(scope="module")
def reported(tiny_run):  # noqa: F811
    """The tiny run with a transfer study and a real ONNX export made from it, and its report."""
    root = tiny_run.parent.parent
    exp = run_transfer(TransferConfig(run=str(tiny_run), members=2, run_root=str(root)))
    assert main(["export", "--run", str(tiny_run), "--target", "onnx", "--run-root", str(root)]) == 0
    html_path, md_path = write_report(tiny_run)
    return tiny_run, exp, html_path, md_path


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    return page


def test_page_has_one_row_per_member_and_embedded_pngs(reported):
    from PIL import Image

    run, exp, html_path, md_path = reported
    assert html_path == run / "report.html" and md_path == run / "report.md"
    doc = json.loads((run / "pareto.json").read_text())
    page = _parse(html_path)
    rows = page.tables["front"]
    assert len(rows) == len(doc["front"])
    for i, (row, rec) in enumerate(zip(rows, doc["front"])):
        assert row[0] == f"{i}{'*' if i == doc['knee'] else ''}" and row[1] == rec["genome"]
        assert row[2] == f"{rec['params']:,}" and float(row[-4]) == pytest.approx(
            rec["final_adv_acc"], abs=0.05
        )
        if "finetuned_adv_acc" in rec:
            assert float(row[-2]) == pytest.approx(rec["finetuned_adv_acc"], abs=0.05)
        if rec.get("finetuned_aa_acc") is not None:  # AutoAttack, the last column
            assert float(row[-1]) == pytest.approx(rec["finetuned_aa_acc"], abs=0.05)
    # front projections, hypervolume, layer heat map, the transfer heat map
    assert len(page.imgs) == 4
    for src in page.imgs:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            im.load()
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 50
    assert "http" not in html_path.read_text().replace("http-equiv", "")  # nothing fetched from elsewhere
    exp_rows = page.tables[f"experiment-{exp.name}"]
    assert len(exp_rows) == 3 + 1  # sources + the clean row
    exports = page.tables["exports"]
    assert len(exports) == 1 and exports[0][1] == doc["front"][doc["knee"]]["genome"]
    assert exports[0][2] == f"{doc['knee']}*" and float(exports[0][5]) > 0  # ONNX KB
    prov = {r[0]: r[1] for r in page.tables["provenance"]}
    assert prov["supernet sha256 (recorded)"] == doc["supernet_sha256"] and "version: torch" in prov
    assert sum(1 for k in prov if k.startswith("fine-tuned ")) == sum(
        "finetuned_checkpoint" in r for r in doc["front"]
    )


def test_markdown_has_the_same_content(reported):
    run, exp, html_path, md_path = reported
    doc = json.loads((run / "pareto.json").read_text())
    md = md_path.read_text()
    assert sum(1 for r in doc["front"] if f"| `{r['genome']}`" in md or f"| {r['genome']} |" in md) == len(
        doc["front"]
    )
    images = [ln for ln in md.splitlines() if ln.startswith("![")]
    assert len(images) == 4
    for ln in images:
        assert (md_path.parent / ln[ln.index("](") + 2 : -1]).is_file()  # relative links that resolve
    for heading in (
        "## Pareto front",
        "## Layer statistics",
        "## Experiments on this run (1)",
        "## Exports from this run (1)",
        "## Latency",
        "## Provenance",
    ):
        assert heading in md


def test_report_cli_and_export_rows_from_report_json(reported, tmp_path, capsys):
    run, _, _, _ = reported
    root = run.parent.parent
    # an int8 export's numbers as the pipeline records them (report.json: checks.tflite_int8, robustness)
    real = next(root.glob("export/*/report.json"))
    doc = json.loads(real.read_text())
    doc["int8"] = True
    doc["steps"].append({"name": "tflite_int8", "artifact": "model_int8.tflite", "size_bytes": 20480})
    doc["checks"]["tflite_int8"] = {
        "name": "tflite_int8",
        "metric": "int8_acc_drop",
        "value": 0.5,
        "threshold": 2.0,
        "passed": True,
        "detail": {"int8_acc": 90.0, "float_acc": 90.5, "top1_agreement": 99.0},
    }
    doc["robustness"] = {"int8_robust_acc_min": 61.0, "float_robust_acc_min": 63.5, "worst_attack": "square"}
    other = root / "export" / "zz-int8"
    other.mkdir()
    (other / "report.json").write_text(json.dumps(doc))
    out = tmp_path / "mail" / "page.html"
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out and out.with_suffix(".md").is_file()
    row = next(r for r in _parse(out).tables["exports"] if r[0] == "zz-int8")
    assert row[7] == "20.0" and row[8] == "90.0 vs 90.5 (+0.5)" and row[9] == "61.0 vs 63.5 (square)"


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


CHECK_SCRIPT = """<script>
window.addEventListener("load", () => {
  const widths = Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0);
  const rows = document.querySelectorAll("table#front tbody tr").length;
  const pre = document.createElement("pre");
  pre.id = "nasctl-check";
  pre.textContent = JSON.stringify({widths: widths, rows: rows});
  document.body.appendChild(pre);
});
</script>"""


@pytest.mark.skipif(
    _chromium() is None,
    reason="headless Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)",
)
def test_headless_chromium_loads_every_image(reported, tmp_path):
    run, _, html_path, _ = reported
    doc = json.loads((run / "pareto.json").read_text())
    page = tmp_path / "checked.html"
    page.write_text(html_path.read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    proc = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    marker = _Page()
    dom = proc.stdout
    start = dom.index('<pre id="nasctl-check">') + len('<pre id="nasctl-check">')
    check = json.loads(dom[start : dom.index("</pre>", start)].replace("&quot;", '"'))
    del marker
    assert check["rows"] == len(doc["front"])
    assert len(check["widths"]) == 4 and all(w > 0 for w in check["widths"]), check
