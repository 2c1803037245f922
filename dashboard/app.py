"""The sentiment-pulse dashboard: a Streamlit app over the job's tables (started by `pulse dashboard`).

    pulse dashboard --output out                 # Parquet output, read through DuckDB
    pulse dashboard --output my-proj:pulse       # BigQuery

Pages (sidebar, or `?page=` in the address, so that links between pages work):
Overview, Alerts, Compare, Posts, Health, Accuracy, Review. Every page but Review looks every
`PULSE_DASHBOARD_REFRESH` seconds whether the output changed (a Streamlit fragment with
run_every that draws nothing) and re-reads the tables only then;
Review reloads its queue after each label, not under the reviewer's hands.

Settings come from the environment, set by `pulse dashboard` (dashboard/cli.py):
PULSE_DASHBOARD_OUTPUT, PULSE_DASHBOARD_REFRESH, PULSE_DASHBOARD_REVIEWER,
PULSE_DASHBOARD_WINDOW_SIZE, PULSE_DASHBOARD_WINDOW_PERIOD, PULSE_DASHBOARD_REVIEW_THRESHOLD,
PULSE_DASHBOARD_PROJECT.
"""
from __future__ import annotations

import datetime as dt
import getpass
import os
from urllib.parse import urlencode

import altair as alt
import pandas as pd
import streamlit as st

from connectors.query import sqlfiles
from connectors.sinks.labels import check_reviewer
from dashboard import data
from dashboard.charts import time_tooltip, time_x
from dashboard.safe_text import decoded, md

PAGES = ("Overview", "Alerts", "Compare", "Posts", "Health", "Accuracy", "Review")
ALL = "*"
SHORTCUTS = {"negative": "1", "neutral": "2", "positive": "3", "skip": "S"}


def settings() -> dict:
    env = os.environ
    period = env.get("PULSE_DASHBOARD_WINDOW_PERIOD")
    return {
        "output": env.get("PULSE_DASHBOARD_OUTPUT", "out"),
        "refresh": float(env.get("PULSE_DASHBOARD_REFRESH", "5")),
        "reviewer": env.get("PULSE_DASHBOARD_REVIEWER") or _default_reviewer(),
        "project": env.get("PULSE_DASHBOARD_PROJECT") or None,
        "model": env.get("PULSE_DASHBOARD_MODEL") or "bundled",  # its model.json: the Accuracy page's evaluation
        "views": sqlfiles.ViewSettings(int(env.get("PULSE_DASHBOARD_WINDOW_SIZE", "60")),
                                       int(period) if period else None,
                                       float(env.get("PULSE_DASHBOARD_REVIEW_THRESHOLD", "0.5"))),
    }


def _default_reviewer() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001  (no login name in a container)
        return "reviewer"


def open_source(conf: dict) -> data.Source | None:
    """The output, or None after showing why it cannot be read (one line, never a traceback)."""
    try:
        source = data.open_source(conf["output"], conf["views"], conf["project"])
    except data.SourceError as e:
        st.error(md(e))
        return None
    for warning in source.warnings:
        st.warning(md(warning))
    return source


def page_link(page: str, **params) -> str:
    return "?" + urlencode({"page": page, **{k: v for k, v in params.items() if v is not None}})


def _iso(value) -> str:
    return pd.Timestamp(value).tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        return sqlfiles.parse_timestamp(value)
    except (ValueError, TypeError):
        return None


# ---- filters ------------------------------------------------------------------------------

def filters(source: data.Source, with_lang: bool = True):
    """Keyword, language and time range, in the sidebar (defaults from the address)."""
    params = st.query_params
    keywords = [ALL] + data.keywords(source)
    langs = [ALL] + data.langs(source)
    keyword = params.get("keyword", ALL)
    lang = params.get("lang", ALL)
    keyword = st.sidebar.selectbox("Keyword", keywords, index=keywords.index(keyword) if keyword in keywords else 0,
                                   format_func=lambda k: "all keywords" if k == ALL else k)
    if with_lang:
        lang = st.sidebar.selectbox("Language", langs, index=langs.index(lang) if lang in langs else 0,
                                    format_func=lambda k: "all languages" if k == ALL else k)
    bounds = data.time_range(source)
    follow = st.sidebar.toggle("Follow new windows", value="start" not in params,
                               help="on: the whole range, growing as the job writes; off: pick a range")
    if follow or bounds is None:
        return keyword, lang, None
    first, last = bounds
    start = _parse_time(params.get("start")) or first
    end = _parse_time(params.get("end")) or last
    start, end = max(min(start, last), first), min(max(end, first), last)
    if first < last:
        start, end = st.sidebar.slider("Time range (UTC)", min_value=first, max_value=last, value=(start, end),
                                       step=dt.timedelta(minutes=1), format="MM-DD HH:mm")
    return keyword, lang, (start, end + dt.timedelta(seconds=1))


