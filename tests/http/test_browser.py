"""The web page in a real browser: Debian's chromium driven by Playwright (never a downloaded
browser). Three images and a text file go through the page; the images' thumbnails must load,
the text file must show an error card. The screenshot is kept as a test artifact (and written to
``$PIXFLEET_SCREENSHOT`` too, when set: that is how ``docs/img/ingress.png`` is made)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright

from tests.conftest import IN_CI
from tests.helpers import images
from tests.http.procs import IngressFleet

pytestmark = pytest.mark.e2e

CHROMIUM = Path(os.environ.get("PIXFLEET_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
THUMBS_LOADED = """() => {
    const imgs = [...document.querySelectorAll('img.thumb')];
    return imgs.length >= 3 && imgs.every(i => i.complete && i.naturalWidth > 0);
}"""

CARDS = """cards => cards.map(c => [c.className, c.dataset.taskId, c.innerText.slice(0, 300),
    [...c.querySelectorAll('img')].map(i => [i.src, i.complete, i.naturalWidth])])"""


@pytest.fixture
def chromium() -> Iterator[Path]:
    if not CHROMIUM.exists():
        what = f"{CHROMIUM} (apt-get install chromium; tests/harness/ensure-chromium.sh)"
        if IN_CI:
            pytest.fail(f"{what} is missing (CI=true: a missing browser is a failure)")
        pytest.skip(f"{what} is missing")
    yield CHROMIUM


def test_the_page_uploads_images_and_shows_their_thumbnails(
    ingress_fleet: IngressFleet, chromium: Path, tmp_path: Path
) -> None:
    picked = _pictures(tmp_path)
    shot = tmp_path / "ingress.png"
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(chromium),
            args=CHROMIUM_ARGS,
            viewport={"width": 1100, "height": 760},
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            console: list[str] = []
            page.on("console", lambda msg: console.append(msg.text))
            page.goto(ingress_fleet.a.url + "/")
            page.set_input_files("#files", [str(p) for p in picked])
            try:
                page.wait_for_function(THUMBS_LOADED, timeout=30_000)
            except PlaywrightError:
                cards = page.eval_on_selector_all(".card", CARDS)
                raise AssertionError(
                    f"cards: {cards}\nconsole: {console}\n{ingress_fleet.a.log()[-3000:]}"
                    f"\n{ingress_fleet.worker.log()[-3000:]}"
                ) from None
            error = page.locator(".card.error .reason")
            error.wait_for(timeout=10_000)
            assert "input.not_image" in error.inner_text()
            assert "notes.txt" in error.inner_text()
            page.wait_for_function(
                "() => document.querySelectorAll('.card.done').length === 3", timeout=30_000
            )
            assert page.locator(".links a").count() >= 3
            page.screenshot(path=str(shot), full_page=True)
            page.set_viewport_size({"width": 390, "height": 844})  # a phone
            overflow = page.evaluate("document.documentElement.scrollWidth - innerWidth")
            assert overflow <= 0, f"the page is {overflow} px wider than a phone"
            page.screenshot(path=str(tmp_path / "ingress-phone.png"), full_page=True)
        finally:
            context.close()
    assert shot.stat().st_size > 10_000
    if os.environ.get("PIXFLEET_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["PIXFLEET_SCREENSHOT"])


def _pictures(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "pick"
    folder.mkdir()
    paths = []
    for i, (w, h) in enumerate([(1200, 800), (800, 1000), (1000, 700)]):
        path = folder / f"photo-{i + 1}.jpg"
        path.write_bytes(images.jpeg_bytes(w, h, seed=i + 7))
        paths.append(path)
    notes = folder / "notes.txt"
    notes.write_text("not an image\n")
    return [*paths, notes]
