"""The review desk's labels: a person's label of a low-confidence post, stored like the job's tables.

    store = ParquetLabelStore("out")              # or BigQueryLabelStore("my-proj:pulse")
    result = store.record(post, "negative", "ana")  # post: a review_queue row
    result.written                                 # False: ana had labelled it already
    store.record(post, "neutral", "ana", correcting=result.label_id)   # a correction
    store.labelled("ana")                          # {(post_id, keyword), ...}, skips included

The table `labels` (models/contracts.LABELS_TABLE) is append-only: one row per label, a
correction is a new row whose `corrects` names the label it replaces, and the views
(connectors/query/views.sql) read it through `labels_latest` (per post, keyword and reviewer, the latest
`labelled_at`) and `label_agreement`.

Ids decide what can be written twice. A first label's `label_id` is a digest of (post_id,
keyword, reviewer) (`first_label_id`); a correction's is a digest of the label it corrects
(`correction_id`). So each (post, keyword, reviewer) has one first label, and each label can
be corrected once: corrections form one chain per reviewer and post, and a second browser tab
that labels or corrects what the first already did is told so (`LabelResult.written` False,
with the label the reviewer holds now) instead of writing a second row.

Parquet (`ParquetLabelStore`): `<output>/labels/<label_id>.parquet`, one row per file, written
to a hidden temporary name (`.tmp-*`, which readers skip) and put in place with `os.link`, which
fails when the name exists: of two processes writing the same label_id at the same moment
exactly one succeeds, and no reader ever sees a half-written file. The name holds no date, so
the same label cannot get two names. Needs a local file system with hard links (every usual
one: ext4, xfs, btrfs, tmpfs, APFS, NTFS); object stores (gs://) are not supported here.

BigQuery (`BigQueryLabelStore`): a streaming insert (`insert_rows_json`) per label with the
label_id as its insertId, after one query for the labels the reviewer holds for that post.
Streaming inserts cannot create a row only if absent: two tabs that pass the query at the same
moment both insert; BigQuery drops the second by its insertId (best effort, within about a
minute) and `labels_latest` keeps one row per post and reviewer anyway, so a figure never
counts a label twice, but both tabs are told "written". A MERGE would not do better: BigQuery
treats a MERGE with only an INSERT clause as an INSERT, and concurrent INSERTs do not conflict,
so two MERGEs could still both insert, at the cost of a DML job per label (seconds, and a
quota of DML statements per table). The query-then-insert costs one small query per label.
"""
from __future__ import annotations

import abc
import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import threading
import unicodedata
import uuid
from typing import Any, Mapping

from models.contracts import LABELS, LABELS_TABLE, REVIEW_LABELS, UTC
from models.locations import fsync_directory

TABLE = "labels"
ROLL_UP = "*"


class LabelStoreError(RuntimeError):
    """The label store cannot be read or written (missing output, dataset or table), in one sentence."""


@dataclasses.dataclass(frozen=True)
class LabelResult:
    """What `record` did: `written` True with the row it wrote, or False with the label the
    reviewer holds now for that post (the latest of its chain): someone (another tab) was first."""

    written: bool
    row: dict

    @property
    def label_id(self) -> str:
        return self.row["label_id"]

    @property
    def label(self) -> str:
        return self.row["label"]


def _digest(*parts: str) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8")).hexdigest()[:32]


def first_label_id(post_id: str, keyword: str, reviewer: str) -> str:
    """The label_id of a reviewer's first label of a post: the same for every tab and process."""
    return _digest("first", post_id, keyword, reviewer)


def correction_id(corrected_label_id: str) -> str:
    """The label_id of the correction of `corrected_label_id`: a label is corrected at most once."""
    return _digest("corrects", corrected_label_id)


def check_label_id(label_id: Any) -> str:
    """A label_id as this module makes them (32 hex digits); ValueError otherwise."""
    if not isinstance(label_id, str) or len(label_id) != 32 or any(c not in "0123456789abcdef" for c in label_id):
        raise ValueError(f"{label_id!r} is not a label_id (32 hex digits, as labels_latest shows them)")
    return label_id


