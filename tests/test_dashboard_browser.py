"""The dashboard end to end in a real headless Chromium (Debian's chromium + chromedriver, driven by
Selenium): `pulse dashboard` serves the job's output of the sample stream; the figures on the
page equal SQL over the tables; two posts labelled with the keyboard shortcuts are found in
the `labels` table; a screenshot is saved (PULSE_SCREENSHOT_DIR, else the test's tmp folder).

    .venv/bin/pytest tests/test_dashboard_browser.py -q
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from connectors.query import duckdb_sql

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("needs Debian's chromium and chromium-driver (make browser installs them)", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

REVIEWER = "e2e-reviewer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dashboard(fresh_dashboard_output, tmp_path):
    port = free_port()
    log = open(tmp_path / "dashboard.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "dashboard", "--output", fresh_dashboard_output,
                             "--port", str(port), "--refresh", "2", "--reviewer", REVIEWER],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.close()
                pytest.fail("the dashboard did not start: " + (tmp_path / "dashboard.log").read_text()[-2000:])
            time.sleep(0.3)
    try:
        yield f"http://127.0.0.1:{port}", fresh_dashboard_output
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def metrics(driver) -> dict[str, str]:
    out = {}
    for element in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stMetric"]'):
        label = element.find_element(By.CSS_SELECTOR, '[data-testid="stMetricLabel"]').text.strip()
        value = element.find_element(By.CSS_SELECTOR, '[data-testid="stMetricValue"]').text.strip()
        out[label] = value
    return out


def wait_for(driver, condition, timeout=60):
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: condition(d))


def sql(out, text):
    return duckdb_sql.query(out, text)[1]


def screenshot_dir(tmp_path) -> str:
    target = os.environ.get("PULSE_SCREENSHOT_DIR") or str(tmp_path)
    os.makedirs(target, exist_ok=True)
    return target


def test_the_page_shows_the_tables_figures_and_labels_go_to_the_labels_table(dashboard, browser, tmp_path):
    url, out = dashboard
    started = time.monotonic()
    browser.get(url + "/?page=Overview")
    shown = wait_for(browser, lambda d: (m := metrics(d)) and "Posts" in m and "Alerts" in m and m)
    first_render_s = time.monotonic() - started
    [(posts, negative)] = sql(out, "SELECT sum(posts), sum(negative) FROM sentiment_windows_latest "
                                   "WHERE keyword = '*' AND lang = '*'")
    [(alerts,)] = sql(out, "SELECT count(*) FROM alerts_unique")
    assert shown["Posts"] == f"{posts:,}"
    assert shown["Negative share"] == f"{negative / posts:.1%}"
    assert shown["Alerts"] == str(alerts)
    browser.save_screenshot(os.path.join(screenshot_dir(tmp_path), "dashboard-overview.png"))
    print(f"first page rendered in {first_render_s:.1f} s")

    browser.get(url + "/?page=Health")
    health = wait_for(browser, lambda d: (m := metrics(d)) and "Dead letters" in m and m)
    [(stored, dead)] = sql(out, "SELECT (SELECT count(*) FROM scored_posts_unique), "
                                "(SELECT count(*) FROM dead_letters_unique)")
    assert (health["Scored posts stored"], health["Dead letters"]) == (f"{stored:,}", f"{dead:,}")

    # The review desk: the oldest low-confidence post first; 1 = negative, 3 = positive.
    queue = sql(out, "SELECT post_id FROM review_queue_unique ORDER BY created_at, post_id, keyword LIMIT 2")
    browser.get(url + "/?page=Review")
    labelled = []
    for key, label in (("1", "negative"), ("3", "positive")):
        post_id = queue[len(labelled)][0]
        wait_for(browser, lambda d, p=post_id: f"post {p}" in d.find_element(By.TAG_NAME, "body").text.replace("`", ""))
        labelled.append((post_id, label))
        count = f"SELECT count(*) FROM labels WHERE reviewer = '{REVIEWER}'"
        for attempt in range(3):
            # A key pressed while the page is still wiring its shortcuts (a loaded machine) is lost;
            # pressing again while the same post is shown is safe: the button is bound to that post,
            # and a reviewer's first label of a post is written once ("already labelled" after).
            if f"post {post_id}" in browser.find_element(By.TAG_NAME, "body").text.replace("`", ""):
                ActionChains(browser).send_keys(key).perform()
            try:
                wait_for(browser, lambda d: sql(out, count)[0][0] == len(labelled), timeout=20)
                break
            except TimeoutException:
                if attempt == 2:
                    raise
    browser.save_screenshot(os.path.join(screenshot_dir(tmp_path), "dashboard-review.png"))
    rows = sql(out, f"SELECT post_id, label, model_label IS NOT NULL FROM labels_latest WHERE reviewer = '{REVIEWER}' "
                    "ORDER BY labelled_at")
    assert rows == [(p, label, True) for p, label in labelled]
