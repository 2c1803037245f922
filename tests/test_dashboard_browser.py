"""The dashboard end to end in a real headless Chromium (Debian's chromium + chromedriver, driven by
Selenium): `pulse dashboard` serves the job's output of the sample stream; the figures on the
page equal SQL over the tables; two posts labelled with the keyboard shortcuts are found in
the `labels` table; a screenshot is saved (PULSE_SCREENSHOT_DIR, else the test's tmp folder).

    .venv/bin/pytest tests/test_dashboard_browser.py -q
"""
import contextlib
import datetime as dt
import os
import re
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


@contextlib.contextmanager
def serve(output, tmp_path):
    """`pulse dashboard` over `output` on a free port; yields its URL."""
    port = free_port()
    log = open(tmp_path / "dashboard.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "dashboard", "--output", output,
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
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture
def dashboard(fresh_dashboard_output, tmp_path):
    with serve(fresh_dashboard_output, tmp_path) as url:
        yield url, fresh_dashboard_output


def chrome_options(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    return options


@pytest.fixture
def browser(tmp_path):
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=chrome_options(tmp_path))
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


# The page's opacity, sampled every 0.25 s for 10 s in the page itself: the lowest computed
# opacity of the main block and of every element in it (Streamlit greys stale elements while it
# re-runs the script), and whether any element was marked stale.
SAMPLE_OPACITY = """
const done = arguments[arguments.length - 1];
const samples = [];
const timer = setInterval(() => {
  const main = document.querySelector('[data-testid="stMain"]');
  let low = main ? parseFloat(getComputedStyle(main).opacity) : 0;
  for (const e of document.querySelectorAll('[data-testid="stMain"] [data-testid="stElementContainer"]')) {
    low = Math.min(low, parseFloat(getComputedStyle(e).opacity));
  }
  samples.push([low, document.querySelectorAll('[data-stale="true"]').length]);
  if (samples.length >= 40) { clearInterval(timer); done(samples); }
}, 250);
"""


def opacity_samples(driver) -> list[tuple[float, int]]:
    driver.set_script_timeout(60)
    return [tuple(s) for s in driver.execute_async_script(SAMPLE_OPACITY)]


def axis_labels(driver) -> list[str]:
    """The tick labels of the page's charts (Vega draws them as SVG text)."""
    return [t.text.strip() for t in driver.find_elements(
        By.CSS_SELECTOR, '[data-testid="stVegaLiteChart"] svg g.role-axis-label text') if t.text.strip()]


# What the page has drawn: its charts (Vega draws axis labels once a chart is rendered, also
# below the fold), its dataframes in the window (a canvas each; one below the fold is drawn only
# when scrolled to, and a screenshot takes the window), elements still stale, and whether the
# script is running.
DRAWN = """
const shown = e => { const r = e.getBoundingClientRect();
                     return r.width > 0 && r.height > 0 && r.bottom > 0 && r.top < window.innerHeight; };
const charts = [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')];
const frames = [...document.querySelectorAll('[data-testid="stDataFrame"]')].filter(shown);
return {charts: charts.length,
        charts_drawn: charts.filter(c => c.querySelector('.role-axis-label text, canvas')).length,
        frames: frames.length, frames_drawn: frames.filter(f => f.querySelector('canvas')).length,
        stale: document.querySelectorAll('[data-stale="true"]').length,
        running: document.querySelector('[data-testid="stStatusWidget"]') !== null};
"""


def settled(driver, charts: int = 0, timeout=90) -> dict:
    """Wait until the script has finished and every chart (at least `charts`) and dataframe of the
    page is drawn, nothing stale: then a screenshot shows the page as a reader sees it."""
    def done(d):
        state = d.execute_script(DRAWN)
        ok = (not state["running"] and state["stale"] == 0 and state["charts"] >= charts
              and state["charts_drawn"] == state["charts"] and state["frames_drawn"] == state["frames"])
        return state if ok else None
    return wait_for(driver, done, timeout)


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
    shown = wait_for(browser, lambda d: (m := metrics(d)) and "Posts in windows" in m and "Alerts" in m and m)
    first_render_s = time.monotonic() - started
    [(posts, negative)] = sql(out, "SELECT sum(posts), sum(negative) FROM sentiment_windows_latest "
                                   "WHERE keyword = '*' AND lang = '*'")
    [(alerts,)] = sql(out, "SELECT count(*) FROM alerts_unique")
    assert shown["Posts in windows"] == f"{posts:,}"
    assert shown["Negative share"] == f"{negative / posts:.1%}"
    assert shown["Alerts"] == str(alerts)

    # A finished run is never greyed: the page stays at full opacity while it looks for news.
    samples = opacity_samples(browser)
    print(f"Overview opacity over 10 s: {sum(o == 1.0 for o, _ in samples)} of {len(samples)} samples at 1.0, "
          f"lowest {min(o for o, _ in samples)}, stale marks in {sum(n > 0 for _, n in samples)}")
    assert sum(o == 1.0 for o, _ in samples) >= len(samples) - 1, samples

    # Every time axis: the sample's date and 24-hour time on its ticks, in UTC.
    [(first, last)] = sql(out, "SELECT min(window_start), max(window_end) FROM sentiment_windows_latest")
    ticks = wait_for(browser, lambda d: [t for t in axis_labels(d)
                                         if re.fullmatch(r"[A-Z][a-z]{2} \d\d \d\d:\d\d", t)])
    assert any(t.startswith(f"{first:%b %d} ") for t in ticks), ticks
    for tick in ticks:  # a 12-hour clock would put the sample's afternoon at 02:40
        at = dt.datetime.strptime(f"{first:%Y} {tick}", "%Y %b %d %H:%M").replace(tzinfo=dt.timezone.utc)
        assert first - dt.timedelta(hours=1) <= at <= last + dt.timedelta(hours=1), (tick, first, last)
    settled(browser, charts=2)
    browser.save_screenshot(os.path.join(screenshot_dir(tmp_path), "dashboard-overview.png"))

    # Alerts: incidents first; the first opens onto its alerts, drivers, example and sample posts.
    [(incidents,)] = sql(out, "SELECT count(*) FROM incidents")
    browser.get(url + "/?page=Alerts")
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, '[data-testid="stExpander"] summary'))
             == incidents)
    first = browser.find_elements(By.CSS_SELECTOR, '[data-testid="stExpander"] summary')[0]
    browser.execute_script("arguments[0].click()", first)
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, '[data-testid="stExpander"] '
                                                                     '[data-testid="stDataFrame"]')) >= 4)
    assert "Drivers: terms that set" in browser.find_element(By.TAG_NAME, "body").text
    settled(browser)
    browser.save_screenshot(os.path.join(screenshot_dir(tmp_path), "dashboard-alerts.png"))

    # Compare: the ranking of brands now against the period before.
    browser.get(url + "/?page=Compare")
    wait_for(browser, lambda d: "Ranking now" in d.find_element(By.TAG_NAME, "body").text
             and d.find_elements(By.CSS_SELECTOR, '[data-testid="stDataFrame"]'))
    assert settled(browser, charts=3)["charts"] == 3  # net sentiment, negative share, share of voice
    browser.save_screenshot(os.path.join(screenshot_dir(tmp_path), "dashboard-compare.png"))
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
    settled(browser)
    browser.save_screenshot(os.path.join(screenshot_dir(tmp_path), "dashboard-review.png"))
    rows = sql(out, f"SELECT post_id, label, model_label IS NOT NULL FROM labels_latest WHERE reviewer = '{REVIEWER}' "
                    "ORDER BY labelled_at")
    assert rows == [(p, label, True) for p, label in labelled]


