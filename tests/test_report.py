"""The HTML report: content, escaping, secrets, missing data, errors, statistics helpers and a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html import unescape
from pathlib import Path

import numpy as np
import pytest

from misalign.bench.stats import paired_bootstrap_as
from misalign.redact import redact_command, scrub
from misalign.report import analysis, load_runs, render_report, write_report
from misalign.report.data import Results, _read_arrow, _read_python, read_results
from misalign.report.html import seeds_text
from misalign.report.plots import literal
from misalign.taxonomy import Taxonomy
from synthetic_runs import synthetic_items, write_synthetic_run

PAYLOAD = ("<script>document.title='pwned'</script>"
           '<img src=x onerror="document.body.dataset.pwned=1">'
           '<a href="javascript:alert(1)">x</a>'
           "</style><script>document.body.dataset.pwned=2</script>")
DROPPED = "Privacy violation"


def make_runs(root: Path, n: int, *, n_items: int = 120, model_names: list[str] | None = None,
              inject: dict[str, str] | None = None, **kwargs) -> list[Path]:
    """``n`` run dirs of different models on one synthetic dataset; model k gets worse as k grows."""
    items = synthetic_items(n_items, dataset_seed=3)
    dirs = []
    for k in range(n):
        name = model_names[k] if model_names else f"model-{k}"
        dirs.append(write_synthetic_run(
            root / f"run{k}", model=name, items=items, model_seed=k, inject=inject,
            coverage={"safety": 0.95 - 0.15 * k, "value": 0.7 + 0.05 * k, "cultural": 0.8},
            ffr=0.1 + 0.08 * k, unparseable=0.03, failed=0.02, created=f"2026-01-1{k}T09:30:00Z", **kwargs))
    return dirs


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], str]:
    root = tmp_path_factory.mktemp("three")
    dirs = make_runs(root, 3)
    write_report(dirs, root / "out" / "report.html")
    return dirs, (root / "out" / "report.html").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A report whose prompts, responses, raw answers and a model name all carry HTML/JS payloads."""
    root = tmp_path_factory.mktemp("hostile")
    dirs = make_runs(root, 2, model_names=[f"evil {PAYLOAD}", "plain-model"],
                     inject={"prompt": PAYLOAD, "response": PAYLOAD, "raw": PAYLOAD})
    out = root / "report.html"
    write_report(dirs, out)
    return out


def test_three_runs_have_every_section(three: tuple[list[Path], str]) -> None:
    _, html = three
    assert html.startswith("<!DOCTYPE html>")
    assert 'id="leaderboard"' in html and html.count("<svg") >= 4
    for sid in ("scatter", "dimensions", "tradeoffs", "domains", "worst", "comparisons", "reliability", "provenance"):
        assert f'id="{sid}"' in html
    assert 'class="comparisons"' in html and html.count("<tr><td>1. model-0</td>") == 2  # pairs (0,1), (0,2)
    assert "Fleiss' kappa" in html and "Krippendorff" in html and "ICC(2,1)" in html and 'class="cohen"' in html
    assert "No paired comparisons" not in html and "No judge reliability" not in html
    # sorted by overall AS: model-0 is best by construction
    board = html[html.index('id="leaderboard"'):html.index("</table>", html.index('id="leaderboard"'))]
    names = re.findall(r'<td class="model"[^>]*>([^<]*)</td>', board)
    assert names == ["model-0", "model-1", "model-2"]
    assert "± " in board and '<span class="ci">[' in board
    assert "2026-01-10 09:30 UTC" in board


def test_self_contained_and_no_scripts(three: tuple[list[Path], str]) -> None:
    _, html = three
    assert "<script" not in html.lower()
    assert "<?xml" not in html and "<!DOCTYPE svg" not in html
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    # no network: nothing is fetched from outside (SVG namespaces are identifiers, not requests)
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html)
    assert "@import" not in html
    assert all(ref.startswith("#") for ref in re.findall(r"url\(\s*['\"]?([^)'\"]*)", html))  # only in-page refs


def test_report_is_deterministic(three: tuple[list[Path], str], tmp_path: Path) -> None:
    dirs, html = three
    write_report(list(reversed(dirs)), tmp_path / "again.html")
    assert (tmp_path / "again.html").read_text(encoding="utf-8") == html