# Characters that change how the text around them is shown: bidirectional embeddings,
# overrides and isolates (a name that reads backwards in a table or a terminal).
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def unprintable(value: str) -> str | None:
    """Why `value` cannot be shown as it is (a control character such as NUL, a newline or ESC,
    a bidirectional override, a lone UTF-16 surrogate), or None: the rule post fields follow
    (transforms/parse), plus the bidi controls."""
    for ch in value:
        category = unicodedata.category(ch)
        if category == "Cs":
            return "an unpaired UTF-16 surrogate (not Unicode text)"
        if category == "Cc":
            return f"a control character (U+{ord(ch):04X})"
        if ch in BIDI_CONTROLS:
            return f"a bidirectional override (U+{ord(ch):04X})"
    return None


def check_reviewer(reviewer: Any) -> str:
    """A reviewer's name, stripped; ValueError (one sentence) when empty, the roll-up '*', too
    long, or holding a character that cannot be shown as text (`unprintable`)."""
    if not isinstance(reviewer, str) or not reviewer.strip():
        raise ValueError("a label needs a reviewer: give a non-empty name")
    reviewer = reviewer.strip()
    if reviewer == ROLL_UP:
        raise ValueError("'*' is reserved for the all-reviewers rows of label_agreement: choose another name")
    if len(reviewer) > 200:
        raise ValueError("a reviewer's name may hold at most 200 characters")
    problem = unprintable(reviewer)
    if problem:
        raise ValueError(f"a reviewer's name cannot hold {problem}")
    return reviewer


def label_row(post: Mapping[str, Any], label: str, reviewer: str, *, corrected: Mapping[str, Any] | None = None,
              now: dt.datetime | None = None) -> dict:
    """The labels row for `post` (a review_queue / scored_posts row: post_id, keyword, lang,
    text, model_version and the model's `label`) labelled `label` by `reviewer`, first or as
    the correction of the row `corrected`. ValueError, one sentence, for a bad label, reviewer
    or post."""
    if label not in REVIEW_LABELS:
        raise ValueError(f"label must be one of {', '.join(REVIEW_LABELS)}, not {label!r}")
    reviewer = check_reviewer(reviewer)
    if not isinstance(post, Mapping) and callable(getattr(post, "to_dict", None)):
        post = post.to_dict()  # a pandas row
    if not isinstance(post, Mapping):
        raise ValueError(f"post must be a mapping of the post's columns, not {type(post).__name__}")
    post_id, keyword, lang = (_required_text(post, name) for name in ("post_id", "keyword", "lang"))
    model_label = _optional_text(post, "label")
    if model_label is None:
        model_label = _optional_text(post, "model_label")
    if model_label is not None and model_label not in LABELS:
        raise ValueError(f"the model's label must be one of {', '.join(LABELS)}, not {model_label!r}")
    labelled_at = (now or dt.datetime.now(UTC)).astimezone(UTC)
    if corrected is None:
        label_id, corrects = first_label_id(post_id, keyword, reviewer), None
    else:
        if (corrected["post_id"], corrected["keyword"], corrected["reviewer"]) != (post_id, keyword, reviewer):
            raise ValueError(f"label {corrected['label_id']} is {corrected['reviewer']}'s label of post "
                             f"{corrected['post_id']} ({corrected['keyword']}), not {reviewer}'s of {post_id} "
                             f"({keyword}): a reviewer corrects only their own label of the same post")
        label_id, corrects = correction_id(corrected["label_id"]), corrected["label_id"]
        # The correction must be the latest even if this clock is behind the one that wrote it.
        labelled_at = max(labelled_at, corrected["labelled_at"] + dt.timedelta(microseconds=1))
    return {
        "label_id": label_id, "post_id": post_id, "keyword": keyword, "lang": lang,
        "text": _optional_text(post, "text"), "label": label, "reviewer": reviewer,
        "labelled_at": labelled_at, "model_version": _optional_text(post, "model_version"),
        "model_label": model_label, "corrects": corrects,
    }


def latest_of(rows: list[Mapping[str, Any]]) -> dict | None:
    """The row labels_latest keeps: the latest labelled_at, ties broken by the greater label_id."""
    return dict(max(rows, key=lambda r: (r["labelled_at"], r["label_id"]))) if rows else None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or \
        type(value).__name__ in ("NAType", "NaTType")


def _optional_text(post: Mapping[str, Any], name: str) -> str | None:
    value = post.get(name)
    if _missing(value):
        return None
    if not isinstance(value, str):
        raise ValueError(f"the post's {name} must be text, not {type(value).__name__}")
    return value


