"""The sampling explorer page: its embedded numbers, its refusals, and the page in a browser."""

import base64
import json
import re
import shutil

import numpy as np
import pytest

from minidcn import nn, no_grad
from minidcn import Tensor
from minidcn import explorer as explorer_module
from minidcn.explorer import explorer
from minidcn.receptive_field import backtrack, spread

STRIDE = 2  # the tiny model's stem: one 2x2 max-pool
GRID_3X3 = np.array([(i - 1, j - 1) for i in range(3) for j in range(3)], np.float64)


def tiny_model(modulated=False, seed=0, between=None):
    """Stem (conv, max-pool 2) then three 3x3 deformable layers whose offset (and mask)
    predictors have random weights, so every unit's points differ."""
    rng = np.random.default_rng(seed)
    layers = [nn.DeformConv2d(3, 3, 3, padding=1, modulated=modulated,
                              generator=np.random.default_rng([seed, i])) for i in range(3)]
    for layer in layers:
        predictors = [layer.offset_conv] + ([layer.mask_conv] if modulated else [])
        for conv in predictors:
            conv.weight.data = rng.normal(0, 0.4, conv.weight.data.shape).astype(np.float32)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, generator=np.random.default_rng(seed)),
                         nn.ReLU(), nn.MaxPool2d(2), layers[0], between or nn.ReLU(), layers[1],
                         nn.ReLU(), layers[2])


def tiny_images(n=2, size=12):
    return np.random.default_rng(1).uniform(size=(n, 1, size, size)).astype(np.float32)


def embedded(path):
    """The page's data object, with its base64 arrays decoded."""
    text = path.read_text(encoding="utf-8")
    found = re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S)
    data = json.loads(found.group(1))

    def decode(item, dtype):
        return np.frombuffer(base64.b64decode(item), dtype=dtype)
    h, w, n = data["mapH"], data["mapW"], data["n"]
    depths = range(1, data["layers"] + 1)
    k = data["K"]
    return data, {
        "points": [decode(p, np.float32).reshape(n, h, w, k ** d, 2)
                   for p, d in zip(data["points"], depths)],
        "spread": [decode(s, np.float32).reshape(n, h, w) for s in data["spread"]],
        "regular": [decode(r, np.float32).reshape(k ** d, 2)
                    for r, d in zip(data["regular"], depths)],
        "weights": [decode(m, np.float32).reshape(n, h, w, k ** d)
                    for m, d in zip(data["weights"], depths)],
    }


def library_offsets(model, images):
    """The deformable layers' offsets (N, 9, h, w, 2), bottom first, and masks, by hand."""
    layers = [m for m in model if isinstance(m, nn.DeformConv2d)]
    with no_grad(), nn.recording_sampling(model):
        model(Tensor(images))
    h, w = layers[0].last_sampling_locations.shape[3:5]
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    regular = np.stack([ys, xs], -1)[None, None] + GRID_3X3[None, :, None, None, :]
    offsets = [layer.last_sampling_locations[:, 0].astype(np.float64) - regular
               for layer in layers]
    masks = [layer.last_mask[:, 0] if layer.modulated else None for layer in layers]
    return offsets, masks


def test_embedded_points_and_spreads_equal_the_library_backtracking(tmp_path):
    model, images = tiny_model(), tiny_images()
    data, arrays = embedded(explorer(model, images, tmp_path / "page.html"))
    assert (data["layers"], data["K"], data["mapH"], data["stride"]) == (3, 9, 6, STRIDE)
    offsets, _ = library_offsets(model, images)
    for depth in (1, 2, 3):
        for unit in ([0, 0], [2, 3], [5, 1]):
            expected = STRIDE * backtrack(offsets[3 - depth:], np.array([unit, unit]),
                                          GRID_3X3) + (STRIDE - 1) / 2
            page = arrays["points"][depth - 1][:, unit[0], unit[1]]
            assert page.shape == (2, 9 ** depth, 2)
            np.testing.assert_allclose(page, expected, rtol=1e-6, atol=1e-5)
            np.testing.assert_allclose(arrays["spread"][depth - 1][:, unit[0], unit[1]],
                                       spread(expected), rtol=1e-5)
    moved = arrays["points"][2] - arrays["points"][2][:, :1, :1]
    assert np.abs(moved).max() > 0.5, "the random offsets must move the points apart"