def test_single_run_says_why_there_are_no_comparisons(tmp_path: Path) -> None:
    html = render_report(make_runs(tmp_path, 1))
    assert 'id="leaderboard"' in html and html.count("<svg") >= 4
    assert 'class="comparisons"' not in html and 'class="cohen"' not in html
    assert "No paired comparisons: this report has 1 run" in html
    assert "No judge reliability: this report has 1 run" in html


def test_runs_on_different_datasets_are_not_paired(tmp_path: Path) -> None:
    a = write_synthetic_run(tmp_path / "a", model="a", n_items=30, dataset_seed=1)
    b = write_synthetic_run(tmp_path / "b", model="b", n_items=30, dataset_seed=2)
    html = render_report([a, b])
    assert "No paired comparisons" in html and "on 2 datasets" in html
    assert "No domain has 10 or more judged responses" in html  # small data: the fallback minimum applies


def test_missing_domain_cells_are_empty_not_zero(tmp_path: Path) -> None:
    dirs = make_runs(tmp_path, 2, n_items=60)
    write_synthetic_run(dirs[1], model="model-1", items=synthetic_items(60, dataset_seed=3), model_seed=1,
                        drop_domains=[DROPPED])
    # a null AS (e.g. no aligned responses) must also be empty
    metrics = json.loads((dirs[0] / "metrics.json").read_text())
    some = next(n for n in metrics["by_domain"]["value"] if n != DROPPED)
    metrics["by_domain"]["value"][some]["alignment_score"] = None
    (dirs[0] / "metrics.json").write_text(json.dumps(metrics))
    runs = load_runs(dirs)
    rows, m, _ = analysis.domain_matrix(runs, Taxonomy.default())
    assert len(rows) == len(Taxonomy.default())
    col = {r.model: j for j, r in enumerate(runs)}
    i_drop = rows.index(("safety", DROPPED))
    assert np.isnan(m[i_drop, col["model-1"]]) and not np.isnan(m[i_drop, col["model-0"]])
    assert np.isnan(m[rows.index(("value", some)), col["model-0"]])
    present = [n for dim in ("safety", "value", "cultural") for n in metrics["by_domain"][dim]]
    absent = next(name for dim, name in rows if name not in present)
    assert np.isnan(m[[n for _, n in rows].index(absent)]).all()
    assert not np.any(m == 0.0) or np.nanmin(m) == 0.0  # nothing is filled in with zeros
    html = render_report(dirs)
    table = html[html.index('class="domains"'):]
    row = re.search(rf"<tr><th scope=\"row\">{re.escape(DROPPED)}</th>(.*?)</tr>", table).group(1)
    cells = re.findall(r"<td[^>]*>[^<]*</td>", row)
    assert len(cells) == 2
    assert sum('class="missing"' in c for c in cells) == 1 and all(">0.0<" not in c for c in cells)
    assert "they are empty, not zero" in html


def _lead(html: str) -> str:
    return re.search(r'<p class="lead">(.*?)</p>', html, re.S).group(1)


def test_header_counts_run_directories_models_and_seeds(three: tuple[list[Path], str], tmp_path: Path) -> None:
    _, html = three
    assert _lead(html).startswith("3 run directories of 3 models, 3 runs (seeds 0–2) each, on 1 dataset.")
    items = synthetic_items(30, dataset_seed=4)
    one = write_synthetic_run(tmp_path / "one", model="m", items=items, n_runs=1)
    many = write_synthetic_run(tmp_path / "many", model="m", items=items, n_runs=3)
    assert _lead(render_report([many])).startswith("1 run directory of 1 model, 3 runs (seeds 0–2), on 1 dataset.")
    assert _lead(render_report([one])).startswith("1 run directory of 1 model, 1 run (seed 0), on 1 dataset.")
    assert _lead(render_report([one, many])).startswith(
        "2 run directories of 1 model, 1–3 runs each (4 in all; seeds 0–2), on 1 dataset.")
    assert seeds_text([9, 0, 5]) == "seeds 0, 5, 9" and seeds_text([]) == "seeds not recorded"


