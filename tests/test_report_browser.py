"""The HTML report as a reader sees it: a report built from fabricated metrics shaped like the demo's (three
benchmarks, four methods, 25 % label runs for PolypDiag and CVC-12k only, pretraining snapshots), opened in
headless Chromium at 1,280 × 2,000 and printed to A4.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: NUL-separated JSON on
the child's fds 3 and 4), so no websocket client or browser-automation package is needed. Without a Chromium
binary (Debian's ``chromium``, or ``ENDOFM_CHROMIUM``) the browser checks skip, unless
``ENDOFM_REQUIRE_CHROMIUM=1`` (CI) makes that a failure.

``python tests/test_report_browser.py INDEX_HTML OUT_PNG`` saves a screenshot of the top of a report.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "config/paper_results.yaml"
VIEWPORT = (1280, 2000)
#: A4 at the print stylesheet's 12 mm margins, in CSS px (96 per inch): the width a printed page lays out in.
A4_CONTENT_PX = round((210 - 2 * 12) / 25.4 * 96)
A4_POINTS = (595.3, 841.9)
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--mute-audio",
]  # fmt: skip


def chromium_binary() -> str | None:
    names = [os.environ.get("ENDOFM_CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome"]
    return next((shutil.which(n) for n in names if n and shutil.which(n)), None)


class Browser:
    """One headless Chromium and one page, spoken to over the DevTools protocol on a pipe."""

    def __init__(self, binary: str, timeout: float = 60.0):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="endofm-chromium-")
        to_child, self._write = os.pipe()
        self._read, from_child = os.pipe()
        # above fd 9 so that the child's dup2 onto 3 and 4 cannot clobber one of them; close-on-exec
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_child, from_child)]
        os.close(to_child)
        os.close(from_child)
        self.log = open(Path(self.profile) / "stderr.log", "wb")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, close_fds=False,
            preexec_fn=lambda: (os.dup2(ends[0], 3), os.dup2(ends[1], 4)),
        )  # fmt: skip
        for fd in ends:
            os.close(fd)
        self._buffer = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def _message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError(f"chromium did not answer in {self.timeout:g} s; its log: {self._tail()}")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium exited ({self.proc.poll()}); its log: {self._tail()}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _tail(self) -> str:
        self.log.flush()
        return (Path(self.profile) / "stderr.log").read_text(errors="replace")[-2000:]

    def call(self, method: str, page: bool = False, **params: Any) -> dict[str, Any]:
        """Send one command (to the page's session with ``page``) and return its result."""
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if page:
            message["sessionId"] = self.session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._write, data) :]
        deadline = time.monotonic() + self.timeout
        while True:
            answer = self._message(deadline)
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]
            self.events.append(answer)

    def wait_for(self, event: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            for i, e in enumerate(self.events):
                if e.get("method") == event:
                    return self.events.pop(i)
            self.events.append(self._message(deadline))

    def open(self, path: Path, width: int, height: int, media: str = "screen", scrollbars: bool = True) -> None:
        self.call("Emulation.setDeviceMetricsOverride", page=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)  # fmt: skip
        self.call("Emulation.setEmulatedMedia", page=True, media=media)
        # paper has no scrollbars
        self.call("Emulation.setScrollbarsHidden", page=True, hidden=media == "print" or not scrollbars)
        self.call("Page.enable", page=True)
        self.events.clear()
        self.call("Page.navigate", page=True, url=path.resolve().as_uri())
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", page=True, expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"]["value"]

    def screenshot(self, height: int) -> bytes:
        clip = {"x": 0, "y": 0, "width": VIEWPORT[0], "height": height, "scale": 1}
        return base64.b64decode(self.call("Page.captureScreenshot", page=True, format="png", clip=clip)["data"])

    def pdf(self) -> bytes:
        """The page printed as a reader prints it (no emulated media or viewport), with its own @page rules."""
        self.call("Emulation.setEmulatedMedia", page=True, media="")
        self.call("Emulation.clearDeviceMetricsOverride", page=True)
        # without @page rules the paper is the protocol's default, US Letter
        result = self.call("Page.printToPDF", page=True, preferCSSPageSize=True, printBackground=True)
        return base64.b64decode(result["data"])

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._read, self._write):
            os.close(fd)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