def test_embedded_regular_grid_is_the_zero_offset_stack(tmp_path):
    data, arrays = embedded(explorer(tiny_model(), tiny_images(1), tmp_path / "page.html"))
    for depth in (1, 2, 3):
        zero = [np.zeros((1, 9, 6, 6, 2))] * depth
        expected = STRIDE * backtrack(zero, np.array([[0, 0]]), GRID_3X3)[0]
        np.testing.assert_array_equal(arrays["regular"][depth - 1], expected)
    # three 3x3 layers: spread 2 units (lesson 07), 4 pixels at stride 2
    assert data["regularSpread"][2] == pytest.approx(2.0 * STRIDE, abs=1e-12)


def bilinear(image, y, x):
    """One bilinear read of a 2-D map at (y, x) clamped into it, written out by hand."""
    y, x = min(max(y, 0.0), image.shape[0] - 1), min(max(x, 0.0), image.shape[1] - 1)
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    total = 0.0
    for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
            if yy < image.shape[0] and xx < image.shape[1]:
                total += max(0, 1 - abs(y - yy)) * max(0, 1 - abs(x - xx)) * image[yy, xx]
    return total


def test_modulated_weights_are_mask_products_along_each_path(tmp_path):
    model, images = tiny_model(modulated=True), tiny_images(1)
    data, arrays = embedded(explorer(model, images, tmp_path / "page.html"))
    assert data["modulated"]
    offsets, masks = library_offsets(model, images)
    unit = (4, 2)
    top, middle = masks[2][0][:, unit[0], unit[1]], masks[1][0]
    np.testing.assert_allclose(arrays["weights"][0][0, unit[0], unit[1]], top, rtol=1e-6)
    parents = backtrack(offsets[2:], np.array([unit]), GRID_3X3)[0]  # 9 points, map coords
    expected = [top[j] * bilinear(middle[k], *parents[j]) for j in range(9) for k in range(9)]
    np.testing.assert_allclose(arrays["weights"][1][0, unit[0], unit[1]], expected,
                               rtol=1e-5, atol=1e-7)
    assert 0 < arrays["weights"][2].min() and arrays["weights"][2].max() < 1
    assert not data["weights"] == [] and embedded(
        explorer(tiny_model(), images, tmp_path / "plain.html"))[0]["weights"] == []


def test_page_is_self_contained(tmp_path):
    text = explorer(tiny_model(), tiny_images(1), tmp_path / "page.html",
                    title="<b>mine</b>").read_text(encoding="utf-8")
    assert not re.search(r'<(script|link|img)[^>]+(src|href)=', text)
    assert "http://" not in text and "https://" not in text and "@import" not in text
    assert "&lt;b&gt;mine&lt;/b&gt;" in text


@pytest.mark.parametrize("model, message", [
    (lambda: [nn.ReLU()], "model must be an nn.Sequential, got list"),
    (lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1)), "no nn.DeformConv2d layer"),
    (lambda: nn.Sequential(nn.DeformConv2d(1, 2, 3, stride=2, padding=1)),
     r"model\[0\] \(DeformConv2d\) has stride \(2, 2\); only stride-1"),
    (lambda: nn.Sequential(nn.DeformConv2d(1, 2, 3)),
     r"model\[0\] \(DeformConv2d\) has padding \(0, 0\); expected 'same' padding"),
    (lambda: nn.Sequential(nn.DeformConv2d(2, 2, 3, padding=1, offset_groups=2)),
     "has offset_groups 2; expected 1"),
    (lambda: tiny_model(between=nn.MaxPool2d(1)),
     r"model\[4\] \(MaxPool2d\) sits between deformable layers"),
])
def test_refuses_what_cannot_be_backtracked(tmp_path, model, message):
    with pytest.raises((TypeError, ValueError), match=message):
        explorer(model(), tiny_images(1), tmp_path / "page.html")
    assert not (tmp_path / "page.html").exists()