def current_span(source: data.Source, fixed):
    """The chosen range, or (following the job) everything written so far."""
    if fixed is not None:
        return fixed
    bounds = data.time_range(source)
    return None if bounds is None else (bounds[0], bounds[1] + dt.timedelta(seconds=1))


# ---- pages --------------------------------------------------------------------------------

def overview(source: data.Source, keyword: str, lang: str, span) -> None:
    st.header("Overview" + ("" if keyword == ALL else f": {md(keyword)}"))
    if span is None:
        st.info("No sentiment windows yet: the job has not written any (or is still in its first window).")
        return
    start, end = span
    frame = data.windows(source, keyword, lang, start, end)
    if frame.empty:
        st.info("No windows in this range.")
        return
    frame["window_start"] = pd.to_datetime(frame["window_start"], utc=True)
    latest = frame.iloc[-1]
    totals = frame[["posts", "negative", "unsupported"]].sum()
    labelled = int(totals["posts"]) - int(totals["unsupported"])
    alerts = data.alerts(source, keyword, start, end)
    beyond = data.beyond_lateness(source, keyword, lang, start, end)
    sliding = source.settings.window_period not in (None, source.settings.window_size)
    cols = st.columns(5)
    cols[0].metric("Posts in windows", f"{int(totals['posts']):,}",
                   help="posts counted in the windows shown, from the latest pane of each window"
                        + ("; with sliding windows a post counts in every window it falls in" if sliding else "")
                        + ". Posts that arrived past the allowed lateness are stored but in no window: Health "
                          "counts them in 'Scored posts stored'.")
    cols[1].metric("Negative share", f"{totals['negative'] / labelled:.1%}" if labelled else "–",
                   help="negative posts / labelled posts in the windows shown: posts in a language no model is "
                        "configured for are left out")
    cols[2].metric("Unsupported language", f"{int(totals['unsupported']):,}",
                   help="posts in the windows shown stored without a label: no model is configured for their "
                        "language")
    cols[3].metric("Alerts", len(alerts),
                   help="alerts of the windows shown, one per window, keyword and kind (the all-keywords '*' "
                        "alerts included); the Alerts page groups them into incidents")
    cols[4].metric(f"Newest window {pd.Timestamp(latest['window_start']):%H:%M}", int(latest["posts"]),
                   help=f"posts in the newest window ({pd.Timestamp(latest['window_start']):%Y-%m-%d %H:%M} UTC), "
                        "from its latest pane")
    if beyond:
        st.caption(f"{int(totals['posts']):,} posts in windows ({beyond:,} more arrived past the allowed "
                   "lateness: stored, in no window; Health counts them)")
    timing = str(latest["pane_timing"])
    if timing == "EARLY":
        st.caption(f"Current window {pd.Timestamp(latest['window_start']):%Y-%m-%d %H:%M} UTC: early pane "
                   f"{int(latest['pane_index'])}, updated {pd.Timestamp(latest['emitted_at']):%H:%M:%S} UTC "
                   "(it keeps updating until the window closes)")
    frame["negative_share"] = frame["negative_share"].astype(float)
    base = alt.Chart(frame).encode(x=time_x())
    colours = alt.Scale(domain=["EARLY", "ON_TIME", "LATE", "UNKNOWN"],
                        range=["#f2a33a", "#4c78a8", "#b279a2", "#999999"])
    posts = base.mark_bar().encode(
        y=alt.Y("posts:Q", title="posts"),
        color=alt.Color("pane_timing:N", scale=colours, title="latest pane"),
        tooltip=[time_tooltip(), "posts:Q", "negative:Q", "unsupported:Q", "pane_timing:N", "pane_index:Q"])
    share = base.mark_line(point=True).encode(
        y=alt.Y("negative_share:Q", title="negative share", axis=alt.Axis(format="%")),
        tooltip=[time_tooltip(), alt.Tooltip("negative_share:Q", format=".1%"), "posts:Q"])
    layers = [share]
    if not alerts.empty:
        marks = alerts.assign(window_start=pd.to_datetime(alerts["window_start"], utc=True))
        layers.append(alt.Chart(marks).mark_rule(color="#d62728", strokeDash=[4, 3]).encode(
            x=time_x(), tooltip=[time_tooltip(), "keyword:N", "kind:N", alt.Tooltip("zscore:Q", format=".1f")]))
    st.subheader("Posts per window")
    st.altair_chart(posts.properties(height=220), use_container_width=True)
    st.subheader("Negative share per window (red: alerts)")
    st.altair_chart(alt.layer(*layers).properties(height=220), use_container_width=True)
    if totals["unsupported"]:
        st.subheader("Unsupported-language posts per window (stored, not labelled)")
        st.altair_chart(base.mark_bar(color="#999999").encode(
            y=alt.Y("unsupported:Q", title="posts without a label"),
            tooltip=[time_tooltip(), "unsupported:Q", "posts:Q"]).properties(height=140),
            use_container_width=True)
    fixes = data.corrections(source, keyword, lang, start, end)
    st.subheader("Late panes (corrections)")
    if fixes.empty:
        st.caption("No window has been corrected by late posts in this range.")
    else:
        st.dataframe(fixes, hide_index=True, use_container_width=True)


