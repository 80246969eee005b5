"""pacsd's own web page in a real browser: headless Chromium driven by selenium's chromedriver.

A real pacsd on loopback holds a study sent by DCMTK's storescu; the page searches it by
patient name over QIDO-RS, shows its series with thumbnails, one rendered image, the live
associations and the health checks. Each view is saved as a PNG under the test's tmp folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import datagen
from tests.conftest import ServerFactory
from tests.harness import PacsdProcess

selenium = pytest.importorskip("selenium", reason="selenium is not installed (test extra)")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT_S = 30
TOOL_TIMEOUT_S = 120
PATIENT = "Webpage^Wanda"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="chromium and chromedriver are not installed (apt-get install chromium chromium-driver)",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Chromium at 1280x900, its profile under the test's tmp folder."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    arguments = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    arguments += ["--window-size=1280,900", f"--user-data-dir={tmp_path / 'profile'}"]
    for argument in arguments:
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def storescu(server: PacsdProcess, files: list[Path]) -> None:
    """DCMTK's storescu sends `files` over one association, each answered Success."""
    command = ["storescu", "-aet", "WEBTEST", "-aec", "PACSD", server.host, str(server.port)]
    result = subprocess.run(
        [*command, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        env={**os.environ},
        check=False,
    )
    assert result.returncode == 0, result.stderr


def screenshot(driver: WebDriver, folder: Path, name: str) -> Path:
    """Save the window as `folder/name.png`; checked to be a non-empty PNG."""
    path = folder / f"{name}.png"
    assert driver.save_screenshot(str(path))
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 2000, f"{path} is nearly empty"
    return path


def text_of(driver: WebDriver, selector: str) -> str:
    """The visible text of the first element matching `selector`."""
    return str(driver.find_element(By.CSS_SELECTOR, selector).text)


def images_loaded(driver: WebDriver, selector: str) -> bool:
    """Whether every image matching `selector` exists and has been decoded."""
    script = (
        "const images = [...document.querySelectorAll(arguments[0])];"
        "return images.length > 0 && images.every(i => i.complete && i.naturalWidth > 0);"
    )
    return bool(driver.execute_script(script, selector))


def test_page_searches_shows_series_image_associations_and_health(
    pacsd_server: ServerFactory, dcmtk: None, browser: WebDriver, tmp_path: Path
) -> None:
    """Typing the patient name and searching lists the study stored by storescu; opening it
    shows its series with decoded thumbnails; opening a series shows a rendered 64x64 image;
    the associations view answers from /associations and the health view says Ready. Each
    view's screenshot is a non-empty PNG."""
    server = pacsd_server()
    study = datagen.StudyContext(patient_name=PATIENT, patient_id="WEB-1")
    first = list(datagen.ct_series(tmp_path / "in1", 2, size=64, study=study))
    study.series_instance_uid = datagen.generate_uid(datagen.TEST_UID_ROOT)
    second = list(datagen.ct_series(tmp_path / "in2", 1, size=64, study=study))
    storescu(server, [*first, *second])
    shots = tmp_path / "screenshots"
    shots.mkdir()
    wait = WebDriverWait(browser, WAIT_S)

    browser.get(f"{server.http_url}/")
    browser.find_element(By.ID, "q-name").send_keys("Webpage")
    browser.find_element(By.ID, "search-button").click()
    wait.until(lambda d: "1 study found" in text_of(d, "#search-status"))
    row = browser.find_element(By.CSS_SELECTOR, "tr.study-row")
    assert "Webpage^Wanda" in row.text
    assert "WEB-1" in row.text
    screenshot(browser, shots, "1-search")

    row.click()
    wait.until(lambda d: "2 series" in text_of(d, "#study-status"))
    wait.until(lambda d: images_loaded(d, "#series-grid img.thumbnail"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#series-grid .series")) == 2
    assert "Webpage^Wanda" in text_of(browser, "#study-title")
    screenshot(browser, shots, "2-study")

    browser.find_element(By.CSS_SELECTOR, "#series-grid .series").click()
    wait.until(lambda d: images_loaded(d, "#image-rendered"))
    wait.until(lambda d: "64 x 64 pixels" in text_of(d, "#image-status"))
    assert "1 / 2" in text_of(browser, "#image-position")
    screenshot(browser, shots, "3-image")

    browser.find_element(By.ID, "nav-associations").click()
    wait.until(lambda d: "live associations" in text_of(d, "#associations-summary"))
    screenshot(browser, shots, "4-associations")

    browser.find_element(By.ID, "nav-health").click()
    wait.until(lambda d: text_of(d, "#health-summary") == "Ready")
    assert browser.find_elements(By.CSS_SELECTOR, "#health-table tbody tr")
    screenshot(browser, shots, "5-health")
    errors = [
        entry
        for entry in browser.get_log("browser")
        if entry.get("level") == "SEVERE" and "favicon" not in entry.get("message", "")
    ]
    assert errors == [], errors
