"""The report renders in headless Chromium (Debian's chromium package; .ci/run installs it): at 1280 px
the page does not overflow sideways (the metric table scrolls inside its box), every method's heat map
row has visible contrast in the screenshot, and the table's best cells are drawn."""
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

mpimg = pytest.importorskip("matplotlib.image")
pytest.importorskip("sklearn")

from fastattr.report import run_report  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WIDTH, HEIGHT = 1280, 3400

PROBE = """<script>
(() => {
  const rect = el => el.getBoundingClientRect().toJSON();
  const out = {page: document.documentElement.scrollWidth, viewport: window.innerWidth,
               box: rect(document.getElementById("metrics-box")), table: rect(document.getElementById("metrics")),
               rows: [...document.querySelectorAll('table.maps[data-page="0"] tr[data-method]')].map(
                 tr => ({method: tr.dataset.method, cells: [...tr.querySelectorAll("img")].map(rect)}))};
  const pre = document.createElement("pre");
  pre.id = "layout";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script></body>"""


def _chromium(*args, timeout=120):
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--force-device-scale-factor=1", f"--window-size={WIDTH},{HEIGHT}", *args],
                          capture_output=True, text=True, timeout=timeout)


def _count(img: np.ndarray, rgb, tol: int = 12) -> int:
    return int((np.abs(img[..., :3] - np.array(rgb)) <= tol).all(-1).sum())


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                    reason="chromium is not installed (Debian's chromium package)")
def test_report_fits_1280_px_and_every_heat_map_is_visible(tmp_path):
    assert CHROMIUM is not None, "CI must have chromium: .ci/run installs Debian's chromium package"
    result = run_report(n=8, out=tmp_path / "r", progress=False)
    page = tmp_path / "r" / "index.html"
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE))
    dom = _chromium("--dump-dom", probe.as_uri()).stdout
    layout = json.loads(re.search(r'<pre id="layout">(.*?)</pre>', dom, re.S).group(1).replace("&quot;", '"'))
    # The page never scrolls sideways at 1280 px: the wide metric table scrolls inside its box.
    assert layout["page"] <= layout["viewport"] == WIDTH, layout
    assert layout["box"]["right"] <= WIDTH and layout["table"]["width"] >= layout["box"]["width"] - 2
    shot = tmp_path / "shot.png"
    proc = _chromium(f"--screenshot={shot}", page.as_uri())
    assert shot.exists(), proc.stderr[-2000:]
    img = (mpimg.imread(shot)[..., :3] * 255).round().astype(int)
    rows = {r["method"]: r["cells"] for r in layout["rows"]}
    assert set(rows) == {"input", *result.methods}
    for method, cells in rows.items():
        assert len(cells) == 8, method
        contrast = []
        for c in cells:
            top, left = int(c["top"]) + 2, int(c["left"]) + 2
            panel = img[top:int(c["bottom"]) - 2, left:int(c["right"]) - 2]
            assert panel.size and int(c["bottom"]) <= HEIGHT, (method, c)
            contrast.append(panel.std())
        # each map is drawn on its own scale: its panel spans dark to light, not one flat colour
        assert np.median(contrast) > 25, (method, [round(v) for v in contrast])
    # The metric table's best cells are drawn with a light green background.
    assert _count(img, (0xD9, 0xF2, 0xD9), tol=6) > 200
