"""The report renders: headless Chromium screenshots index.html and the heat maps and the metric
table are visible (Debian's chromium package; .ci/run installs it)."""
import os
import shutil
import subprocess

import numpy as np
import pytest

mpimg = pytest.importorskip("matplotlib.image")
pytest.importorskip("sklearn")

from fastattr.report import run_report  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _count(img: np.ndarray, rgb, tol: int = 12) -> int:
    return int((np.abs(img[..., :3] - np.array(rgb)) <= tol).all(-1).sum())


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                    reason="chromium is not installed (Debian's chromium package)")
def test_index_html_renders_heat_maps_and_table(tmp_path):
    assert CHROMIUM is not None, "CI must have chromium: .ci/run installs Debian's chromium package"
    run_report(n=8, out=tmp_path / "r", progress=False)
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--window-size=1280,2600", f"--screenshot={shot}", (tmp_path / "r" / "index.html").as_uri()],
        capture_output=True, text=True, timeout=120)
    assert shot.exists(), proc.stderr[-2000:]
    img = (mpimg.imread(shot)[..., :3] * 255).round().astype(int)
    assert img.std() > 20  # not a blank page
    white = _count(img, (255, 255, 255), tol=2)
    assert white < 0.97 * img.shape[0] * img.shape[1]
    # Heat maps: saturated reds and blues of the RdBu colour map.
    reds = ((img[..., 0] > 150) & (img[..., 1] < 90) & (img[..., 2] < 90)).sum()
    blues = ((img[..., 2] > 150) & (img[..., 0] < 90) & (img[..., 1] < 150)).sum()
    assert reds > 500 and blues > 500, (reds, blues)
    # The metric table: its best-value cells are drawn with a light green background.
    assert _count(img, (0xD9, 0xF2, 0xD9), tol=6) > 200