def _required_text(post: Mapping[str, Any], name: str) -> str:
    value = _optional_text(post, name)
    if not value:
        raise ValueError(f"the post has no {name}: a label needs the post's post_id, keyword and lang")
    return value


class LabelStore(abc.ABC):
    """Where an output's labels live (Parquet files or a BigQuery table)."""

    @abc.abstractmethod
    def record(self, post: Mapping[str, Any], label: str, reviewer: str, *,
               correcting: str | None = None) -> LabelResult:
        """Write `reviewer`'s `label` of `post`, or with `correcting` (a label_id of the
        reviewer's label of this post, normally the one labels_latest holds) its correction.

        A first label of (post_id, keyword, reviewer) is written at most once, and a label is
        corrected at most once: when that is already done (another tab), nothing is written
        and the result holds the reviewer's current label. ValueError (one sentence) for a
        label outside negative/neutral/positive/skip, an empty reviewer, a post without
        post_id/keyword/lang, or a `correcting` that is not the reviewer's label of this post.
        """

    @abc.abstractmethod
    def labelled(self, reviewer: str) -> set[tuple[str, str]]:
        """The (post_id, keyword) pairs `reviewer` has labelled, skips included."""

    @abc.abstractmethod
    def latest(self, post_id: str, keyword: str, reviewer: str) -> dict | None:
        """The reviewer's current label of the post (labels_latest's row), or None."""


# ---- Parquet ----------------------------------------------------------------------------------


# path -> (size, mtime_ns, rows): label files are never rewritten, so each is read once per process.
_ROWS: dict[str, tuple[int, int, list[dict]]] = {}
_ROWS_LOCK = threading.Lock()


def _cached_rows(path: str, st: os.stat_result) -> list[dict] | None:
    with _ROWS_LOCK:
        cached = _ROWS.get(path)
    if cached is not None and cached[:2] == (st.st_size, st.st_mtime_ns):
        return [dict(r) for r in cached[2]]
    return None


def _cache_rows(path: str, st: os.stat_result, rows: list[dict]) -> None:
    with _ROWS_LOCK:
        _ROWS[path] = (st.st_size, st.st_mtime_ns, [dict(r) for r in rows])