def test_refuses_bad_images_and_oversized_pages(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"images must be numbers shaped \(N, H, W\)"):
        explorer(tiny_model(), np.zeros((12, 12)), tmp_path / "page.html")
    with pytest.raises(ValueError, match="images hold NaN"):
        explorer(tiny_model(), np.full((1, 12, 12), np.nan), tmp_path / "page.html")
    with pytest.raises(ValueError, match=r"inputs must be \(N, C, H, W\) with N = 2"):
        explorer(tiny_model(), tiny_images(2), tmp_path / "page.html", inputs=tiny_images(1))
    with pytest.raises(ValueError, match="images are 13x13 but the deformable layers' map is 6x6"):
        explorer(tiny_model(), tiny_images(1, size=13), tmp_path / "page.html")
    with pytest.raises(TypeError, match="path must be a str or pathlib.Path, got int"):
        explorer(tiny_model(), tiny_images(1), 3)
    monkeypatch.setattr(explorer_module, "MAX_BYTES", 100_000)
    with pytest.raises(ValueError, match=r"over the 0.1 MB limit; pass fewer images"):
        explorer(tiny_model(), tiny_images(2), tmp_path / "page.html")
    assert not (tmp_path / "page.html").exists()


def _browser():
    """playwright's sync API and Debian's Chromium, or a pytest skip saying which is absent."""
    playwright = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); the browser test "
                    "drives the system's Chromium, not a playwright download")
    return playwright.sync_playwright, executable


@pytest.mark.parametrize("modulated", [False, True])
def test_page_in_chromium(tmp_path, modulated):
    sync_playwright, executable = _browser()
    path = explorer(tiny_model(modulated), tiny_images(3), tmp_path / "page.html")
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
            page.on("console", lambda message: errors.append(f"console: {message.text}")
                    if message.type == "error" else None)
            page.goto(path.as_uri())
            view = page.locator("#view")
            assert view.get_attribute("data-points") == "0"
            assert page.locator("#strip canvas").count() == 3
            before = page.screenshot()
            box = view.bounding_box()
            page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            assert view.get_attribute("data-points") == "729"
            unit = view.get_attribute("data-unit")
            assert re.fullmatch(r"\d,\d", unit)
            assert page.screenshot() != before, "clicking a unit must change the view"
            assert "729" in page.locator("#spreads").inner_text()
            page.check("input[name=depth][value='2']")
            assert view.get_attribute("data-points") == "81"
            page.check("input[name=depth][value='1']")
            assert view.get_attribute("data-points") == "9"
            page.check("#regular")
            assert view.get_attribute("data-regular-positions") == "9"
            page.check("input[name=depth][value='3']")
            assert view.get_attribute("data-regular-positions") == "49"  # the 7x7 block
            page.locator("#strip canvas").nth(2).click()
            assert view.get_attribute("data-image") == "2"
            assert view.get_attribute("data-unit") == unit  # the pinned unit stays
            shown = page.locator("#status").inner_text()
            assert f"image 2, unit (y, x) = ({unit.replace(',', ', ')})" in shown
        finally:
            browser.close()
    assert errors == []


def test_cli_explore_loads_the_cached_network_and_writes_the_page(tmp_path, capsys):
    """`minidcn explore --quick --out FILE` with explore_quick.npz beside FILE: no training."""
    from minidcn.cli import main
    from minidcn.scene_network import build_network

    model = build_network(3)  # untrained: its offsets are 0 and every unit reads the grid
    np.savez(tmp_path / "explore_quick.npz", pixel_mean=0.2, pixel_std=0.1,
             **model.state_dict())
    assert main(["explore", "--quick", "--out", str(tmp_path / "page.html")]) == 0
    out = capsys.readouterr().out
    assert f"loaded the trained network from {tmp_path / 'explore_quick.npz'}" in out
    assert f"wrote {tmp_path / 'page.html'}" in out and "training" not in out
    data, arrays = embedded(tmp_path / "page.html")
    assert (data["n"], data["mapH"], data["stride"], data["layers"]) == (12, 12, 4, 3)
    unit = np.array([6, 6])
    expected = 4 * backtrack([np.zeros((1, 9, 12, 12, 2))] * 3, unit[None], GRID_3X3)[0] + 1.5
    np.testing.assert_array_equal(arrays["points"][2][5, 6, 6], expected)
    assert main(["explore", "--quick", "--out", str(tmp_path)]) == 2
    assert "--out must be a file" in capsys.readouterr().err