def test_low_n_domain_cells_are_marked_and_the_caption_says_so(three: tuple[list[Path], str]) -> None:
    """Heatmap cells (and per-domain table cells) from fewer than MIN_DOMAIN_N judged responses are pale with n
    printed; cells with n >= MIN_DOMAIN_N are not."""
    dirs, html = three
    runs = load_runs(dirs)
    rows, matrix, blocks = analysis.domain_matrix(runs, Taxonomy.default())
    n = analysis.domain_n(rows, blocks)
    present = ~np.isnan(matrix)
    low = present & (n < analysis.MIN_DOMAIN_N)
    assert low.any() and (present & ~low).any(), "the data must have both kinds of cell"
    svg = html[html.index('aria-label="Alignment Score per domain and model"'):html.index('class="domains"')]
    printed = {(int(i), int(j)): int(k) for i, j, k in
               re.findall(r'<g id="low-n-(\d+)-(\d+)">\s*<text[^>]*>(\d+)</text>', svg)}
    assert printed == {(int(i), int(j)): int(n[i, j]) for i, j in zip(*np.nonzero(low), strict=True)}
    assert "pale, with n: fewer than 10 judged responses" in svg  # the colour bar's legend
    table = html[html.index('class="domains"'):html.index("</table>", html.index('class="domains"'))]
    names = [name for _, name in rows]
    seen = 0
    for name, cells in re.findall(r'<tr><th scope="row">([^<]*)</th>(.*?)</tr>', table):
        i = names.index(unescape(name))
        for j, (cls, shown) in enumerate(re.findall(r'<td class="([^"]*)"(?: data-n="(\d+)")?', cells)):
            assert ("low-n" in cls.split()) == bool(low[i, j]), (name, j)
            assert (cls == "missing") == (not present[i, j]) and shown == (str(n[i, j]) if present[i, j] else "")
            seen += 1
    assert seen == matrix.size
    caption = re.search(r"<figcaption>(Alignment Score for each of the .*?)</figcaption>", html).group(1)
    assert f"Pale cells with a number rest on fewer than {analysis.MIN_DOMAIN_N} judged responses" in caption
    assert f"({int(low.sum())} of {matrix.size})" in caption
    assert "pale: n &lt; 10" in html and 'content: "n " attr(data-n)' in html


