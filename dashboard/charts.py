"""Time on the dashboard's charts: every time axis and tooltip in UTC, with the date and 24-hour time.

`time_x(field, title)` is the x encoding of every chart over time (a UTC scale, ticks "Nov 24 14:40");
`time_tooltip(field)` its tooltip ("2026-11-24 14:40"). `time_problems(spec)` lists, for a chart's
Vega-Lite spec (`chart.to_dict()`, or the spec a page sent, as the tests read it), every temporal
encoding that lacks them, so a test can check every chart of every page:

    problems = time_problems(alt.Chart(frame).mark_line().encode(x="window_start:T").to_dict())
    # ['layer/encoding/x window_start: no axis format with a date and 24-hour time', ...]

Pure functions of Altair objects and dicts; no Streamlit here (dashboard/app.py draws).
"""
from __future__ import annotations

import re
from typing import Any, Iterator

import altair as alt

# Ticks: month, day and 24-hour time. A date beside the time on every tick because a chart's
# range can cross midnight, and the sample itself is days old.
AXIS_FORMAT = "%b %d %H:%M"
TOOLTIP_FORMAT = "%Y-%m-%d %H:%M"
# A UTC time unit makes Vega-Lite format the tooltip in UTC (utcFormat), like the UTC scale does the axis.
TOOLTIP_TIME_UNIT = "utcyearmonthdatehoursminutes"

_DATE = re.compile(r"%[bBdemjxcF]")
_HOUR24 = re.compile(r"%H")
_HOUR12 = re.compile(r"%[Il]")


def time_x(field: str = "window_start", title: str = "window (UTC)") -> alt.X:
    """The x encoding of a chart over time: a UTC scale, ticks with the date and 24-hour time."""
    return alt.X(f"{field}:T", title=title, scale=alt.Scale(type="utc"),
                 axis=alt.Axis(format=AXIS_FORMAT, labelOverlap=True))


def time_tooltip(field: str = "window_start", title: str | None = None) -> alt.Tooltip:
    """A tooltip of a time: date and 24-hour time, in UTC."""
    return alt.Tooltip(f"{field}:T", title=title or field, timeUnit=TOOLTIP_TIME_UNIT, format=TOOLTIP_FORMAT)


def _dated_24h(fmt: Any) -> bool:
    return isinstance(fmt, str) and bool(_DATE.search(fmt)) and bool(_HOUR24.search(fmt)) \
        and not _HOUR12.search(fmt)


def _encodings(spec: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, channel, definition) of every encoding channel anywhere in a spec (layers, concats)."""
    if isinstance(spec, dict):
        encoding = spec.get("encoding")
        if isinstance(encoding, dict):
            for channel, definition in encoding.items():
                yield f"{path}encoding/{channel}", channel, definition
        for key in ("layer", "hconcat", "vconcat", "concat"):
            for part in spec.get(key) or []:
                yield from _encodings(part, f"{path}{key}/")
        if isinstance(spec.get("spec"), dict):
            yield from _encodings(spec["spec"], f"{path}spec/")


def _temporal(definition: Any) -> bool:
    return isinstance(definition, dict) and definition.get("type") == "temporal"


def time_problems(spec: dict) -> list[str]:
    """Every temporal axis of the spec without a UTC scale and a date-and-24-hour tick format, and
    every temporal tooltip without a UTC time unit and such a format; [] when there is none."""
    problems = []
    for path, channel, definition in _encodings(spec):
        if channel in ("x", "y", "x2", "y2") and _temporal(definition):
            name = definition.get("field", "?")
            axis = definition.get("axis") or {}
            if not _dated_24h(axis.get("format")):
                problems.append(f"{path} {name}: no axis format with a date and 24-hour time")
            if (definition.get("scale") or {}).get("type") != "utc":
                problems.append(f"{path} {name}: not a UTC scale")
        elif channel == "tooltip":
            for item in definition if isinstance(definition, list) else [definition]:
                if _temporal(item):
                    name = item.get("field", "?")
                    if not _dated_24h(item.get("format")):
                        problems.append(f"{path} {name}: tooltip without a date and 24-hour time")
                    if not str(item.get("timeUnit", "")).startswith("utc"):
                        problems.append(f"{path} {name}: tooltip not in UTC")
    return problems
