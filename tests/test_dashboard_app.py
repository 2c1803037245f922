"""The dashboard's pages through Streamlit's own test harness (AppTest), against the job's real
output of the sample stream: every figure on a page equals SQL over the same views; bad
outputs give one line on the page, never a traceback.

    .venv/bin/pytest tests/test_dashboard_app.py -q
"""
import os
import urllib.parse

import pytest
from streamlit.testing.v1 import AppTest

from connectors.query import duckdb_sql
from connectors.sources.sample_stream import SURGE_BRAND, THEME_TERMS
from dashboard import cli, data
from dashboard.safe_text import md

APP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dashboard", "app.py")

pytestmark = pytest.mark.integration


def app(monkeypatch, output, page="Overview", reviewer="tester", **params) -> AppTest:
    monkeypatch.setenv("PULSE_DASHBOARD_OUTPUT", output)
    monkeypatch.setenv("PULSE_DASHBOARD_REFRESH", "0")
    monkeypatch.setenv("PULSE_DASHBOARD_REVIEWER", reviewer)
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["page"] = page
    for key, value in params.items():
        at.query_params[key] = value
    return at.run()


def sql(out, text):
    return duckdb_sql.query(out, text)[1]


def no_traceback(at):
    assert [e.value for e in at.exception] == []


