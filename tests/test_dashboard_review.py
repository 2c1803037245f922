"""The review desk through Streamlit's AppTest: labels land in the `labels` table, two tabs never
write a post twice, a correction wins in the views, agreement is shown.

    .venv/bin/pytest tests/test_dashboard_review.py -q
"""
import pytest

from connectors.query import duckdb_sql
from tests.test_dashboard_app import app, no_traceback

pytestmark = pytest.mark.integration


def sql(out, text):
    return duckdb_sql.query(out, text)[1]


def shown_post(at) -> str:
    """The post id on the one-at-a-time card."""
    for text in at.text:  # the card is text elements (a post can hold Markdown)
        if " · post " in text.value:
            return text.value.rsplit(" · post ", 1)[1]
    raise AssertionError("no post on the page")


def oldest(out, n=3):
    return [p for (p,) in sql(out, f"SELECT post_id FROM review_queue_unique ORDER BY created_at, post_id, keyword "
                                   f"LIMIT {n}")]


def test_labels_go_to_the_labels_table_oldest_first(monkeypatch, fresh_dashboard_output):
    out = fresh_dashboard_output
    queue = oldest(out)
    at = app(monkeypatch, out, page="Review", reviewer="ana")
    no_traceback(at)
    assert shown_post(at) == queue[0]
    at.button(key="label-negative").click().run()
    no_traceback(at)
    assert shown_post(at) == queue[1]
    at.button(key="label-skip").click().run()
    assert shown_post(at) == queue[2]
    rows = sql(out, "SELECT post_id, label, reviewer, model_label IS NOT NULL, text IS NOT NULL FROM labels "
                    "ORDER BY labelled_at")
    assert rows == [(queue[0], "negative", "ana", True, True), (queue[1], "skip", "ana", True, True)]
    [(model_label,)] = sql(out, f"SELECT label FROM review_queue_unique WHERE post_id = '{queue[0]}'")
    assert sql(out, f"SELECT model_label FROM labels WHERE post_id = '{queue[0]}'") == [(model_label,)]


def test_two_tabs_labelling_the_same_post_write_it_once(monkeypatch, fresh_dashboard_output):
    out = fresh_dashboard_output
    first = oldest(out, 1)[0]
    tab_a = app(monkeypatch, out, page="Review", reviewer="ana")
    tab_b = app(monkeypatch, out, page="Review", reviewer="ana")
    assert shown_post(tab_a) == shown_post(tab_b) == first
    tab_a.button(key="label-negative").click().run()
    tab_b.button(key="label-positive").click().run()
    no_traceback(tab_b)
    assert any("already labelled negative" in i.value for i in tab_b.info), ([i.value for i in tab_b.info], [s.value for s in tab_b.success])
    assert sql(out, f"SELECT label FROM labels WHERE post_id = '{first}' AND reviewer = 'ana'") == [("negative",)]
    # Both tabs move on; another reviewer still gets the post (their own label).
    assert shown_post(tab_b) != first
    tab_c = app(monkeypatch, out, page="Review", reviewer="ben")
    assert shown_post(tab_c) == first
    tab_c.button(key="label-negative").click().run()
    assert sql(out, f"SELECT reviewer, label FROM labels_latest WHERE post_id = '{first}' ORDER BY 1") == [
        ("ana", "negative"), ("ben", "negative")]
    agreement = tab_c.dataframe[0].value
    everyone = agreement[agreement["reviewer"] == "*"].iloc[0]
    assert (everyone["shared_posts"], everyone["shared_posts_agreeing"]) == (1, 1)


def test_a_label_can_be_corrected_and_the_latest_wins(monkeypatch, fresh_dashboard_output):
    out = fresh_dashboard_output
    first = oldest(out, 1)[0]
    at = app(monkeypatch, out, page="Review", reviewer="ana")
    at.button(key="label-neutral").click().run()
    which = next(o for o in at.selectbox(key="correct-which").options if o.startswith(first))
    at.selectbox(key="correct-which").set_value(which)
    at.selectbox(key="correct-label").set_value("positive")
    at.button(key="correct").click().run()
    no_traceback(at)
    assert sql(out, f"SELECT label FROM labels WHERE post_id = '{first}' ORDER BY labelled_at") == [
        ("neutral",), ("positive",)]
    assert sql(out, f"SELECT label FROM labels_latest WHERE post_id = '{first}'") == [("positive",)]
    assert any(f"{first}" in s.value and "positive" in s.value for s in at.success)


def test_no_reviewer_no_labelling(monkeypatch, fresh_dashboard_output):
    at = app(monkeypatch, fresh_dashboard_output, page="Review", reviewer=" ")
    no_traceback(at)
    at.sidebar.text_input[0].input("").run()
    assert any("Enter your name" in w.value for w in at.warning)
    assert sql(fresh_dashboard_output, "SELECT count(*) FROM labels") == [(0,)]


def test_the_list_view_saves_the_labels_chosen_for_the_rows_it_showed(fresh_dashboard_output):
    from dashboard import data

    out = fresh_dashboard_output
    source = data.open_source(out)
    desk = data.label_store(source)
    shown = data.review_queue(source).head(5).to_dict("records")
    # Another tab labels row 1 meanwhile; the list still labels the rows it showed.
    assert desk.record(shown[1], "neutral", "ana")[0]
    edits = {"0": {"label": "negative"}, "1": {"label": "positive"}, 3: {"label": "skip"}, "4": {"label": None}}
    assert data.save_list(desk, shown, edits, "ana") == (2, 1)
    got = sql(out, "SELECT post_id, label FROM labels_latest WHERE reviewer = 'ana' ORDER BY post_id")
    assert got == sorted([(shown[0]["post_id"], "negative"), (shown[1]["post_id"], "neutral"),
                          (shown[3]["post_id"], "skip")])
    assert not ({(r["post_id"], r["keyword"]) for r in shown[:2]} & set(
        zip(*[data.review_queue(data.open_source(out), desk.labelled("ana"))[c] for c in ("post_id", "keyword")])))
    source.close()
