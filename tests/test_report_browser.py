"""The shield report opened in a real browser (issue 15 item 3): headless Chromium renders ``report.html`` and
the page itself reports, after its load event, that every ``<img>`` decoded (naturalWidth > 0), the tables are
there and nothing overflows the page horizontally. Skipped, with the reason, where no Chromium is installed
(Debian: ``apt-get install chromium``; ``SHIELDKIT_CHROMIUM`` names another binary)."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess

import pytest

import shieldkit.pipeline as pipeline
from shieldkit.evaluation.basic import evaluate_basic
from shieldkit.pipeline import EvalConfig, ShieldConfig, shield
from shieldkit.synthesis import SynthesisConfig
from shieldkit.training.robust import RobustTrainConfig

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--window-size=1280,2000", "--virtual-time-budget=10000")
MARK = "shieldkit-browser-check"

# Runs on the load event (all images decoded or failed), writes its findings into the DOM for --dump-dom.
PROBE = f"""<script>
window.addEventListener("load", () => {{
  const imgs = [...document.images].map(i => ({{alt: i.alt, w: i.naturalWidth, h: i.naturalHeight,
                                               complete: i.complete}}));
  const tables = [...document.querySelectorAll("table")].map(t => ({{
    rows: t.rows.length, head: [...t.rows[0].cells].map(c => c.textContent.trim())}}));
  const out = {{imgs, tables, h2: [...document.querySelectorAll("h2")].map(h => h.textContent),
               scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth}};
  const pre = document.createElement("pre");
  pre.id = "{MARK}";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}});
</script>"""


def find_chromium() -> str | None:
    env = os.environ.get("SHIELDKIT_CHROMIUM")
    if env:
        return env if shutil.which(env) else None
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = find_chromium()
    if exe is None:
        pytest.skip("no Chromium found (tried $SHIELDKIT_CHROMIUM, " + ", ".join(CANDIDATES) + "): install it with "
                    "`apt-get install chromium` to run the browser test of report.html")
    return exe


def run_chromium(exe: str, tmp, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([exe, *FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def browser_check(exe: str, report, tmp) -> dict:
    """Open a copy of ``report`` with :data:`PROBE` appended (the report itself is not changed) and return
    what the page found."""
    page = tmp / "probed.html"
    page.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    r = run_chromium(exe, tmp, "--dump-dom", page.as_uri())
    m = re.search(rf'<pre id="{MARK}">(.*?)</pre>', r.stdout, re.S)
    assert m, f"chromium rc={r.returncode}; no probe output. stderr tail: {r.stderr[-800:]}"
    return json.loads(m.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))


CFG = ShieldConfig(SynthesisConfig(n_samples=40, batch_size=20, iterations=5, seed=0),
                   RobustTrainConfig(eps=0.1, norm="linf", epochs=1, batch_size=20, attack_steps=2, seed=0),
                   EvalConfig(n=32, aa_n=16, pgd_steps=5, seed=0))


@pytest.fixture(scope="module", params=["real", "label-free"])
def report(request, chromium, tmp_path_factory, mnist_teacher, mnist_test):  # noqa: ARG001 (chromium: skip first)
    """A finished tiny shield run's report.html: on the real test set, and in label-free mode."""
    run = tmp_path_factory.mktemp(f"browser-{request.param}") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "evaluate_basic", functools.partial(evaluate_basic, aa_attacks=["apgd-ce"]))
        if request.param == "real":
            shield(mnist_teacher, run, CFG, test_data=mnist_test, progress=False, report=True)
        else:
            shield(mnist_teacher, run, CFG, synthetic_eval=True, progress=False, report=True)
    return request.param, run / "report.html"


def test_report_renders_in_chromium(chromium, report, tmp_path):
    kind, path = report
    found = browser_check(chromium, path, tmp_path)
    # every image decoded: the accuracy chart and the synthetic sample grid, at least
    assert len(found["imgs"]) >= 2, found["imgs"]
    for img in found["imgs"]:
        assert img["complete"] and img["w"] > 0 and img["h"] > 0, f"image not loaded: {img}"
    # the tables: model, accuracies (teacher + shielded), one audit per model, wall times, provenance, outputs
    heads = [t["head"] for t in found["tables"]]
    acc = [t for t in found["tables"] if t["head"][:5] == ["model", "clean", "PGD", "AutoAttack", "worst case"]]
    assert len(acc) == 1 and acc[0]["rows"] == 3, heads
    audits = [t for t in found["tables"] if t["head"] == ["check", "verdict", "evidence"]]
    assert len(audits) == 2 and all(t["rows"] >= 10 for t in audits), heads
    assert ["stage", "wall time (s)"] in heads
    sections = {"Model", "Audit", "Synthetic training data", "Wall time per stage", "Provenance", "Outputs"}
    assert sections <= {h.split(" (")[0] for h in found["h2"]}, found["h2"]
    assert ("Held-out synthetic samples — synthetic — not a claim about real data" in found["h2"]) == \
        (kind == "label-free")
    # the layout fits the window: no table or figure pushes the page sideways
    assert found["scrollWidth"] <= found["innerWidth"], found


def test_broken_image_is_detected(chromium, tmp_path):
    """The check can fail: a truncated PNG does not decode (naturalWidth 0)."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><table><tr><th>x</th></tr></table>'
                    '<img alt="broken" src="data:image/png;base64,iVBORw0KGgo="/></body></html>')
    found = browser_check(chromium, page, tmp_path)
    assert found["imgs"] == [{"alt": "broken", "w": 0, "h": 0, "complete": True}]