def metric_values(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_overview_figures_equal_sql(monkeypatch, dashboard_output):
    at = app(monkeypatch, dashboard_output)
    no_traceback(at)
    [(posts, negative)] = sql(dashboard_output, "SELECT sum(posts), sum(negative) FROM sentiment_windows_latest "
                                                "WHERE keyword = '*' AND lang = '*'")
    [(alerts,)] = sql(dashboard_output, "SELECT count(*) FROM alerts_unique")
    shown = metric_values(at)
    assert shown["Posts in windows"] == f"{posts:,}"
    assert shown["Negative share"] == f"{negative / posts:.1%}"
    assert shown["Alerts"] == str(alerts)


def test_late_panes_are_shown_as_corrections(monkeypatch, dashboard_output):
    late = sql(dashboard_output, "SELECT window_start, posts FROM sentiment_windows_latest "
                                 "WHERE keyword = '*' AND lang = '*' AND pane_timing = 'LATE' ORDER BY 1")
    assert late, "the sample stream has late posts"
    at = app(monkeypatch, dashboard_output)
    fixes = at.dataframe[0].value
    assert [(t.to_pydatetime(), n) for t, n in zip(fixes["window_start"], fixes["corrected_posts"])] == late
    assert (fixes["corrected_posts"] >= fixes["on_time_posts"]).all()


def test_a_keyword_filter_narrows_every_figure(monkeypatch, dashboard_output):
    [(keyword,)] = sql(dashboard_output, "SELECT keyword FROM alerts_unique ORDER BY window_start LIMIT 1")
    at = app(monkeypatch, dashboard_output, keyword=keyword)
    no_traceback(at)
    [(posts, negative)] = sql(dashboard_output, f"SELECT sum(posts), sum(negative) FROM sentiment_windows_latest "
                                                f"WHERE keyword = '{keyword}' AND lang = '*'")
    [(alerts,)] = sql(dashboard_output, f"SELECT count(*) FROM alerts_unique WHERE keyword = '{keyword}'")
    shown = metric_values(at)
    assert (shown["Posts in windows"], shown["Alerts"]) == (f"{posts:,}", str(alerts))
    assert at.header[0].value == f"Overview: {md(keyword)}"


def test_alerts_list_incidents_each_with_its_alerts_drivers_and_posts(monkeypatch, dashboard_output):
    at = app(monkeypatch, dashboard_output, page="Alerts")
    no_traceback(at)
    incidents = sql(dashboard_output, "SELECT incident_id, keyword, started_at, alerts FROM incidents "
                                      "ORDER BY started_at DESC, keyword")
    [(alerts,)] = sql(dashboard_output, "SELECT count(*) FROM alerts_unique")
    assert len(at.expander) == len(incidents) > 0
    assert sum(n for *_, n in incidents) >= alerts  # every alert is in an incident ('*' echoes in each)
    incident_id, keyword, started, size = incidents[-1 if incidents[0][1] == "*" else 0]
    shown = next(e for e in at.expander if e.label.startswith(f"{started:%Y-%m-%d %H:%M}"))
    assert md(keyword) in shown.label and f"{size} alerts" in shown.label
    link = shown.markdown[0].value
    assert "page=Posts" in link and f"keyword={urllib.parse.quote(keyword)}" in link
    members, drivers, _examples, samples = (d.value for d in shown.dataframe)
    assert len(members) == size
    ids = sql(dashboard_output, f"SELECT sample_post_ids FROM incident_alerts WHERE incident_id = '{incident_id}'")
    assert sorted(samples["post_id"]) == sorted({i for (row,) in ids for i in row})
    assert list(drivers.columns) == ["term", "term_kind", "window_posts", "baseline_posts", "log_odds", "zscore"]
    assert list(drivers["zscore"]) == sorted(drivers["zscore"], reverse=True) and len(drivers) == 10


def test_the_sample_surge_drivers_lead_with_its_planted_theme(monkeypatch, dashboard_output):
    """The sample's complaint surge (connectors/sources/sample_stream.py) is its corpus's negative
    delay-and-outage tweets: the Alerts page's drivers of that incident rank the theme's words first."""
    [(started, keyword)] = sql(dashboard_output, "SELECT started_at, keyword FROM incidents "
                                                 "WHERE keyword = 'acme-air' AND kinds LIKE '%negative_surge%'")
    assert (started.strftime("%H:%M"), keyword) == ("14:40", SURGE_BRAND)
    at = app(monkeypatch, dashboard_output, page="Alerts")
    no_traceback(at)
    shown = next(e for e in at.expander if e.label.startswith(f"{started:%Y-%m-%d %H:%M}") and md(keyword) in e.label)
    terms = list(shown.dataframe[1].value["term"])
    assert terms[0] in THEME_TERMS and {"late", "power"} <= set(terms[:3]), terms


def test_posts_of_a_window_are_searchable(monkeypatch, dashboard_output):
    [(start, end, keyword)] = sql(dashboard_output, "SELECT window_start, window_end, keyword FROM alerts_unique "
                                                    "ORDER BY window_start LIMIT 1")
    iso = {"start": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "end": end.strftime("%Y-%m-%dT%H:%M:%SZ")}
    at = app(monkeypatch, dashboard_output, page="Posts", keyword=keyword, **iso)
    no_traceback(at)
    shown = at.dataframe[0].value
    expected = sql(dashboard_output, f"SELECT post_id FROM scored_posts_unique WHERE keyword = '{keyword}' AND "
                                     f"created_at >= '{iso['start']}' AND created_at <= '{iso['end']}'")
    assert sorted(shown["post_id"]) == sorted(p for (p,) in expected)
    word = shown["text"].iloc[0].split()[0]
    at.text_input[0].input(word).run()
    searched = at.dataframe[0].value
    assert 0 < len(searched) <= len(shown)
    assert all(word.lower() in t.lower() for t in searched["text"])


def test_health_shows_the_stored_rows_dead_letters_and_drift(monkeypatch, dashboard_output):
    at = app(monkeypatch, dashboard_output, page="Health")
    no_traceback(at)
    [(stored, dead, late)] = sql(dashboard_output, "SELECT (SELECT count(*) FROM scored_posts_unique), "
                                                   "(SELECT count(*) FROM dead_letters_unique), "
                                                   "(SELECT countif(beyond_lateness) FROM scored_posts_unique)")
    shown = metric_values(at)
    assert (shown["Scored posts stored"], shown["Dead letters"]) == (f"{stored:,}", f"{dead:,}")
    assert shown["Posts past the allowed lateness"] == f"{late:,}"
    # a window is (keyword, language, start): its roll-ups ('*') are the same posts again
    [(corrected,)] = sql(dashboard_output, "SELECT count(DISTINCT (keyword, lang, window_start)) FROM sentiment_windows "
                                           "WHERE pane_timing = 'LATE' AND keyword != '*' AND lang != '*'")
    assert shown["Windows corrected by late panes"] == f"{corrected:,}"
    by_reason = at.dataframe[-1].value if dead else None
    if dead:
        assert int(by_reason["dead_letters"].sum()) == dead


def test_a_missing_output_is_one_line_on_the_page(monkeypatch, tmp_path):
    at = app(monkeypatch, str(tmp_path / "nowhere"))
    no_traceback(at)
    assert [e.value for e in at.error] == [md(f"no output directory '{tmp_path / 'nowhere'}': run the job first "
                                              f"(pulse run --output {tmp_path / 'nowhere'})")]


def test_an_empty_output_says_so_and_renders(monkeypatch, tmp_path):
    for page in ("Overview", "Alerts", "Posts", "Health", "Review"):
        at = app(monkeypatch, str(tmp_path), page=page)
        no_traceback(at)
        assert any("is empty" in w.value for w in at.warning), page


def test_a_corrupt_parquet_file_is_skipped_with_a_warning(monkeypatch, fresh_dashboard_output):
    folder = os.path.join(fresh_dashboard_output, "scored_posts", "2026-11-24")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "999999-p0-broken.parquet"), "wb") as f:
        f.write(b"PAR1 this is not a parquet file")
    for page in ("Overview", "Posts", "Health"):
        at = app(monkeypatch, fresh_dashboard_output, page=page)
        no_traceback(at)
        assert any(md("999999-p0-broken.parquet") in w.value for w in at.warning), page
    assert metric_values(at)["Scored posts stored"] != "0"