#: What the page looks like to a reader, measured in the page; every box is a table's scroll container.
PROBE = r"""(() => {
  const root = document.documentElement;
  const own = (cell) => [...cell.childNodes].filter((n) => !(n.classList && n.classList.contains('sub')))
    .map((n) => n.textContent).join('').trim();
  const tables = [...document.querySelectorAll('table')].map((t) => {
    const box = t.parentElement;
    const rows = [...t.tBodies].flatMap((b) => [...b.rows]).filter((r) => !r.classList.contains('block'))
      .map((r) => [...r.cells].filter((c) => c.tagName === 'TD').map((c) => ({i: c.cellIndex, text: own(c)})));
    const dashRows = rows.filter((r) => r.length && r.every((c) => c.text === '–')).length;
    const columns = {};
    rows.flat().forEach((c) => { (columns[c.i] = columns[c.i] || []).push(c.text); });
    const dashColumns = Object.entries(columns).filter(([, v]) => v.every((x) => x === '–'))
      .map(([i]) => t.tHead.rows[0].cells[i].textContent);
    return {id: t.id, scrollWidth: box.scrollWidth, clientWidth: box.clientWidth, width: t.offsetWidth,
            dashRows, dashColumns};
  });
  const images = [...document.images].map((i) => ({alt: i.alt, complete: i.complete, naturalWidth: i.naturalWidth}));
  const anchors = [...document.querySelectorAll('a[href^="#"]')].map((a) => a.getAttribute('href'))
    .map((h) => ({href: h, found: !!document.getElementById(decodeURIComponent(h.slice(1)))}));
  const emptySections = [...document.querySelectorAll('h2')]
    .filter((h) => !h.nextElementSibling || h.nextElementSibling.tagName === 'H2').map((h) => h.textContent);
  const banner = document.getElementById('synthetic-banner');
  const rect = banner && banner.getBoundingClientRect();
  const style = banner && getComputedStyle(banner);
  return {
    page: {scrollWidth: root.scrollWidth, clientWidth: root.clientWidth, innerWidth: innerWidth},
    tables, images, anchors, emptySections,
    banner: banner && {top: rect.top, width: rect.width, height: rect.height, display: style.display,
                       visibility: style.visibility, opacity: style.opacity},
  };
})()"""


# ---------------------------------------------------------------------------------------------- the report

METHODS = {"endofm": "default", "scratch": "none", "vcl": "default", "st_adapter": "default"}
LABEL_RUNS = {"benchmarks": ("polypdiag", "cvc12k"), "methods": ("endofm", "scratch"), "mode": "frozen"}
SNAPSHOTS = {"0": 0, "0.25": 30, "0.5": 60}


def demo_metrics(bench: str, mode: str, rng: np.random.Generator) -> dict[str, Any]:
    """A metrics file's ``metrics`` (and a frozen PolypDiag run's ``readouts``) with the demo's keys."""
    u = lambda: float(rng.uniform(0.2, 0.9))  # noqa: E731
    if bench == "polypdiag":
        probe = lambda: {"f1": u(), "precision": u(), "recall": u(), "accuracy": u(), "auroc": u(), "n": 32}  # noqa: E731
        metrics = probe()
        if mode == "frozen":
            return {"metrics": metrics, "readouts": {"linear_pooled": metrics, "linear_cls": probe(), "knn": probe()}}
        return {"metrics": metrics}
    if bench == "cvc12k":
        return {"metrics": {"dice": u(), "frame_dice": u(), "frame_iou": u(), "n_sequences": 2, "n_frames": 40}}
    keys = ["f1_paper", "precision_paper", "recall_paper", "f1_iou", "precision_iou", "recall_iou", "AP", "AP50",
            "AP75", "AP50_adenomatous", "AP50_hyperplastic"]  # fmt: skip
    return {"metrics": {k: u() for k in keys} | {"frames": 64}}


