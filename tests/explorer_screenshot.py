"""Screenshot of a page written by ``minidcn explore``: the README's figures/explorer.png.

    minidcn explore --out /tmp/minidcn/explorer.html
    python tests/explorer_screenshot.py /tmp/minidcn/explorer.html figures/explorer.png

Opens the page in Debian's Chromium through playwright (``pip install playwright``,
``apt-get install chromium``; no browser download), picks the scene with the largest digit of
the page's 12 test scenes, switches the regular grid on, clicks the unit under the digit's
centre, and saves the page.  Fails if the page reports a JavaScript error.
"""

import shutil
import sys
from pathlib import Path

import numpy as np
from playwright.sync_api import sync_playwright

from minidcn.cli import EXPLORE_IMAGES
from minidcn.scene_network import STRIDE, make_scenes


def main(page_path: str, png: str) -> None:
    scenes = make_scenes(EXPLORE_IMAGES, test=True)  # the scenes the page shows
    image = int(np.argmax(scenes.sizes))
    unit = np.floor((scenes.affines[image, :, 2] + 0.5) / STRIDE).astype(int).tolist()
    print(f"scene {image} ({scenes.sizes[image]:.1f} px digit), unit (y, x) = {tuple(unit)}")
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium")
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(Path(page_path).resolve().as_uri())
        page.locator("#strip canvas").nth(image).click()
        page.check("#regular")
        view = page.locator("#view")
        box = view.bounding_box()
        centre = [STRIDE * u + (STRIDE - 1) / 2 for u in unit]
        x, y = page.evaluate(f"toScreen({centre[0]}, {centre[1]})")  # canvas pixels
        ratio = page.evaluate("window.devicePixelRatio || 1")
        page.mouse.click(box["x"] + x / ratio, box["y"] + y / ratio)
        if view.get_attribute("data-unit") != f"{unit[0]},{unit[1]}":
            raise SystemExit(f"clicked unit {view.get_attribute('data-unit')}, wanted {unit}")
        print(page.locator("#spreads").inner_text())
        page.screenshot(path=png, full_page=True)
        browser.close()
    if errors:
        raise SystemExit(f"the page reported JavaScript errors: {errors}")
    print(f"wrote {png}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
