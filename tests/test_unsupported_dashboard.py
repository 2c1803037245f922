"""The dashboard with unsupported_language posts (AppTest): Overview counts them and leaves them out
of the negative share, Health lists them by language, Posts shows them with an empty label and
the reason. The output is written by the real aggregate and Parquet writer (tests/test_unsupported)."""
import pytest

from tests.test_dashboard_app import app, metric_values, no_traceback, sql
from tests.test_unsupported import output  # noqa: F401  (the module-scoped output fixture)
from transforms.language import UNSUPPORTED_LANGUAGE

pytestmark = pytest.mark.integration


def test_overview_counts_unsupported_posts_and_shares_exclude_them(monkeypatch, output):  # noqa: F811
    at = app(monkeypatch, output)
    no_traceback(at)
    [(posts, negative, unsupported)] = sql(output, "SELECT sum(posts), sum(negative), sum(unsupported) FROM "
                                                   "sentiment_windows_latest WHERE keyword = '*' AND lang = '*'")
    assert (posts, unsupported) == (7, 4)
    shown = metric_values(at)
    assert shown["Posts in windows"] == "7" and shown["Unsupported language"] == "4"
    assert shown["Negative share"] == f"{negative / (posts - unsupported):.1%}" == "33.3%"  # 1 of 3 labelled
    assert any("Unsupported-language posts per window" in h.value for h in at.subheader)


def test_health_lists_unsupported_posts_by_language(monkeypatch, output):  # noqa: F811
    at = app(monkeypatch, output, page="Health")
    no_traceback(at)
    assert metric_values(at)["Unsupported language"] == "4"
    assert metric_values(at)["Scored posts stored"] == "7"  # stored rows, labelled or not
    [table] = [d.value for d in at.dataframe if "skip_reason" in d.value.columns]
    assert dict(zip(table["lang"], table["posts"])) == {"hi": 3, "ja": 1}
    assert set(table["skip_reason"]) == {UNSUPPORTED_LANGUAGE}


def test_posts_page_shows_the_reason_and_no_label(monkeypatch, output):  # noqa: F811
    at = app(monkeypatch, output, page="Posts")
    no_traceback(at)
    frame = at.dataframe[0].value
    skipped = frame[frame["skip_reason"].notna()]
    assert sorted(skipped["post_id"]) == ["3", "4", "6", "7"]
    assert skipped["label"].isna().all() and skipped["confidence"].isna().all()
    assert frame[frame["skip_reason"].isna()]["label"].notna().all()
    assert any("4 without a label" in c.value for c in at.caption)