def test_the_cli_binds_to_loopback_and_refuses_a_missing_bigquery_dataset(capsys, monkeypatch):
    args = cli.parser().parse_args(["--output", "out"])
    assert args.address == "127.0.0.1" and cli.is_loopback(args.address)
    assert not cli.is_loopback("0.0.0.0") and cli.is_loopback("::1") and cli.is_loopback("localhost")
    command = cli.streamlit_command("127.0.0.1", 8765)
    assert command[command.index("--server.address") + 1] == "127.0.0.1"
    assert command[command.index("--browser.gatherUsageStats") + 1] == "false"
    assert cli.main(["--output", "out", "--refresh", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "pulse dashboard: error: --refresh cannot be negative"


def test_a_bigquery_dataset_that_does_not_exist_is_one_line(bq_emulator, capsys, monkeypatch):
    from tests.fixtures.bigquery import PROJECT

    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", bq_emulator.split("//", 1)[1])
    assert cli.main(["--output", f"{PROJECT}:no_such_dataset"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"pulse dashboard: error: BigQuery dataset {PROJECT}:no_such_dataset does not "
                   "exist (create it with make bq-tables)"]
    with pytest.raises(data.SourceError, match="does not exist"):
        data.open_source(f"{PROJECT}:no_such_dataset")


@pytest.mark.slow
@pytest.mark.parametrize("address, warned", [("127.0.0.1", False), ("0.0.0.0", True)])
def test_the_dashboard_serves_on_the_port_it_prints(address, warned, dashboard_output, tmp_path):
    import re
    import signal
    import socket
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "dashboard", "--output", dashboard_output,
                             "--port", "0", "--address", address], stdout=subprocess.PIPE,
                            stderr=open(tmp_path / "err.log", "w"), text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        port = int(re.fullmatch(r"pulse dashboard: http://[\d.]+:(\d+)/ \(output .*; Ctrl\+C stops\)\n", line)[1])
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "err.log").read_text()
                time.sleep(0.3)
        err = (tmp_path / "err.log").read_text()
        assert ("anyone who can reach this machine" in err) == warned
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)