def alerts_page(source: data.Source, keyword: str, span) -> None:
    """Incidents first (consecutive alerts of a keyword and their '*' echoes, view incidents),
    each opening onto its alerts, its drivers (what set it apart from the keyword's baseline),
    example posts of the drivers and the alerts' sample posts; then drivers of any window."""
    st.header("Alerts")
    if span is None:
        st.info("No windows yet, so no alerts.")
        return
    incidents = data.incidents(source, keyword, *span)
    if incidents.empty:
        st.info("No alert in this range.")
    else:
        st.subheader(f"Incidents ({len(incidents)}), the latest first")
        st.caption("An incident is a keyword's consecutive alerts (one quiet window apart at most) with the "
                   "all-keywords ('*') alerts that echo them; open: no quiet window after it yet.")
        st.dataframe(incidents.drop(columns=["incident_id"]), hide_index=True, use_container_width=True,
                     column_config=_time_columns(incidents))
        members = data.incident_alerts(source, incidents["incident_id"].tolist())
        for _, incident in incidents.iterrows():
            _incident(source, incident, members[members["incident_id"] == incident["incident_id"]])
    _window_drivers(source, keyword, span)


def _incident(source: data.Source, incident, alerts: pd.DataFrame) -> None:
    started, ended = pd.Timestamp(incident["started_at"]), pd.Timestamp(incident["ended_at"])
    title = (f"{started:%Y-%m-%d %H:%M}–{ended:%H:%M} UTC · {md(incident['keyword'])} · {md(incident['kinds'])} · "
             f"peak z = {incident['peak_zscore']:.1f} at {pd.Timestamp(incident['peak_at']):%H:%M} · "
             f"{int(incident['alerts'])} alerts · {incident['status']}")
    with st.expander(title):
        link = page_link("Posts", keyword=None if incident["keyword"] == ALL else incident["keyword"],
                         start=_iso(started), end=_iso(ended))
        st.markdown(f"[Posts of this incident]({link})")
        st.text("Alerts")
        st.dataframe(alerts.drop(columns=["incident_id", "sample_post_ids"]), hide_index=True,
                     use_container_width=True, column_config=_time_columns(alerts))
        _drivers(source, incident["keyword"], started.to_pydatetime(), ended.to_pydatetime())
        ids = sorted({i for row in alerts["sample_post_ids"] if row is not None for i in list(row)})
        st.text("Sample posts of the alerts")
        st.dataframe(_decoded(data.posts_by_id(source, ids)), hide_index=True, use_container_width=True)


def _drivers(source: data.Source, keyword: str, start: dt.datetime, end: dt.datetime) -> None:
    drivers = data.drivers(source, keyword, start, end)
    baseline = data.BASELINE_WINDOWS * source.settings.window_size // 60
    st.text(f"Drivers: terms that set {start:%H:%M}–{end:%H:%M} UTC apart from the {baseline} minutes before "
            "(posts holding each; log-odds with an informative Dirichlet prior, as a z-score)")
    if drivers.empty:
        st.text("No terms in this window.")
        return
    st.dataframe(drivers, hide_index=True, use_container_width=True,
                 column_config={"log_odds": st.column_config.NumberColumn(format="%.2f"),
                                "zscore": st.column_config.NumberColumn(format="%.2f")})
    examples = data.driver_examples(source, keyword, start, end, drivers["term"].head(5).tolist())
    if not examples.empty:
        st.text("Example posts of the first five drivers")
        st.dataframe(_decoded(examples), hide_index=True, use_container_width=True)