def write_demo_inputs(root: Path) -> dict[str, Any]:
    """Metrics files, run histories, pretraining records and benchmark files laid out as `make demo` writes
    them (3 seeds, clean protocol, full and frozen); returns :class:`ReportInputs` keyword arguments."""
    rng = np.random.default_rng(25)
    metrics = []

    def run(bench, method, mode, seed, suffix="", **extra):
        name = f"{bench}/{method}/{METHODS[method]}/clean/{mode}/seed{seed}{suffix}"
        record = {"benchmark": bench, "method": method, "variant": METHODS[method], "protocol": "clean",
                  "mode": mode, "seed": seed, "data": "synthetic", "test_split": "test", "config_hash": "c0ffee",
                  "device": "cpu", **demo_metrics(bench, mode, rng), **extra}  # fmt: skip
        path = root / "results/metrics" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
        metrics.append(str(path))
        if not suffix and seed == 0:
            history = root / "results/finetune" / name / "history.csv"
            history.parent.mkdir(parents=True, exist_ok=True)
            select = f"select_{ {'polypdiag': 'f1', 'cvc12k': 'dice', 'kumc': 'f1_paper'}[bench] }"
            history.write_text(f"epoch,loss,{select}\n" + "".join(f"{e},{1 / (e + 1):.3f},{u_:.3f}\n"
                               for e, u_ in enumerate(rng.uniform(0.2, 0.8, 5))))  # fmt: skip

    for bench in ("polypdiag", "cvc12k", "kumc"):
        for method in METHODS:
            for mode in ("full", "frozen"):
                for seed in (0, 1, 2):
                    run(bench, method, mode, seed)
    for bench in LABEL_RUNS["benchmarks"]:
        for seed in (0, 1, 2):
            for method in LABEL_RUNS["methods"]:
                run(bench, method, LABEL_RUNS["mode"], seed, "-labels25", label_fraction=0.25)
            for fraction in SNAPSHOTS:
                run(bench, "endofm", "frozen", seed, f"-pt{round(100 * float(fraction))}",
                    pretrain_fraction=float(fraction))  # fmt: skip
    pretrain = []
    for method in ("endofm", "vcl", "st_adapter"):
        folder = root / "results/pretrain" / method / "default"
        folder.mkdir(parents=True)
        epochs = np.arange(15)
        (folder / "metrics.csv").write_text(
            "epoch,loss,cv,dm,teacher_entropy,batch_entropy\n"
            + "".join(f"{e},{5 / (e + 1):.3f},{3 / (e + 1):.3f},{2 / (e + 1):.3f},{1 + e / 20:.3f},{5.4:.3f}\n"
                      for e in epochs)
        )  # fmt: skip
        (folder / "config.yaml").write_text("run:\n  parameters: 663808\n")
        snapshots = {f: {"step": s} for f, s in SNAPSHOTS.items()} if method == "endofm" else {}
        (folder / "run.json").write_text(json.dumps({"steps": 120, "snapshots": snapshots}))
        pretrain.append(str(folder / "metrics.csv"))
        timing = root / "results/benchmarks/pretrain" / method / "default.tsv"
        timing.parent.mkdir(parents=True)
        timing.write_text("s\th:m:s\tmax_rss\tcpu_time\n734.2\t0:12:14\t1893.4\t1402.8\n")
    for i, rule in enumerate(("finetune_polypdiag", "finetune_cvc12k", "finetune_kumc", "evaluate_run")):
        timing = root / "results/benchmarks" / rule / "job.tsv"
        timing.parent.mkdir(parents=True)
        timing.write_text(f"s\th:m:s\tmax_rss\tcpu_time\n{40.5 + 10 * i}\t0:00:40\t900.1\t{38.2 + 9 * i}\n")
    return {"metrics": metrics, "pretrain": pretrain, "timings_dir": str(root / "results/benchmarks"),
            "paper_results": str(PAPER), "metrics_root": str(root / "results/metrics"),
            "runs_root": str(root / "results/finetune")}  # fmt: skip


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory) -> dict[str, Any]:
    """The report of :func:`write_demo_inputs` and, for every figure it drew, each visible panel's title and
    whether it has anything on it."""
    from endofm.report import ReportConfig, ReportInputs, build_report
    from endofm.report import figures as figure_module

    root = tmp_path_factory.mktemp("demo_report")
    inputs = ReportInputs(**write_demo_inputs(root))
    panels: list[tuple[str, bool]] = []
    draw = figure_module.png

    def spy(fig, *args, **kwargs):
        for ax in fig.axes:
            if ax.get_visible() and ax.axison:
                has = bool(ax.lines or ax.collections or ax.patches or ax.images or ax.containers)
                panels.append((ax.get_title(), has))
        return draw(fig, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(figure_module, "png", spy)
        build_report(inputs, root / "results/report", ReportConfig(), n_seeds=3, synthetic=True)
    return {"index": root / "results/report/index.html", "md": (root / "results/report/tables.md").read_text(),
            "panels": panels}  # fmt: skip


def md_section(md: str, title: str) -> str:
    return md.split(f"## {title}\n")[1].split("\n## ")[0]


def test_only_what_was_run_is_drawn_and_tabulated(demo_report):
    """No figure panel without data (the demo has no 25 % KUMC runs), and the label-efficiency table only
    holds the benchmarks and methods that ran several label fractions."""
    empty = [title for title, has in demo_report["panels"] if not has]
    assert not empty, f"figure panels with nothing drawn: {empty}"
    section = md_section(demo_report["md"], "Label efficiency")
    assert "KUMC" not in section and "full fine-tuning" not in section
    rows = {line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")} - {"Method"}
    assert rows == {"Endo-FM", "Scratch (random init)"}, rows


# ---------------------------------------------------------------------------------------------- in a browser


@pytest.fixture(scope="module")
def browser():
    binary = chromium_binary()
    if binary is None:
        reason = (
            "no Chromium: install Debian's chromium (apt-get install chromium) or set ENDOFM_CHROMIUM to a "
            "Chromium/Chrome binary to run the report's browser checks"
        )
        if os.environ.get("ENDOFM_REQUIRE_CHROMIUM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    b = Browser(binary)
    yield b
    b.close()


@pytest.fixture(scope="module")
def seen(browser, demo_report) -> dict[str, Any]:
    """The probe of the page at 1,280 × 2,000 (``screen``) and laid out for A4 print (``print``), the PDF."""
    browser.open(demo_report["index"], *VIEWPORT)
    screen = browser.evaluate(PROBE)
    browser.open(demo_report["index"], A4_CONTENT_PX, 1100, media="print")
    printed = browser.evaluate(PROBE)
    return {"screen": screen, "print": printed, "pdf": browser.pdf()}


def overflowing(probe: dict[str, Any]) -> list[str]:
    return [f"{t['id']} {t['scrollWidth']}/{t['clientWidth']} px" for t in probe["tables"]
            if t["scrollWidth"] > t["clientWidth"]]  # fmt: skip


def test_table1_and_page_fit_1280px(seen):
    page, tables = seen["screen"]["page"], {t["id"]: t for t in seen["screen"]["tables"]}
    t1 = tables["table1"]
    assert t1["scrollWidth"] <= t1["clientWidth"], (
        f"Table 1 scrolls: {t1['scrollWidth']} px in a {t1['clientWidth']} px box"
    )
    assert page["scrollWidth"] <= page["clientWidth"], f"page overflows: {page}"
    assert not overflowing(seen["screen"]), f"tables that scroll at 1,280 px: {overflowing(seen['screen'])}"


def test_images_anchors_and_banner(seen):
    probe = seen["screen"]
    broken = [i["alt"] for i in probe["images"] if not (i["complete"] and i["naturalWidth"] > 0)]
    assert probe["images"] and not broken, f"images that did not load: {broken}"
    dangling = [a["href"] for a in probe["anchors"] if not a["found"]]
    assert len(probe["anchors"]) >= 5 and not dangling, f"in-page links to nothing: {dangling}"
    banner = probe["banner"]
    assert banner is not None, "no synthetic-data banner"
    assert banner["display"] != "none" and banner["visibility"] == "visible" and float(banner["opacity"]) > 0
    assert banner["width"] > 0 and banner["height"] > 0 and 0 <= banner["top"] < VIEWPORT[1], banner


def test_page_shows_only_what_was_run(seen):
    bad = [(t["id"], t["dashRows"], t["dashColumns"]) for t in seen["screen"]["tables"]
           if t["dashRows"] or t["dashColumns"]]  # fmt: skip
    assert not bad, f"tables with all-dash rows or columns (id, rows, columns): {bad}"
    assert not seen["screen"]["emptySections"], f"sections with nothing in them: {seen['screen']['emptySections']}"


def test_prints_to_a4_without_cut_tables(seen):
    assert not overflowing(seen["print"]), f"tables cut on an A4 page: {overflowing(seen['print'])}"
    page = seen["print"]["page"]
    assert page["scrollWidth"] <= page["clientWidth"], f"printed page wider than A4: {page}"
    pdf = seen["pdf"]
    boxes = re.findall(rb"/MediaBox\s*\[\s*0 0 ([\d.]+) ([\d.]+)\s*\]", pdf)
    assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page\b", pdf)) >= 2
    assert boxes and all(abs(float(w) - A4_POINTS[0]) < 1 and abs(float(h) - A4_POINTS[1]) < 1 for w, h in boxes)


if __name__ == "__main__":
    index, out = Path(sys.argv[1]), Path(sys.argv[2])
    height = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    b = Browser(chromium_binary() or sys.exit("no chromium"))
    try:
        b.open(index, *VIEWPORT, scrollbars=False)
        out.write_bytes(b.screenshot(height))
        print(json.dumps(b.evaluate(PROBE)["page"]))
    finally:
        b.close()