def test_bad_directories_raise_value_error_naming_them(tmp_path: Path) -> None:
    good = make_runs(tmp_path, 1)[0]
    with pytest.raises(ValueError, match="nowhere"):
        write_report([good, tmp_path / "nowhere"], tmp_path / "r.html")
    empty = tmp_path / "empty-run"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"empty-run.*missing metrics\.json, manifest\.json"):
        write_report([empty], tmp_path / "r.html")
    half = tmp_path / "half-run"
    half.mkdir()
    (half / "metrics.json").write_text((good / "metrics.json").read_text())
    with pytest.raises(ValueError, match=r"half-run.*missing manifest\.json"):
        write_report([half], tmp_path / "r.html")
    (half / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"half-run.manifest\.json: not valid JSON"):
        write_report([half], tmp_path / "r.html")
    with pytest.raises(ValueError, match="no run directories"):
        write_report([], tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_everything_from_the_data_is_escaped(hostile: Path) -> None:
    html = hostile.read_text(encoding="utf-8")
    low = html.lower()
    assert "<script" not in low and "<img" not in low and 'href="javascript:' not in low
    assert "</style><script" not in low
    assert low.count("</style>") == 1 + low.count("<svg")  # the page's own and matplotlib's in each SVG
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in html
    assert "onerror=&quot;document.body.dataset.pwned=1&quot;" in html
    # the payloads reached every place they were put: model name (table, plots), prompt, response, raw answer
    assert html.count("&lt;img src=x onerror=") >= 8
    assert "evil &lt;script&gt;" in html
    assert "<text" in html and "evil &lt;script&gt;" in html[html.index("<svg"):]


def test_no_secrets_in_the_report(tmp_path: Path) -> None:
    d = write_synthetic_run(tmp_path / "r", model="m", n_items=20, config_extra={
        "api_key": "sk-SECRET-1", "hf_token": "hf_SECRET2", "nested": {"client_secret": "SECRET3", "ok": 1},
        "base_urls": ["https://user:SECRET4@api.example.com/v1?key=SECRET5"]})
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["command"] = ["misalign", "eval", "--api-key", "SECRET6", "--token=SECRET7", "-m", "m",
                           "--base-url", "http://u:SECRET8@host:8000/v1"]
    (d / "manifest.json").write_text(json.dumps(manifest))
    html = render_report([d])
    assert "SECRET" not in html
    assert "api.example.com/v1" in html and "host:8000/v1" in html and "--token=REDACTED" in html


def test_scrub_and_redact_command() -> None:
    assert scrub({"API_KEY": 1, "x": {"Token": 2, "y": [{"secret": 3, "z": "https://a:b@h/p?q=1"}]}}) == {
        "x": {"y": [{"z": "https://h/p"}]}}
    assert redact_command("misalign eval --api-key abc -m x") == "misalign eval --api-key REDACTED -m x"
    assert redact_command(["a", "--secret=1"]) == "a --secret=REDACTED"
    assert redact_command(None) == ""
    assert (redact_command("misalign eval --api-key-env MY_KEY --token T")
            == "misalign eval --api-key-env MY_KEY --token REDACTED")  # a variable's name is no secret


def test_plot_labels_are_literal_and_awkward_names_render(tmp_path: Path) -> None:
    assert literal("a $x$ b") == r"a \$x\$ b"
    assert literal("_hidden").startswith("\u200b_")
    assert len(literal("x" * 100)) == 40
    dirs = make_runs(tmp_path, 2, model_names=[r"cost $5 \frac{ $$", "_underscore"])
    html = render_report(dirs)
    assert "cost $5 \\frac{ $$" in html and "_underscore" in html


def test_worst_domains_respect_minimum_and_show_wrong_examples(three: tuple[list[Path], str]) -> None:
    dirs, html = three
    run = load_runs([dirs[2]])[0]
    worst = analysis.worst_domains(run, min_n=10)
    assert 1 <= len(worst) <= 3
    scores = [w.block.alignment_score for w in worst]
    assert scores == sorted(scores)
    for w in worst:
        assert w.block.n_misaligned + w.block.n_aligned >= 10
        assert len(w.examples) <= 5 and w.n_wrong >= len(w.examples)
        for x in w.examples:
            assert x["run"] == 0 and x["verdict"] != x["label"] and w.name in x["domains"][w.dimension]
    assert analysis.worst_domains(run, min_n=10**6) == []
    assert "wrong answers in run 0" in html and "<dt>Raw answer</dt>" in html


def test_wrong_in_domain_matches_domains_not_text() -> None:
    rows = [{"run": 0, "prompt": "mentions Privacy violation", "domains": {"safety": [], "value": ["Honesty"]}},
            {"run": 0, "prompt": "p", "domains": {"safety": ["PRIVACY VIOLATION"]}},
            {"run": 0, "prompt": "q", "domains": {"safety": ["Privacy violation", "Self-harm"]}},
            {"run": 0, "prompt": "r", "domains": {"cultural": ["Caf\u00e9 \"culture\""]}}]
    lines = [json.dumps(r).encode() for r in rows]
    res = Results(item_ids=[], item=np.zeros(0, np.int64), run=np.zeros(0, np.int64), side=np.zeros(0, np.int8),
                  y=np.zeros(0, np.int8), flag=np.zeros(0, np.int8), used=np.zeros(0, bool), wrong_lines=lines)
    n, found = res.wrong_in_domain("safety", "Privacy violation", limit=1)
    assert n == 2 and found == [rows[1]]
    assert res.wrong_in_domain("value", "Privacy violation") == (0, [])
    assert res.wrong_in_domain("cultural", 'Caf\u00e9 "culture"') == (1, [rows[3]])
    empty = Results(item_ids=[], item=res.item, run=res.run, side=res.side, y=res.y, flag=res.flag, used=res.used,
                    wrong_lines=[])
    assert empty.wrong_in_domain("safety", "Self-harm") == (0, [])


def test_results_without_texts_and_metrics_not_in_the_record_layout(tmp_path: Path) -> None:
    """Results without prompt/response/domains still render; metrics.json that is not the typed record (a short
    alias 'ffr' no writer produces) is refused with a line naming the file and the field."""
    dirs = make_runs(tmp_path, 2)
    lines = (dirs[0] / "results.jsonl").read_text().splitlines()
    stripped = []
    for ln in lines:
        row = json.loads(ln)
        for k in ("prompt", "response", "domains"):
            row.pop(k)
        stripped.append(json.dumps(row))
    (dirs[0] / "results.jsonl").write_text("\n".join(stripped) + "\n")
    m = json.loads((dirs[1] / "metrics.json").read_text())
    m["overall"]["ffr"] = m["overall"].pop("false_failure_rate")
    (dirs[1] / "metrics.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match=r"run1.metrics\.json: field 'overall\.(ffr|false_failure_rate)'"):
        render_report(dirs)
    m["overall"]["false_failure_rate"] = m["overall"].pop("ffr")
    (dirs[1] / "metrics.json").write_text(json.dumps(m))
    html = render_report(dirs)
    assert "no wrong answer in run 0 records this domain" in html
    assert 'class="comparisons"' in html
    (dirs[1] / "results.jsonl").unlink()
    html = render_report(dirs)
    assert "No examples: no results.jsonl" in html and "No paired comparisons" in html


def test_corrupt_results_are_reported_not_fatal(tmp_path: Path) -> None:
    d = make_runs(tmp_path, 1)[0]
    with (d / "results.jsonl").open("a") as fh:
        fh.write("{broken\n")
    with pytest.raises(ValueError, match=r"results\.jsonl:721: not valid JSON"):
        read_results(d / "results.jsonl")
    html = render_report([d])
    assert "No examples:" in html and "results.jsonl:721" in html


def test_arrow_and_python_readers_agree(tmp_path: Path) -> None:
    d = make_runs(tmp_path, 1, n_items=50)[0]
    path = d / "results.jsonl"
    data = path.read_bytes().replace(b"\n", b"\n\n", 3)  # blank lines are skipped by both
    fast, slow = _read_arrow(data), _read_python(path, data)
    assert fast is not None
    for name in ("item", "run", "side", "y", "flag", "used"):
        assert np.array_equal(getattr(fast, name), getattr(slow, name)), name
    assert fast.item_ids == slow.item_ids and fast.wrong_lines == slow.wrong_lines
    crlf = _read_arrow(path.read_bytes().replace(b"\n", b"\r\n"))
    assert crlf is not None and crlf.wrong_lines == slow.wrong_lines
    assert _read_arrow(data.replace(b'"flagged": true', b'"flagged": 1')) is None  # falls back on odd types


@pytest.mark.parametrize("chunk", [analysis.BOOT_CHUNK, 1000])
def test_shared_bootstrap_equals_stats_paired_bootstrap(three: tuple[list[Path], str], chunk: int,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    dirs, _ = three
    g = analysis.align_group(load_runs(dirs))
    counts = analysis.group_counts(g)
    monkeypatch.setattr(analysis, "BOOT_CHUNK", chunk)  # 1000: resamples drawn 8 at a time
    many = analysis.paired_bootstrap_many(counts, n_boot=300, seed=5)
    for (i, j), got in many.items():
        want = paired_bootstrap_as(counts[i], counts[j], n_boot=300, seed=5)
        assert got["difference"] == pytest.approx(want["difference"], abs=1e-12)
        assert got["ci95"] == pytest.approx(want["ci95"], abs=1e-12)
        assert got["p_value"] == pytest.approx(want["p_value"], abs=1e-12)


def test_reliability_on_identical_and_independent_judges(tmp_path: Path) -> None:
    items = synthetic_items(200, dataset_seed=9)
    a = write_synthetic_run(tmp_path / "a", model="a", items=items, model_seed=1)
    b = write_synthetic_run(tmp_path / "b", model="b", items=items, model_seed=1)  # same flags as a
    c = write_synthetic_run(tmp_path / "c", model="c", items=items, model_seed=2, coverage=0.5, ffr=0.5)
    runs = load_runs([a, b, c])
    rel = analysis.reliability(analysis.align_group(runs))
    ia, ib, ic = ([r.model for r in rel.runs].index(x) for x in "abc")
    assert rel.cohen[ia, ib] == pytest.approx(1.0)
    assert abs(rel.cohen[ia, ic]) < 0.25  # c flags at random
    assert rel.n_responses == 400 and 0 < rel.n_complete <= 400
    assert -1 <= rel.fleiss <= 1 and -1 <= rel.alpha <= 1 and -1 <= rel.icc <= 1


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


def _chromium_or_skip() -> str:
    browser = _find_chromium()
    if browser is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "install", "-y", "-qq", "chromium"],
                    ["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            try:
                ok = subprocess.run(cmd, env=env, capture_output=True, timeout=900).returncode == 0
            except (OSError, subprocess.SubprocessError):
                ok = False
            if ok and (browser := _find_chromium()):
                break
    if browser is None:
        pytest.skip("no headless Chromium: none of chromium, chromium-browser, google-chrome is on PATH and "
                    "`apt-get install chromium` was not possible here")
    return browser


@pytest.mark.browser
def test_browser_runs_no_injected_script_and_draws_the_page(hostile: Path, tmp_path: Path) -> None:
    browser = _chromium_or_skip()
    base = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=2000",
            f"--user-data-dir={tmp_path / 'profile'}"]
    url = hostile.resolve().as_uri()
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
    assert "</html>" in dom, "Chromium printed no DOM"
    assert "data-pwned" not in dom
    title = re.search(r"<title>(.*?)</title>", dom, re.S)
    assert title is not None and title.group(1) == "Mis-Align Bench report"
    assert not re.search(r"<a[^>]+href=\"\s*javascript:", dom, re.I)
    assert "<script" not in dom.lower() and "<img" not in dom.lower()
    assert 'id="leaderboard"' in dom and dom.count("<svg") >= 4
    shot = tmp_path / "page.png"
    subprocess.run([*base, f"--screenshot={shot}", "--window-size=1280,2000", url], capture_output=True,
                   timeout=180)
    assert shot.is_file(), "Chromium wrote no screenshot"
    from matplotlib.image import imread

    pixels = imread(str(shot))
    assert pixels.shape[:2] == (2000, 1280)
    assert float(pixels[..., :3].std()) > 0.05, "the screenshot is blank"


MARKER = (255, 0, 255)
"""Magenta: the leaderboard's right border in :func:`_leaderboard_right_edge` (no such colour in the report)."""


def _leaderboard_right_edge(browser: str, html: str, width: int, tmp_path: Path) -> int | None:
    """Where the leaderboard's right edge shows in a ``width`` px wide window, or None when it is not visible.

    The page allows no scripts (CSP), so layout is measured in pixels: a copy of the page gets one extra style rule
    that paints the leaderboard's right border magenta, Chromium screenshots it, and the rightmost column of magenta
    pixels is the table's right edge. The table sits in a ``.table-wrap`` that scrolls sideways and clips what
    overflows: when the table is wider than the page, its right border is clipped away (or lies beyond the window)
    and no magenta shows; when it fits, a magenta line as tall as the table shows inside the window.
    """
    marked = html.replace("</head>", "<style>section#leaderboard table { border-right: 6px solid rgb(255, 0, 255) "
                          "!important; }</style></head>", 1)
    page = tmp_path / f"marked-{width}.html"
    page.write_text(marked, encoding="utf-8")
    shot = tmp_path / f"leaderboard-{width}.png"
    subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=2000",
                    "--force-device-scale-factor=1", f"--user-data-dir={tmp_path / 'profile'}",
                    f"--screenshot={shot}", f"--window-size={width},2000", page.resolve().as_uri()],
                   capture_output=True, timeout=180)
    assert shot.is_file(), "Chromium wrote no screenshot"
    from matplotlib.image import imread

    rgb = np.rint(imread(str(shot))[..., :3] * 255).astype(int)
    assert rgb.shape[:2] == (2000, width)
    magenta = np.all(np.abs(rgb - np.array(MARKER)) <= 8, axis=-1)
    cols = np.flatnonzero(magenta.sum(axis=0) >= 200)  # the table is far taller than 200 px
    return int(cols.max()) if cols.size else None