def _window_drivers(source: data.Source, keyword: str, span) -> None:
    """Drivers of any window, on demand: the keyword of the sidebar, a window picked here."""
    st.subheader("Drivers of a window")
    frame = data.windows(source, keyword, ALL, *span)
    if frame.empty:
        st.caption("No windows in this range.")
        return
    starts = [pd.Timestamp(t).to_pydatetime() for t in frame["window_start"]]
    chosen = st.selectbox("Window (UTC)", list(range(len(starts))), index=len(starts) - 1, key="drivers-window",
                          format_func=lambda i: f"{starts[i]:%Y-%m-%d %H:%M} ({int(frame['posts'].iloc[i])} posts)")
    if st.button("Find drivers", key="drivers-go"):
        start = starts[chosen]
        _drivers(source, keyword, start, pd.Timestamp(frame["window_end"].iloc[chosen]).to_pydatetime())


def _decoded(frame: pd.DataFrame) -> pd.DataFrame:
    """Post text as written (HTML entities decoded) for a dataframe, which renders nothing."""
    if "text" in frame:
        frame = frame.assign(text=[decoded(t) for t in frame["text"]])
    return frame


def _time_columns(frame: pd.DataFrame) -> dict:
    """Dates and 24-hour times (UTC) for every timestamp column of a dataframe."""
    return {c: st.column_config.DatetimeColumn(c, format="YYYY-MM-DD HH:mm:ss", timezone="UTC")
            for c in frame.columns if pd.api.types.is_datetime64_any_dtype(frame[c])}


PERIODS = {"15": "the last 15 minutes", "30": "the last 30 minutes", "60": "the last hour",
           "all": "the whole range"}


def compare_page(source: data.Source, span) -> None:
    """Keywords (brands) side by side: share of voice, negative share and net sentiment in a
    period against the period of the same length before it, a ranking now, and each over time."""
    st.header("Compare")
    if span is None:
        st.info("No windows yet.")
        return
    keys = list(PERIODS)
    chosen = st.query_params.get("period", "15")
    period = st.radio("Period", keys, index=keys.index(chosen) if chosen in keys else 0, horizontal=True,
                      format_func=PERIODS.get)
    _remember({"period": None if period == "15" else period}, ("period",))
    end = span[1]
    start = span[0] if period == "all" else max(span[0], end - dt.timedelta(minutes=int(period)))
    table = data.compare(source, start, end)
    if table.empty:
        st.info("No keyword has posts in this period.")
        return
    before = start - (end - start)
    st.subheader(f"Ranking now: {start:%Y-%m-%d %H:%M}–{end:%H:%M} UTC, against {before:%H:%M}–{start:%H:%M}")
    st.caption("net sentiment = (positive - negative) / labelled posts; share of voice = the keyword's posts / all "
               "keywords' posts; negative share = negative / labelled posts; *_before: the period of the same "
               "length before; *_change: now minus before. Ranked by net sentiment, best first.")
    few = table[table["labelled"] < 20]
    if not few.empty:
        st.caption(f"{len(few)} keyword(s) with fewer than 20 labelled posts now: their shares are rough.")
    percent = {c: st.column_config.NumberColumn(c, format="percent") for c in table.columns
               if c.startswith(("share_of_voice", "negative_share"))}
    signed = {c: st.column_config.NumberColumn(c, format="%+.3f") for c in table.columns
              if c.startswith("net_sentiment")}
    st.dataframe(table, hide_index=True, use_container_width=True, column_config={**percent, **signed})
    over_time = data.compare_over_time(source, before if period != "all" else start, end)
    if over_time.empty:
        return
    over_time["window_start"] = pd.to_datetime(over_time["window_start"], utc=True)
    x = time_x()
    for metric, title, fmt in (("net_sentiment", "net sentiment", "+.2f"), ("negative_share", "negative share", "%"),
                               ("share_of_voice", "share of voice", "%")):
        st.subheader(f"{title.capitalize()} per window (the period before: left of the rule)")
        chart = alt.Chart(over_time).mark_line(point=True).encode(
            x=x, y=alt.Y(f"{metric}:Q", title=title, axis=alt.Axis(format=fmt)), color=alt.Color("keyword:N"),
            tooltip=[time_tooltip(), "keyword:N", "posts:Q",
                     alt.Tooltip(f"{metric}:Q", format=".3f")])
        rule = alt.Chart(pd.DataFrame({"t": [pd.Timestamp(start)]})).mark_rule(strokeDash=[4, 3]).encode(
            x=time_x("t"), tooltip=[time_tooltip("t", "period starts")])
        st.altair_chart(alt.layer(chart, rule).properties(height=200), use_container_width=True)


PAGE_SIZE = 100
_LABELS = ["*", "negative", "neutral", "positive", "none"]
_REVIEWED = ["*", "yes", "no"]


def _param_float(name: str, default: float, low: float, high: float) -> float:
    try:
        return min(max(float(st.query_params.get(name, default)), low), high)
    except (TypeError, ValueError):
        return default


