"""`pulse`: user mistakes give one line on stderr and exit status 2, never a traceback."""
import subprocess
import sys

import pytest

from pipelines import cli
from pipelines.options import OptionsError, SentimentOptions, check_flags, output_kind, validate_options


def pulse(*args):
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                          timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("args,message", [
    (["run"], "--input is required"),
    (["run", "--input", "missing.jsonl"], "--input file missing.jsonl does not exist"),
    (["run", "--input", "projects/p/queues/q"], "neither projects/P/topics/T nor"),
    (["run", "--input", "README.md", "--windw_size", "5"], "unknown flag --windw_size; did you mean --window_size?"),
    (["run", "--input", "README.md", "--window_size", "300", "--window_period", "70"], "whole multiple"),
    (["run", "--input", "README.md", "--run_for", "5"], "--run_for applies to Pub/Sub input"),
    (["run", "--input", "README.md", "--alerts_topic", "alerts"], "is not projects/P/topics/T"),
    (["run", "--input", "README.md", "--model", "/nonexistent/model"], "/nonexistent/model"),
    (["frobnicate"], "unknown command 'frobnicate'"),
])
def test_user_mistakes_are_one_line_errors(args, message, tmp_path):
    if args[0] == "run" and "--output" not in args:
        # Not the default `out`: a `make run` before `make test` leaves it non-empty, which is
        # an error of its own and would hide the one under test.
        args = [*args, "--output", str(tmp_path / "out")]
    code, _, err = pulse(*args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def test_help_lists_commands_and_run_options(capsys):
    assert cli.main([]) == 0
    assert "summary" in capsys.readouterr().out
    assert cli.main(["run", "--help"]) == 0
    assert "--allowed_lateness" in capsys.readouterr().out


def test_check_flags_accepts_beam_options():
    check_flags(["--input", "x", "--runner", "DirectRunner", "--project", "p", "--streaming"])
    with pytest.raises(OptionsError):
        check_flags(["--input", "x", "--no_such_thing"])


@pytest.mark.parametrize("output,kind", [("out", "parquet"), ("./out", "parquet"), ("gs://b/out", "parquet"),
                                         ("my-project:sentiment", "bigquery"), ("my-project.sentiment", "bigquery")])
def test_output_kind(output, kind):
    assert output_kind(output) == kind


def test_bq_method_needs_a_bigquery_output(tmp_path):
    (tmp_path / "in.jsonl").write_text("{}\n")
    options = SentimentOptions(["--input", str(tmp_path / "in.jsonl"), "--bq_method", "FILE_LOADS"])
    with pytest.raises(OptionsError, match="BigQuery"):
        validate_options(options)