@pytest.mark.browser
def test_leaderboard_fits_at_1280_and_1400_px(three: tuple[list[Path], str], tmp_path: Path) -> None:
    browser = _chromium_or_skip()
    _, html = three
    for width in (1280, 1400):
        edge = _leaderboard_right_edge(browser, html, width, tmp_path)
        assert edge is not None, f"the leaderboard is cut off at {width} px: its right edge is not on screen"
        assert edge < width - 16, f"the leaderboard's right edge is at {edge} px, beyond a {width} px window"
    board = html[html.index('id="leaderboard"'):html.index("</table>", html.index('id="leaderboard"'))]
    assert board.count("<tbody>") == 3 and board.count('<th scope="row">All three</th>') == 3
    assert html.count('id="leaderboard"') == 1  # the section's; the table no longer repeats it


def test_run_directories_of_older_and_newer_versions(tmp_path: Path) -> None:
    d = make_runs(tmp_path, 1)[0]
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["record_version"] == 2 and "endpoint" in manifest
    # The layout written before the typed record: no record_version, endpoint settings inside config.
    old = {k: v for k, v in manifest.items() if k not in ("record_version", "endpoint")}
    old["config"] = {**manifest["config"], "base_urls": ["http://127.0.0.1:8000/v1"], "max_concurrency": 32}
    (d / "manifest.json").write_text(json.dumps(old))
    run = load_runs([d])[0]
    assert run.manifest.record_version == 1 and run.manifest.endpoint == {}
    assert "127.0.0.1:8000/v1" in render_report([d])
    (d / "manifest.json").write_text(json.dumps({**old, "record_version": 99}))
    with pytest.raises(ValueError, match=r"manifest\.json: record version 99 was written by a newer misalign"):
        render_report([d])
