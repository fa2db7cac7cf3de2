"""Helpers of the report tests: reading the HTML, and a real headless Chromium."""

from __future__ import annotations

import html as htmllib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

IMG_SRC = re.compile(r'<img[^>]*\ssrc="([^"]*)"')
HREF = re.compile(r'href="([^"#][^"]*)"')
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WIDTH = 1280
#: The synthetic statistics directory's contrasts, and an atlas name long enough to wrap.
CONTRASTS = ("patient_gt_control", "control_gt_patient")
LONG_HO = "Left_Juxtapositional_Lobule_Cortex_(formerly_Supplementary_Motor_Cortex)"


def figure_links(html: str) -> set[str]:
    """Every local file the page links (the figure files)."""
    return {h for h in HREF.findall(html) if not h.startswith(("http:", "https:", "data:"))}


def section_text(html: str, section_id: str) -> str:
    """The text of one ``<section id=...>`` (tags kept but ``<wbr>``, entities decoded)."""
    start = html.index(f'<section id="{section_id}"')
    return htmllib.unescape(html[start:html.index("</section>", start)].replace("<wbr>", ""))


def methods_text(html: str) -> str:
    """The methods section as plain text (tags stripped before entities are decoded)."""
    start = html.index('<section id="methods"')
    raw = re.sub(r"<[^>]+>", " ", html[start:html.index("</section>", start)])
    return re.sub(r"\s+", " ", htmllib.unescape(raw))


#: Appended to a copy of the page: after load, record what the browser laid out.
PROBE = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  const W = document.documentElement.clientWidth;
  const wide = [...document.body.querySelectorAll('*')].filter(e => {
    const r = e.getBoundingClientRect(); return r.width > 0 && r.right > W + 0.5; });
  document.body.setAttribute('data-probe', JSON.stringify({
    images: imgs.length,
    broken: imgs.filter(i => !i.complete || i.naturalWidth === 0).length,
    client_width: W, scroll_width: document.documentElement.scrollWidth,
    height: document.documentElement.scrollHeight,
    overflowing: wide.slice(0, 10).map(e => e.tagName + '.' + e.className + ' ' +
                                          Math.round(e.getBoundingClientRect().right))}));
});</script></body>"""


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    # offline: every host resolves nowhere and every proxied request fails
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", "--host-resolver-rules=MAP * ~NOTFOUND",
            "--proxy-server=127.0.0.1:9", f"--user-data-dir={profile}"]
    return subprocess.run([*base, *args], capture_output=True, text=True, timeout=180)


def render(path: Path, work: Path) -> tuple[dict, Image.Image]:
    """Lay the page out at 1280 px in Chromium: (probe results, full-page screenshot)."""
    probe = path.with_name(path.stem + ".probe.html")
    probe.write_text(path.read_text().replace("</body>", PROBE))
    try:
        dom = _chromium([f"--window-size={WIDTH},900", "--virtual-time-budget=15000",
                         "--dump-dom", probe.as_uri()], work / "profile")
    finally:
        probe.unlink()
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r"data-probe=\"([^\"]*)\"", dom.stdout)
    assert found, dom.stdout[-2000:]
    info = json.loads(htmllib.unescape(found.group(1)))
    height = int(min(max(info["height"], 900), 20000))
    shot = work / f"{path.stem}-{WIDTH}.png"
    res = _chromium([f"--window-size={WIDTH},{height}", f"--screenshot={shot}", path.as_uri()],
                    work / "profile")
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    return info, Image.open(shot)


def check_in_browser(path: Path, work: Path, n_images: int) -> Image.Image:
    """Offline render at 1280 px: every image decodes, nothing overflows, screenshot drawn."""
    info, shot = render(path, work)
    assert info["images"] == n_images and info["broken"] == 0, info
    assert info["scroll_width"] <= WIDTH and info["client_width"] <= WIDTH, info
    assert info["overflowing"] == [], info
    keep = os.environ.get("CFHDASK_REPORT_SHOTS")  # a folder to look at the screenshots in
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shot.save(Path(keep) / f"{path.parent.name}-{path.stem}-{WIDTH}.png")
    pixels = np.asarray(shot.convert("L"), dtype=float)
    assert pixels.shape[1] == WIDTH and pixels.shape[0] >= 900
    assert pixels[:60].mean() < 100  # the header band is dark
    assert pixels[900:].std() > 20  # figures and tables further down are drawn
    return shot