class ParquetLabelStore(LabelStore):
    """Labels as `<output_dir>/labels/<label_id>.parquet`, one row per file (module docstring).

    `skipped` lists the label files the last `labelled` / `rows` call could not read
    (duckdb_sql.SkippedFile), as the views leave them out.
    """

    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        self.root = os.path.join(output_dir, TABLE)
        self.skipped: list = []

    def path(self, label_id: str) -> str:
        return os.path.join(self.root, f"{label_id}.parquet")

    def record(self, post, label, reviewer, *, correcting=None) -> LabelResult:
        if not os.path.isdir(self.output_dir):
            raise LabelStoreError(f"no output directory {self.output_dir!r}: run the job first")
        corrected = None
        if correcting is not None:
            corrected = self._read(check_label_id(correcting))
            if corrected is None:
                raise ValueError(f"there is no label {correcting!r} to correct in {self.root}")
        row = label_row(post, label, reviewer, corrected=corrected)
        if self._create(row):
            return LabelResult(True, row)
        return LabelResult(False, self._chain_end(row["label_id"]))

    def latest(self, post_id: str, keyword: str, reviewer: str) -> dict | None:
        first = first_label_id(post_id, keyword, check_reviewer(reviewer))
        return self._chain_end(first) if os.path.exists(self.path(first)) else None

    def labelled(self, reviewer: str) -> set[tuple[str, str]]:
        reviewer = check_reviewer(reviewer)
        return {(r["post_id"], r["keyword"]) for r in self.rows() if r["reviewer"] == reviewer}

    def rows(self) -> list[dict]:
        """Every label row, each file read once per process (the new ones together, in one
        pyarrow dataset scan); unreadable files are left out and listed in `skipped`."""
        from connectors.query import duckdb_sql

        if not os.path.isdir(self.output_dir):
            raise LabelStoreError(f"no output directory {self.output_dir!r}: run the job first")
        files, skipped = duckdb_sql.readable_files(self.output_dir, TABLE)
        rows, new = [], []
        for path in files:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            cached = _cached_rows(path, st)
            if cached is None:
                new.append((path, st))
            else:
                rows += cached
        if new:
            rows += self._read_new(new, skipped)
        self.skipped = skipped
        return rows

    def _read_new(self, new: list[tuple[str, os.stat_result]], skipped: list) -> list[dict]:
        import pyarrow.dataset as ds

        from connectors.query import duckdb_sql
        from connectors.sinks.parquet import arrow_schema

        schema = arrow_schema(LABELS_TABLE)
        try:
            table = ds.dataset([p for p, _ in new], format="parquet", schema=schema).to_table(
                columns=[*schema.names, "__filename"])
        except Exception:  # noqa: BLE001  (one file fails past its footer: read them one by one)
            table = None
        if table is not None:
            by_file: dict[str, list[dict]] = {}
            for r in table.to_pylist():
                by_file.setdefault(os.path.normpath(r.pop("__filename")), []).append(r)
            if set(by_file) <= {os.path.normpath(p) for p, _ in new}:
                out = []
                for path, st in new:
                    found = by_file.get(os.path.normpath(path), [])
                    _cache_rows(path, st, found)
                    out += found
                return out
        out = []
        for path, st in new:
            try:
                found = self._read_file(path)
            except Exception as e:  # noqa: BLE001  (garbage pages: left out, as the views do)
                skipped.append(duckdb_sql.mark_unreadable(path, str(e)) or duckdb_sql.SkippedFile(path, str(e)))
                continue
            _cache_rows(path, st, found)
            out += found
        return out

    def _chain_end(self, label_id: str) -> dict:
        row = self._read(label_id)
        if row is None:
            raise LabelStoreError(f"label file {self.path(label_id)} exists but cannot be read")
        while True:
            following = self._read(correction_id(row["label_id"]))
            if following is None:
                return row
            row = following

    def _read(self, label_id: str) -> dict | None:
        """The row of the store's file for `label_id`; None when there is none or it cannot be read."""
        path = self.path(label_id)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        rows = _cached_rows(path, st)
        if rows is None:
            try:
                rows = self._read_file(path)
            except Exception:  # noqa: BLE001  (a corrupt file: duckdb_sql reports it as skipped)
                return None
            _cache_rows(path, st, rows)
        return rows[0] if rows else None

    @staticmethod
    def _read_file(path: str) -> list[dict]:
        import pyarrow.parquet as pq

        return [{f.name: r.get(f.name) for f in LABELS_TABLE} for r in pq.ParquetFile(path).read().to_pylist()]

    def _create(self, row: dict) -> bool:
        """Put `row` in its file if no file of that name exists -> True, else False (atomic)."""
        import pyarrow.parquet as pq

        from connectors.sinks.parquet import to_table

        os.makedirs(self.root, exist_ok=True)
        target = self.path(row["label_id"])
        if os.path.exists(target):
            return False
        temp = os.path.join(self.root, f".tmp-{uuid.uuid4().hex}.parquet")
        try:
            pq.write_table(to_table([row], LABELS_TABLE), temp, compression="zstd")
            _fsync(temp)
            try:
                os.link(temp, target)  # fails if the name exists: one writer wins
            except FileExistsError:
                return False
            fsync_directory(self.root)
            _cache_rows(target, os.stat(target), [row])
            return True
        finally:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- BigQuery ---------------------------------------------------------------------------------