def test_posts_page_pages_through_every_post_newest_first_with_filters_in_the_address(monkeypatch,
                                                                                      fresh_dashboard_output):
    out = fresh_dashboard_output
    [(total, oldest)] = sql(out, "SELECT count(*), min(created_at) FROM scored_posts_unique")
    desk = data.label_store(data.open_source(out))
    [row] = data.review_queue(data.open_source(out)).head(1).to_dict("records")
    assert desk.record(row, "positive", "ana")[0]
    at = app(monkeypatch, out, page="Posts")
    no_traceback(at)
    first = at.dataframe[0].value
    assert list(first["created_at"]) == sorted(first["created_at"], reverse=True) and len(first) == 100
    assert f"of {total:,} (newest first)" in at.caption[0].value
    # The last page holds the oldest post: every row can be reached (the page once stopped at 1,000).
    pages = -(-total // 100)
    at.number_input[0].set_value(pages).run()
    assert at.dataframe[0].value["created_at"].min().to_pydatetime() == oldest
    assert at.query_params["p"] == [str(pages)] or at.query_params["p"] == str(pages)
    # Filters narrow the rows and go into the address; the reviewer's label is beside the model's.
    at.selectbox[1].set_value("yes").run()
    shown = at.dataframe[0].value
    assert list(shown["post_id"]) == [row["post_id"]] and list(shown["reviewer_labels"]) == ["ana: positive"]
    assert "reviewed" in at.query_params
    at = app(monkeypatch, out, page="Posts", label="negative", min_confidence="0.9")
    shown = at.dataframe[0].value
    [(count,)] = sql(out, "SELECT count(*) FROM scored_posts_unique WHERE label = 'negative' AND confidence >= 0.9")
    assert set(shown["label"]) == {"negative"} and (shown["confidence"] >= 0.9).all()
    assert f"of {count:,} (newest first)" in at.caption[0].value


def test_posts_text_is_shown_decoded(monkeypatch, hostile_dashboard_output):
    out, ids = hostile_dashboard_output
    at = app(monkeypatch, out, page="Posts", search="AT&amp;T")  # the text as stored
    shown = at.dataframe[0].value["text"]
    assert shown.str.contains("AT&T").all() and not shown.str.contains("&amp;").any()
    assert any(t.startswith("$$\\Huge") for t in shown)  # the hostile post among the sample's


def test_compare_ranks_brands_against_their_previous_period(monkeypatch, dashboard_output):
    at = app(monkeypatch, dashboard_output, page="Compare", period="30")
    no_traceback(at)
    table = at.dataframe[0].value
    [(end,)] = sql(dashboard_output, "SELECT max(window_end) FROM sentiment_windows_latest")
    import datetime as dt

    end = end + dt.timedelta(seconds=1)
    start, before = end - dt.timedelta(minutes=30), end - dt.timedelta(minutes=60)
    expected = {}
    for label, lo, hi in (("now", start, end), ("before", before, start)):
        rows = sql(dashboard_output, f"""
            SELECT keyword, sum(posts), sum(negative), sum(positive), sum(posts - coalesce(unsupported, 0))
            FROM sentiment_windows_latest WHERE keyword != '*' AND lang = '*'
              AND window_start >= '{lo.isoformat()}' AND window_start < '{hi.isoformat()}' GROUP BY keyword""")
        total = sum(r[1] for r in rows)
        expected[label] = {k: (p / total, n / lab, (pos - n) / lab) for k, p, n, pos, lab in rows}
    assert sorted(table["keyword"]) == sorted(expected["now"])
    for row in table.to_dict("records"):
        sov, neg, net = expected["now"][row["keyword"]]
        sov_b, neg_b, net_b = expected["before"][row["keyword"]]
        assert (row["share_of_voice"], row["negative_share"], row["net_sentiment"]) == pytest.approx((sov, neg, net))
        assert row["negative_share_change"] == pytest.approx(neg - neg_b)
        assert row["net_sentiment_before"] == pytest.approx(net_b)
    assert list(table["net_sentiment"]) == sorted(table["net_sentiment"], reverse=True)
    assert list(table["rank"]) == list(range(1, len(table) + 1))
    assert "Ranking now" in at.subheader[0].value


def test_the_page_is_re_read_only_when_the_output_changes(monkeypatch, fresh_dashboard_output):
    """The page looks every --refresh seconds whether the output changed (data.fingerprint) and
    re-runs only then: a finished run's page stays as it is (never greyed by a re-read)."""
    import pathlib

    out = fresh_dashboard_output
    before = data.fingerprint(out)
    assert data.fingerprint(out) == before
    hidden = pathlib.Path(out) / "scored_posts" / ".tmp-being-written.parquet"
    hidden.write_bytes(b"partial")
    assert data.fingerprint(out) == before  # a file being written is not news
    desk = data.label_store(data.open_source(out))
    assert desk.record(data.review_queue(data.open_source(out)).iloc[0].to_dict(), "negative", "ana")[0]
    assert data.fingerprint(out) != before
    monkeypatch.setenv("PULSE_DASHBOARD_OUTPUT", out)
    monkeypatch.setenv("PULSE_DASHBOARD_REFRESH", "5")
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["page"] = "Overview"
    at.run()
    no_traceback(at)
    assert at.session_state["fingerprint"] == data.fingerprint(out)
    assert any("re-read when the job writes" in c.value for c in at.caption)


def chart_specs(at) -> list[dict]:
    """The Vega-Lite specs of the page's Altair charts, as the page sent them to the browser."""
    import json

    return [json.loads(chart.proto.spec) for chart in at.get("vega_lite_chart")]


def test_a_chart_without_a_dated_24_hour_utc_axis_is_found():
    import altair as alt
    import pandas as pd

    from dashboard.charts import time_problems, time_tooltip, time_x

    frame = pd.DataFrame({"window_start": pd.to_datetime(["2026-11-24T14:40:00Z"]), "posts": [3]})
    plain = alt.Chart(frame).mark_line().encode(x="window_start:T", y="posts:Q", tooltip=["window_start:T"])
    twelve = alt.Chart(frame).mark_line().encode(
        x=alt.X("window_start:T", scale=alt.Scale(type="utc"), axis=alt.Axis(format="%b %d %I:%M")), y="posts:Q")
    assert sorted(time_problems(plain.to_dict())) == [
        "encoding/tooltip window_start: tooltip not in UTC",
        "encoding/tooltip window_start: tooltip without a date and 24-hour time",
        "encoding/x window_start: no axis format with a date and 24-hour time",
        "encoding/x window_start: not a UTC scale"]
    assert time_problems(alt.layer(twelve).to_dict()) == [
        "layer/encoding/x window_start: no axis format with a date and 24-hour time"]
    good = alt.Chart(frame).mark_line().encode(x=time_x(), y="posts:Q", tooltip=[time_tooltip()])
    assert time_problems(alt.layer(good, good).to_dict()) == []


def test_every_time_axis_on_every_page_has_the_date_and_24_hour_time(monkeypatch, dashboard_output):
    from dashboard.charts import time_problems

    charts = {}
    for page, params in (("Overview", {}), ("Compare", {"period": "30"}), ("Health", {}), ("Alerts", {}),
                         ("Accuracy", {}), ("Posts", {})):
        at = app(monkeypatch, dashboard_output, page=page, **params)
        no_traceback(at)
        specs = chart_specs(at)
        charts[page] = len(specs)
        for spec in specs:
            assert time_problems(spec) == [], page
    # every chart over time was looked at: Overview's posts, share (and unsupported when there
    # are any), Compare's three, Health's dead letters (the sample has some), drift and class mix
    assert charts["Overview"] >= 2 and charts["Compare"] == 3 and charts["Health"] == 3, charts


def test_every_headline_figure_says_what_it_counts(monkeypatch, dashboard_output):
    """Each metric has help that says what it counts; where the Overview's posts and Health's
    stored posts differ, the Overview says why (the posts past the allowed lateness)."""
    shown, captions = {}, {}
    for page in ("Overview", "Health"):
        at = app(monkeypatch, dashboard_output, page=page)
        no_traceback(at)
        for metric in at.metric:
            assert len(metric.proto.help) > 20, (page, metric.label)
        shown[page], captions[page] = metric_values(at), [c.value for c in at.caption]
    [(stored, late)] = sql(dashboard_output, "SELECT count(*), countif(beyond_lateness) FROM scored_posts_unique")
    in_windows = int(shown["Overview"]["Posts in windows"].replace(",", ""))
    assert late > 0 and in_windows + late == stored == int(shown["Health"]["Scored posts stored"].replace(",", ""))
    assert f"{in_windows:,} posts in windows ({late:,} more arrived past the allowed lateness: stored, in no window; " \
           "Health counts them)" in captions["Overview"]
