"""The page of `fer serve` in a real browser: Debian's chromium + chromedriver via selenium.

It opens `/`, uploads sample_images/two_faces.jpg and waits for two boxes with labels (and a
probability bar per class for each face), saves a screenshot, then presses Camera with
Chromium's fake camera playing a .y4m made from a sample portrait and waits for a live label.
Without chromium, chromedriver or selenium the module is skipped with a one-line reason.
"""

from __future__ import annotations

import os
import shutil

import pytest
from serving import SAMPLES, LiveServer, write_y4m

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip("no chromium + chromedriver on PATH (apt-get install chromium chromium-driver)",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


@pytest.fixture(scope="module")
def server(tmp_path_factory):  # type: ignore[no-untyped-def]
    srv = LiveServer(tmp_path_factory.mktemp("serve-browser"), "--timeout-s", "60")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):  # type: ignore[no-untyped-def]
    from selenium.webdriver.chrome.service import Service

    tmp = tmp_path_factory.mktemp("chromium")
    video = write_y4m(SAMPLES / "grace_hopper.jpg", tmp / "portrait.y4m")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                 f"--use-file-for-fake-video-capture={video}", f"--user-data-dir={tmp / 'profile'}",
                 "--window-size=1280,1000"):
        opts.add_argument(flag)
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for downloads
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _labels(driver) -> list[str]:  # type: ignore[no-untyped-def]
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#overlay .face-box .face-label")]


def test_photo_upload_shows_two_labelled_boxes_then_the_camera_gives_live_labels(server, browser, tmp_path) -> None:  # type: ignore[no-untyped-def]
    browser.get(server.url + "/")
    WebDriverWait(browser, 30).until(lambda d: "classes:" in d.find_element(By.ID, "model").text)
    browser.find_element(By.ID, "file").send_keys(str((SAMPLES / "two_faces.jpg").resolve()))
    WebDriverWait(browser, 90).until(lambda d: len(_labels(d)) == 2 and all(_labels(d)))
    labels = _labels(browser)
    assert [lab.split()[1] for lab in labels] == ["happy", "neutral"], labels  # as fer predict labels them
    cards = browser.find_elements(By.CSS_SELECTOR, "#faces li.face")
    assert len(cards) == 2
    for card in cards:
        assert len(card.find_elements(By.CSS_SELECTOR, ".prob .bar")) == len(CLASSES)
    boxes = browser.find_elements(By.CSS_SELECTOR, "#overlay .face-box")
    assert all(b.size["width"] > 20 and b.size["height"] > 20 for b in boxes)
    assert "2 faces" in browser.find_element(By.ID, "status").text
    shot = tmp_path / "fer-serve-photo.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

    browser.find_element(By.ID, "camera-btn").click()
    live = browser.find_element(By.ID, "live-label")
    WebDriverWait(browser, 90).until(lambda d: live.text.split(" ")[0] in CLASSES)
    assert browser.find_element(By.ID, "camera-btn").get_attribute("aria-pressed") == "true"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#overlay .face-box")) >= 1
    assert browser.save_screenshot(str(tmp_path / "fer-serve-camera.png"))
    browser.find_element(By.ID, "camera-btn").click()
    assert browser.find_element(By.ID, "camera-btn").get_attribute("aria-pressed") == "false"