def posts_page(source: data.Source, keyword: str, lang: str, span) -> None:
    """Every post of the range, newest first, a page at a time; filters by text, label,
    confidence, score and review; the text as written (entities decoded); the reviewers'
    labels beside the model's. The filters live in the address, so a filtered view has a URL."""
    st.header("Posts")
    if span is None:
        st.info("No posts yet.")
        return
    params = st.query_params
    search = st.text_input("Search the text", value=params.get("search", ""))
    cols = st.columns(4)
    label = cols[0].selectbox("Model label", _LABELS, format_func=lambda v: "any" if v == "*" else v,
                              index=_LABELS.index(params.get("label", "*")) if params.get("label") in _LABELS else 0)
    confidence = cols[1].slider("Confidence", 0.0, 1.0, (_param_float("min_confidence", 0.0, 0.0, 1.0),
                                                         _param_float("max_confidence", 1.0, 0.0, 1.0)), step=0.05)
    score = cols[2].slider("Score", -1.0, 1.0, (_param_float("min_score", -1.0, -1.0, 1.0),
                                                _param_float("max_score", 1.0, -1.0, 1.0)), step=0.05)
    reviewed = cols[3].selectbox("Reviewed", _REVIEWED, format_func=lambda v: "any" if v == "*" else v,
                                 index=_REVIEWED.index(params.get("reviewed", "*"))
                                 if params.get("reviewed") in _REVIEWED else 0)
    filters = {"label": label, "min_confidence": confidence[0], "max_confidence": confidence[1],
               "min_score": score[0], "max_score": score[1], "reviewed": reviewed}
    total = data.posts_count(source, keyword, lang, span[0], span[1], search, **filters)
    pages = max(1, -(-total // PAGE_SIZE))
    try:
        wanted = min(max(int(params.get("p", 1)), 1), pages)
    except ValueError:
        wanted = 1
    page = st.number_input(f"Page (of {pages:,})", min_value=1, max_value=pages, value=wanted, step=1)
    _remember({"search": search or None, **{k: v for k, v in filters.items() if v != data.POST_FILTERS[k]},
               "p": page if page > 1 else None}, ("search", *data.POST_FILTERS, "p"))
    frame = data.posts(source, keyword, lang, span[0], span[1], search, limit=PAGE_SIZE,
                       offset=(page - 1) * PAGE_SIZE, **filters)
    first = (page - 1) * PAGE_SIZE + 1 if total else 0
    unlabelled = (data.posts_count(source, keyword, lang, span[0], span[1], search, **dict(filters, label="none"))
                  if label in ("*", "none") else 0)
    st.caption(f"posts {first:,}–{first + len(frame) - 1 if total else 0:,} of {total:,} (newest first), "
               f"created {span[0]:%Y-%m-%d %H:%M} to {span[1]:%Y-%m-%d %H:%M} UTC; reviewer_labels: the label each "
               "reviewer holds now" + (f"; {unlabelled:,} without a label (skip_reason says why)" if unlabelled else ""))
    st.dataframe(_decoded(frame), hide_index=True, use_container_width=True,
                 column_config={"confidence": st.column_config.ProgressColumn("confidence", min_value=0, max_value=1),
                                "score": st.column_config.NumberColumn("score", format="%.3f"),
                                "text": st.column_config.TextColumn("text", width="large"),
                                **_time_columns(frame)})


def _remember(values: dict, names) -> None:
    """Filters into the address (st.query_params): the filtered view has its own URL."""
    for name in names:
        value = values.get(name)
        if value is None:
            if name in st.query_params:
                del st.query_params[name]
        elif st.query_params.get(name) != str(value):
            st.query_params[name] = str(value)


def health_page(source: data.Source, span) -> None:
    st.header("Health")
    stored = data.stored(source)
    cols = st.columns(5)
    cols[0].metric("Scored posts stored", f"{stored['scored_posts']:,}",
                   help="every post stored in scored_posts (once per post and keyword), the unsupported-language "
                        "ones and those past the allowed lateness included; the Overview's 'Posts in windows' "
                        "leaves out the posts past the allowed lateness")
    cols[1].metric("Dead letters", f"{stored['dead_letters']:,}",
                   help="messages that could not be read or scored, each stored once with its stage and reason")
    cols[2].metric("Posts past the allowed lateness", f"{stored['beyond_lateness']:,}",
                   help="stored in scored_posts but counted in no window: they arrived after their window had "
                        "closed for good")
    cols[3].metric("Windows corrected by late panes", f"{stored['corrected_windows']:,}",
                   help="windows (keyword, language, start) whose latest pane is late: their figures changed after "
                        "the on-time pane; the all-keywords and all-languages roll-ups are not counted again")
    cols[4].metric("Unsupported language", f"{stored['unsupported']:,}",
                   help="posts stored without a label: no model is configured for their language")
    if span is not None:
        st.subheader("Unsupported language: posts without a label, by language")
        unsupported = data.unsupported_by_lang(source, *span)
        if unsupported.empty:
            st.caption("Every post in this range was in a language a configured model takes.")
        else:
            st.caption("Configure a model for a language to label its posts: --model LANG=MODEL.")
            st.dataframe(unsupported, hide_index=True, use_container_width=True)
    st.subheader("Balance: read = scored + duplicates + dead letters")
    balance = data.balance(source)
    if balance is None or balance.empty:
        st.caption("The job's counters are written beside the tables by `pulse run` (local runs with "
                   "Parquet output); none here. Dataflow shows them in its console.")
    else:
        run = balance.iloc[0]
        verdict = ("balanced" if bool(run["balanced"]) else
                   f"{int(run['unaccounted'])} in flight" if run["state"] == "RUNNING" else
                   f"UNBALANCED: {int(run['unaccounted'])} unaccounted")
        st.markdown(f"**Latest run** ({run['state']}, updated {pd.Timestamp(run['updated_at']):%H:%M:%S} UTC): "
                    f"read {int(run['read']):,} = scored {int(run['scored']):,} + duplicates "
                    f"{int(run['duplicates']):,} + dead letters {int(run['dead_letters']):,} ({verdict})")
        st.dataframe(balance, hide_index=True, use_container_width=True)
    st.subheader("Dead letters by stage and reason")
    dead = data.dead_letters(source)
    if dead.empty:
        st.caption("No dead letters.")
    else:
        dead["minute"] = pd.to_datetime(dead["minute"], utc=True)
        st.altair_chart(alt.Chart(dead).mark_bar().encode(
            x=time_x("minute", "received (UTC)"), y=alt.Y("dead_letters:Q", title="dead letters"),
            color="stage:N", tooltip=[time_tooltip("minute"), "stage:N", "reason:N", "dead_letters:Q"]).properties(height=200),
            use_container_width=True)
        st.dataframe(dead.groupby(["stage", "reason"], as_index=False)["dead_letters"].sum()
                     .sort_values("dead_letters", ascending=False), hide_index=True, use_container_width=True)
    st.subheader("Drift signals per window (all keywords)")
    if span is None:
        st.caption("No windows yet.")
        return
    drift = data.drift(source, *span)
    if drift.empty:
        st.caption("No windows in this range.")
        return
    drift["window_start"] = pd.to_datetime(drift["window_start"], utc=True)
    signals = drift.melt(id_vars=["window_start"], value_vars=["oov_rate", "mean_confidence"],
                         var_name="signal", value_name="value")
    st.altair_chart(alt.Chart(signals).mark_line(point=True).encode(
        x=time_x(), y="value:Q", color="signal:N",
        tooltip=[time_tooltip(), "signal:N", alt.Tooltip("value:Q", format=".3f")]).properties(height=200),
        use_container_width=True)
    mix = drift.melt(id_vars=["window_start"], value_vars=["negative_share", "neutral_share", "positive_share"],
                     var_name="class", value_name="share")
    st.altair_chart(alt.Chart(mix).mark_area().encode(
        x=time_x(), y=alt.Y("share:Q", stack="normalize", title="class mix"), tooltip=[time_tooltip(), "class:N",
        alt.Tooltip("share:Q", format=".1%")],
        color=alt.Color("class:N", scale=alt.Scale(domain=["negative_share", "neutral_share", "positive_share"],
                                                   range=["#d62728", "#bbbbbb", "#2ca02c"]))).properties(height=200),
        use_container_width=True)


def review_page(source: data.Source, conf: dict) -> None:
    st.header("Review desk")
    reviewer = st.sidebar.text_input("Reviewer", value=st.session_state.get("reviewer", conf["reviewer"]))
    st.session_state["reviewer"] = reviewer
    if not reviewer.strip():
        st.warning("Enter your name as reviewer (sidebar) to label posts.")
        return
    try:
        reviewer = check_reviewer(reviewer)
    except ValueError as e:
        st.error(md(e))
        return
    store = data.label_store(source, conf["project"])
    notice = st.session_state.pop("label_notice", None)
    if notice:
        (st.success if notice[0] == "ok" else st.info)(md(notice[1]))
    queue = data.review_queue(source, store.labelled(reviewer))
    mode = st.radio("Show", ["one at a time", "as a list"], horizontal=True, label_visibility="collapsed")
    st.caption(f"{len(queue)} low-confidence posts left for {md(reviewer)}, oldest first. "
               "Shortcuts: 1 negative, 2 neutral, 3 positive, S skip.")
    if queue.empty:
        st.success("Nothing left to review.")
    elif mode == "one at a time":
        post = queue.iloc[0].to_dict()
        with st.container(border=True):
            # Everything here came from the post: text elements only (they render no Markdown).
            st.text(f"{post['keyword']} · {post['lang']} · "
                    f"{pd.Timestamp(post['created_at']):%Y-%m-%d %H:%M:%S} UTC · post {post['post_id']}")
            st.text(decoded(post["text"]))
            st.text(f"model: {post['model_label']} (confidence {post['confidence']:.2f}, "
                    f"{post['model_version']})")
        cols = st.columns(4)
        for col, label in zip(cols, data.LABEL_CHOICES):
            # on_click with the post as rendered: the label goes to the post this page showed,
            # even when another tab labelled it meanwhile (the rerun would show the next one).
            col.button(f"{label.capitalize()}", key=f"label-{label}", shortcut=SHORTCUTS[label],
                       use_container_width=True, on_click=_record, args=(store, post, label, reviewer))
    else:
        table = queue.head(50).reset_index(drop=True)
        st.session_state["review-list-rows"] = table.to_dict("records")
        st.data_editor(
            table.assign(label=None)[["label", "created_at", "keyword", "lang", "text", "model_label", "confidence",
                                      "post_id"]],
            hide_index=True, use_container_width=True, disabled=["created_at", "keyword", "lang", "text",
                                                                  "model_label", "confidence", "post_id"],
            column_config={"label": st.column_config.SelectboxColumn("label", options=list(data.LABEL_CHOICES))},
            key="review-list")
        st.button("Save labels", type="primary", on_click=_save_list, args=(store, reviewer))
    agreement = data.agreement(source)
    if not agreement.empty:
        st.subheader("Agreement with the model and between reviewers")
        st.dataframe(agreement, hide_index=True, use_container_width=True)
    recent = store.recent(reviewer, limit=10)
    if recent is not None and not recent.empty:
        st.subheader("Your latest labels (correct one: pick it and the new label)")
        st.dataframe(recent, hide_index=True, use_container_width=True)
        choices = {f"{r['post_id']} ({r['keyword']}): {r['label']}": r for r in recent.to_dict("records")}
        cols = st.columns([3, 1, 1])
        cols[0].selectbox("Label to correct", list(choices), key="correct-which")
        cols[1].selectbox("New label", data.LABEL_CHOICES, key="correct-label")
        cols[2].button("Correct", key="correct", on_click=_correct, args=(store, choices, reviewer))


def _correct(store, choices: dict, reviewer: str) -> None:
    old = choices.get(st.session_state.get("correct-which"))
    if old is None:
        return
    written, message = store.correct(old, st.session_state.get("correct-label"), reviewer)
    st.session_state["label_notice"] = ("ok" if written else "info", message)


def _record(store, post: dict, label: str, reviewer: str) -> None:
    written, message = store.record(post, label, reviewer)
    st.session_state["label_notice"] = ("ok" if written else "info", message)


def _save_list(store, reviewer: str) -> None:
    """The list's chosen labels, matched to the rows as they were shown (not as the queue is now)."""
    rows = st.session_state.get("review-list-rows", [])
    edits = st.session_state.get("review-list", {}).get("edited_rows", {})
    written, already = data.save_list(store, rows, edits, reviewer)
    note = f"saved {written} labels" + (f"; {already} were already labelled (another tab?)" if already else "")
    st.session_state["label_notice"] = ("ok", note)


# ---- accuracy -----------------------------------------------------------------------------

_FIGURES = ["labels", "contested", "accuracy", "macro_f1", "f1_negative", "f1_neutral", "f1_positive"]


def _accuracy_headline(row, where: str) -> tuple[str, str | None, str]:
    """(value, delta, help) of a model version's macro-F1 headline. Under data.MIN_LABELS resolved
    labels (the accuracy watch's minimum) it says so and shows no delta: a figure from 3 labels is
    not news against the evaluation."""
    labels, contested = int(row["labels"]), int(row["contested"])
    f1 = None if pd.isna(row["macro_f1"]) else float(row["macro_f1"])
    counted = (f"macro-F1 of the live model over {labels} resolved labels ({contested} contested posts left "
               f"out); evaluation: {md(where)}")
    if labels < data.MIN_LABELS:
        figure = "none yet" if f1 is None else f"{f1:.3f}"
        return (f"too few labels ({labels} of {data.MIN_LABELS} needed)", None,
                f"{counted}. The figure so far ({figure}) is not compared with the evaluation below "
                f"{data.MIN_LABELS} labels, the accuracy watch's minimum.")
    delta = None if f1 is None or pd.isna(row["evaluation"]) else f"{f1 - row['evaluation']:+.3f} vs evaluation"
    return ("n/a" if f1 is None else f"{f1:.3f}"), delta, counted


def accuracy_page(source: data.Source, keyword: str, conf: dict) -> None:
    """The live model against the review desk's resolved labels (view model_accuracy), beside the
    model's own evaluation, and the model_degraded / drift alerts."""
    st.header("Accuracy" + (f": {md(keyword)}" if keyword != ALL else ""))
    figures = data.accuracy(source)
    expected, where = data.expected_figures(conf["model"])
    if figures.empty:
        st.caption("No resolved labels with a known model label yet: label posts at the review desk "
                   "(a post's label is its reviewers' strict majority; a tie is contested).")
    else:
        if keyword != ALL:
            figures = figures[figures["keyword"] == keyword]
        versions = figures[(figures["model_version"] != ALL) & (figures["keyword"] == (keyword if keyword != ALL
                                                                                       else ALL))
                           & (figures["lang"] == ALL)].copy()
        versions["evaluation"] = [expected(v) for v in versions["model_version"]]
        cols = st.columns(max(len(versions), 1))
        for col, (_, row) in zip(cols, versions.iterrows()):
            value, delta, help_text = _accuracy_headline(row, where)
            col.metric(f"Macro-F1 {md(row['model_version'])}", value, delta, help=help_text)
        st.subheader("Per model version")
        st.caption(f"labels: resolved labels behind each figure. evaluation: the model's own macro-F1 on the "
                   f"reserved tweets ({md(where)}); blank where unknown.")
        st.dataframe(versions[["model_version", *_FIGURES, "evaluation"]], hide_index=True, use_container_width=True)
        st.subheader("Per keyword and language")
        detail = figures[(figures["model_version"] != ALL) & ((figures["keyword"] != ALL) | (figures["lang"] != ALL))]
        st.dataframe(detail[["model_version", "keyword", "lang", *_FIGURES]], hide_index=True,
                     use_container_width=True)
    st.subheader("Model and drift alerts")
    alerts = data.quality_alerts(source)
    if keyword != ALL and not alerts.empty:
        alerts = alerts[alerts["keyword"].isin([keyword, ALL])]
    if alerts.empty:
        st.caption("No model_degraded or drift alerts (pulse accuracy checks the labels; the job judges drift).")
    else:
        st.dataframe(alerts, hide_index=True, use_container_width=True)


# ---- the app ------------------------------------------------------------------------------

def main() -> None:
    st.set_page_config(page_title="sentiment-pulse", layout="wide")
    conf = settings()
    st.sidebar.title("sentiment-pulse")
    st.sidebar.caption(f"output: {md(conf['output'])}")
    wanted = st.query_params.get("page", PAGES[0])
    page = st.sidebar.radio("Page", PAGES, index=PAGES.index(wanted) if wanted in PAGES else 0)
    if page != wanted:
        st.query_params["page"] = page
    if page == "Review":
        source = open_source(conf)
        if source is not None:
            try:
                review_page(source, conf)
            finally:
                source.close()
        return
    probe = open_source(conf)
    if probe is None:
        return
    try:
        keyword, lang, fixed = filters(probe, with_lang=page in ("Overview", "Posts"))
    finally:
        probe.close()

    source = open_source(conf)
    if source is None:
        return
    try:
        span = current_span(source, fixed)
        if page == "Overview":
            overview(source, keyword, lang, span)
        elif page == "Alerts":
            alerts_page(source, keyword, span)
        elif page == "Compare":
            compare_page(source, span)
        elif page == "Posts":
            posts_page(source, keyword, lang, span)
        elif page == "Accuracy":
            accuracy_page(source, keyword, conf)
        else:
            health_page(source, span)
    finally:
        source.close()
    every = (f"re-read when the job writes (looked every {conf['refresh']:g} s)" if conf["refresh"]
             else "no automatic refresh")
    st.caption(f"read at {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC; {every}")
    if conf["refresh"]:
        watch(conf)


def watch(conf: dict) -> None:
    """Re-run the page only when the output changed (data.fingerprint), checked every
    --refresh seconds by a fragment that draws nothing: a finished run is never re-read, so
    the page is never greyed out while nothing is new."""
    st.session_state.setdefault("fingerprint", data.fingerprint(conf["output"], conf["project"]))

    @st.fragment(run_every=conf["refresh"])
    def look():
        now = data.fingerprint(conf["output"], conf["project"])
        if now != st.session_state.get("fingerprint"):
            st.session_state["fingerprint"] = now
            st.rerun()

    look()

main()