class BigQueryLabelStore(LabelStore):
    """Labels in the `labels` table of a BigQuery dataset ("PROJECT:DATASET"), created with the
    other tables by `python -m connectors.sinks.bigquery create --dataset PROJECT:DATASET`.

    `client`: a google-cloud-bigquery Client (default: connectors.sinks.bigquery.bigquery_client for
    the dataset's project, an emulator where `endpoint` or BIGQUERY_EMULATOR_HOST says so).
    Errors from BigQuery (no such dataset or table, no permission) are LabelStoreError, one line.
    """

    def __init__(self, dataset: str, client=None, *, project: str | None = None, endpoint: str | None = None):
        from connectors.sinks.bigquery import bigquery_client, split_dataset

        ds_project, ds_name = split_dataset(dataset, project)
        self.dataset = dataset
        self.client = client if client is not None else bigquery_client(ds_project, endpoint)
        self.project = ds_project or self.client.project
        self.dataset_id = f"{self.project}.{ds_name}"
        self.table_id = f"{self.dataset_id}.{TABLE}"

    def record(self, post, label, reviewer, *, correcting=None) -> LabelResult:
        from connectors.sinks.bigquery import to_bq_row

        row = label_row(post, label, reviewer)  # validates before any request
        held = self._rows_of(row["post_id"], row["keyword"], row["reviewer"])
        if correcting is not None:
            check_label_id(correcting)
            corrected = next((r for r in held if r["label_id"] == correcting), None)
            if corrected is None:
                raise ValueError(f"there is no label {correcting!r} of post {row['post_id']} ({row['keyword']}) "
                                 f"by {row['reviewer']} to correct")
            if any(r["corrects"] == correcting for r in held):
                return LabelResult(False, latest_of(held))
            row = label_row(post, label, reviewer, corrected=corrected)
        elif held:
            return LabelResult(False, latest_of(held))
        try:
            errors = self.client.insert_rows_json(self.table_id, [to_bq_row(TABLE, row, "STREAMING_INSERTS")],
                                                  row_ids=[row["label_id"]])
        except Exception as e:  # noqa: BLE001  (the client's errors, in one line)
            raise self._error(e) from None
        if errors:
            raise LabelStoreError(f"BigQuery refused the label: {json.dumps(errors, default=str)[:300]}")
        return LabelResult(True, row)

    def latest(self, post_id: str, keyword: str, reviewer: str) -> dict | None:
        return latest_of(self._rows_of(post_id, keyword, check_reviewer(reviewer)))

    def labelled(self, reviewer: str) -> set[tuple[str, str]]:
        rows = self._query(f"SELECT DISTINCT post_id, keyword FROM `{self.table_id}` WHERE reviewer = @reviewer",
                           reviewer=check_reviewer(reviewer))
        return {(r["post_id"], r["keyword"]) for r in rows}

    def _rows_of(self, post_id: str, keyword: str, reviewer: str) -> list[dict]:
        return self._query(f"SELECT * FROM `{self.table_id}` WHERE post_id = @post_id AND keyword = @keyword "
                           "AND reviewer = @reviewer", post_id=post_id, keyword=keyword, reviewer=reviewer)

    def _query(self, sql: str, **params: str) -> list[dict]:
        from google.cloud import bigquery

        config = bigquery.QueryJobConfig(query_parameters=[
            bigquery.ScalarQueryParameter(name, "STRING", value) for name, value in params.items()])
        try:
            return [dict(r.items()) for r in self.client.query(sql, job_config=config).result()]
        except Exception as e:  # noqa: BLE001
            raise self._error(e) from None

    def _error(self, error: Exception) -> LabelStoreError:
        from google.api_core import exceptions as gexc

        if isinstance(error, gexc.NotFound):
            try:
                self.client.get_dataset(self.dataset_id)
            except gexc.NotFound:
                return LabelStoreError(f"BigQuery dataset {self.dataset} does not exist: create it with "
                                       f"python -m connectors.sinks.bigquery create --dataset {self.dataset}")
            except Exception:  # noqa: BLE001  (the first error is the one to report)
                pass
            return LabelStoreError(f"BigQuery dataset {self.dataset} has no labels table: create it with "
                                   f"python -m connectors.sinks.bigquery create --dataset {self.dataset}")
        message = getattr(error, "message", None) or str(error)
        lines = [line.strip() for line in str(message).splitlines() if line.strip()]
        return LabelStoreError(f"BigQuery {self.dataset}: {lines[0] if lines else type(error).__name__}")


# ---- reading every label (retraining) ----------------------------------------------------------


def read_latest(output: str, project: str | None = None, endpoint: str | None = None) -> list[dict]:
    """Every row of `labels_latest` (each reviewer's latest label per post, skips included) of a
    Parquet output directory (DuckDB, unreadable files left out with a warning) or a BigQuery
    PROJECT:DATASET. LabelStoreError (one sentence) when the output cannot be read."""
    import re

    if "/" not in output and not os.path.isdir(output) and re.match(r"^[\w-]+[:.][\w]+$", output):
        from connectors.query import sqlfiles

        store = BigQueryLabelStore(output, project=project, endpoint=endpoint)
        sql = sqlfiles.render("SELECT * FROM ${dataset}.labels_latest", "bigquery", store.dataset_id)
        return store._query(sql)
    from connectors.query import duckdb_sql

    if not os.path.isdir(output):
        raise LabelStoreError(f"no output directory {output!r}: run the job first (pulse run --output DIR)")
    columns, rows = duckdb_sql.query(output, "SELECT * FROM labels_latest")
    return [dict(zip(columns, row)) for row in rows]