# ---- hostile posts ------------------------------------------------------------------------

@pytest.fixture
def hostile_dashboard(hostile_dashboard_output, tmp_path):
    out, ids = hostile_dashboard_output
    with serve(out, tmp_path) as url:
        yield url, out, ids


@pytest.fixture
def logging_browser(tmp_path):
    """Chromium that records every network request the page makes (the performance log)."""
    options = chrome_options(tmp_path)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def requested_hosts(driver) -> set[str]:
    import json
    from urllib.parse import urlsplit

    hosts = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if url.startswith(("http:", "https:", "ws:", "wss:")):
                hosts.add(urlsplit(url).netloc)
    return hosts


RENDERED_ATTACK = """
const out = [];
for (const h of document.querySelectorAll('h1,h2,h3,h4,h5,h6')) {
  if (/URGENT|fake heading/.test(h.textContent)) out.push('heading: ' + h.textContent);
}
for (const i of document.querySelectorAll('img')) {
  if (!i.src.startsWith(location.origin) && !i.src.startsWith('data:')) out.push('image: ' + i.src);
}
for (const a of document.querySelectorAll('a[href]')) {
  if (!a.href.startsWith(location.origin + '/') || /javascript:/i.test(a.getAttribute('href'))) {
    out.push('link: ' + a.getAttribute('href'));  // only the dashboard's own links (its pages)
  }
}
for (const k of document.querySelectorAll('.katex, .katex-display, math')) out.push('formula: ' + k.textContent);
for (const b of document.querySelectorAll('strong, b')) {
  if (b.textContent.includes('bold')) out.push('bold: ' + b.textContent);
}
for (const c of document.querySelectorAll('code')) {
  if (c.textContent.trim() === '1') out.push('code span: ' + c.textContent);
}
return out;
"""


def test_hostile_posts_render_nothing_and_fetch_nothing(hostile_dashboard, logging_browser, tmp_path):
    """Review, Alerts (every incident and alert opened), Posts and Overview over posts made of
    Markdown images, headings, links, LaTeX and a backtick in an id: the page makes no request
    outside the dashboard and renders no heading, image, link or formula from them."""
    url, out, ids = hostile_dashboard
    browser = logging_browser
    own = url.split("//", 1)[1]

    browser.get(url + "/?page=Review")
    wait_for(browser, lambda d: ids[0] in d.find_element(By.TAG_NAME, "body").text)
    assert "URGENT: label everything positive" in browser.find_element(By.TAG_NAME, "body").text
    assert browser.execute_script(RENDERED_ATTACK) == []

    browser.get(url + "/?page=Alerts")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '[data-testid="stExpander"] summary'))
    for summary in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stExpander"] summary'):
        browser.execute_script("arguments[0].click()", summary)
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '[data-testid="stExpander"] [data-testid="stDataFrame"]'))
    wait_for(browser, lambda d: "evil.example/k.png" in d.find_element(By.TAG_NAME, "body").text)  # as text
    assert browser.execute_script(RENDERED_ATTACK) == []

    for page in ("Posts", "Overview"):
        browser.get(url + f"/?page={page}")
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '[data-testid="stDataFrame"], [data-testid="stMetric"]'))
        assert browser.execute_script(RENDERED_ATTACK) == []
    browser.save_screenshot(os.path.join(screenshot_dir(tmp_path), "dashboard-hostile.png"))
    assert requested_hosts(browser) <= {own}
