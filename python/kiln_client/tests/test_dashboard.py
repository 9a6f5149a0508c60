"""The dashboard in a real browser: headless Chromium against ``kiln up`` with jobs flowing. It
signs in with the admin key, shows the five tiers and the workers, updates without a reload, runs
a what-if forecast, and logs no console error. A screenshot is kept in ``$KILN_ARTIFACTS`` (or the test's folder).

Needs Debian's ``chromium`` and ``chromium-driver`` and PyPI's ``selenium``; skipped without them
unless ``KILN_REQUIRE_BROWSER=1`` (CI), where their absence fails the test."""

import os
import pathlib
import shutil
import time

import pytest

from kiln_client import Kiln


def browser():
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
    if webdriver is None or not shutil.which("chromium") or not shutil.which("chromedriver"):
        if os.environ.get("KILN_REQUIRE_BROWSER") == "1":
            pytest.fail("KILN_REQUIRE_BROWSER=1 but chromium, chromedriver or selenium is missing")
        pytest.skip("no headless browser here (chromium, chromium-driver, selenium)")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    return webdriver.Chrome(options=options, service=service)


def wait(condition, seconds=30, what="the page"):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"{what}: not within {seconds} s")


def test_the_dashboard_shows_the_tiers_and_workers_and_updates(kiln_up, tmp_path):
    driver = browser()  # first: it skips the test where there is no browser, selenium included
    from selenium.webdriver.common.by import By

    try:
        with Kiln(kiln_up["url"], kiln_up["user_key"]) as kiln:
            for index in range(3):
                kiln.generations.create("demo-video", {"prompt": f"dashboard {index}", "num_frames": 8, "width": 64, "height": 64})
        driver.get(kiln_up["url"] + "/dashboard")
        driver.find_element(By.ID, "key").send_keys(kiln_up["admin_key"])
        driver.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
        assert kiln_up["admin_key"] not in driver.current_url, "the key never goes in the URL"

        cards = wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#tiers .card"), what="the tier cards")
        assert [card.get_attribute("data-tier") for card in cards] == ["enterprise", "api", "unlimited", "light", "free"]
        wait(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#workers tr")) > 1, what="a worker row")
        # The chart starts from the server's samples of the queue, a line per tier.
        wait(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#chart polyline")) == 5, what="the chart's lines")
        first = driver.find_element(By.ID, "updated").text
        wait(lambda: driver.find_element(By.ID, "updated").text not in ("", first), what="an update without a reload")
        assert driver.execute_script("return performance.getEntriesByType('navigation').length") == 1

        # The simulator hand-off: what if we add 16 GPUs, from the queue as it is.
        added = driver.find_element(By.ID, "add-gpus")
        added.clear()
        added.send_keys("16")
        driver.find_element(By.ID, "forecast-run").click()
        rows = wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#forecast tr")[1:], what="the forecast")
        assert [row.find_element(By.TAG_NAME, "td").text for row in rows] == ["enterprise", "api", "unlimited", "light", "free"]
        header = driver.find_element(By.CSS_SELECTOR, "#forecast tr").text
        assert "with " in header and "queued after 1 h" in header, header
        assert "arrivals an hour" in driver.find_element(By.ID, "forecast-inputs").text

        artifacts = pathlib.Path(os.environ.get("KILN_ARTIFACTS", tmp_path))
        artifacts.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(artifacts / "dashboard.png"))
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == [], errors
    finally:
        driver.quit()
