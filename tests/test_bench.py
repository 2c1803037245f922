"""bench/run_all.py in its tiny mode: it runs end to end and prints its ratios (no timing asserted)."""
import os
import re
import subprocess
import sys

import pytest

from bench.run_all import bert_flops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWEETS = [
    "Somehow I was blessed with some really amazing friends in my life. So lucky.",
    "Yay. Another good phone interview.",
    "I hate waiting in line at the DMV, worst day ever :(",
    "The battery died again. Not happy.",
    "ok",
    "What a game!!! Best team in the league, no doubt about it #winning",
]


def test_bert_flops_counts_projections_ffn_and_attention():
    class Config:
        hidden_size, intermediate_size, num_hidden_layers = 768, 3072, 12

    # 12 layers x 2 x 256 x (4 h^2 + 2 h i) + attention 12 x 4 x 256^2 x h: ~45.9 GFLOP per 256-token post.
    assert bert_flops(Config, 1, 256) == pytest.approx(45.9e9, rel=0.005)
    assert bert_flops(Config, 10, 256) == pytest.approx(10 * bert_flops(Config, 1, 256))


@pytest.mark.integration
def test_bench_tiny_prints_ratios(tmp_path):
    data = tmp_path / "hutto_ICWSM_2014"
    data.mkdir()
    lines = [f"{i + 1}\t{(-1) ** i * 1.5}\t{TWEETS[i % len(TWEETS)]}" for i in range(60)]
    (data / "tweets_GroundTruth.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    run = subprocess.run([sys.executable, "-m", "bench.run_all", "--data", str(tmp_path), "--tiny", "--no-progress"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert re.search(r"\[ceiling\] 256x256 float32 matmul: [\d.]+ GFLOP/s", out)
    assert re.search(r"\[bundled\] .+; 60 tweets", out)
    assert re.search(r"ratio TFModelHandlerTensor / tfx-bsl at batch 256: [\d.]+x", out)
    assert re.search(r"speed-up \(ours / brief's way\): [\d.]+x", out)
    assert len(re.findall(r"= [\d.]+ of ceiling", out)) == 2


def test_bench_missing_data_is_one_line_error(tmp_path):
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    run = subprocess.run([sys.executable, "-m", "bench.run_all", "--data", str(tmp_path), "--tiny"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("error: ")


# bench/backlog.py: its arguments, its backlog file and its figures (the drains themselves run in `make bench`).

def test_backlog_arguments_are_checked_in_one_line(capsys):
    from bench import backlog

    args = backlog.parse_args([])
    assert (args.messages, args.runners, args.chosen) == (30000, ["direct", "prism"], False)
    assert backlog.parse_args(["--runners", "prism"]).runners == ["prism"]
    for argv, message in ((["--messages", "99"], "--messages must be at least 100"),
                          (["--span-minutes", "0"], "--span-minutes must be positive"),
                          (["--runners", "direct,flink"], "--runners: flink: choose from direct, prism"),
                          (["--runners", ","], "--runners: none given: choose from direct, prism")):
        with pytest.raises(SystemExit) as e:
            backlog.parse_args(argv)
        assert e.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message)


def test_backlog_without_prism_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    from bench import backlog

    monkeypatch.setattr(backlog, "ROOT", str(tmp_path))  # a checkout where `make prism` has not run
    assert backlog.main(["--runners", "prism", "--messages", "100"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bench.backlog: error: Beam's Prism runner is not built")


def test_backlog_file_and_drain_figures(tmp_path):
    import json

    from bench import backlog
    from models.contracts import parse_rfc3339

    path = tmp_path / "backlog.jsonl"
    backlog.write_backlog(str(path), 600, span_minutes=10)
    posts = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(posts) == 600 and len({p["id"] for p in posts}) == 600
    times = [parse_rfc3339(p["created_at"]).timestamp() for p in posts]
    assert times == sorted(times)
    assert times[0] == backlog.T0.timestamp() and times[-1] - times[0] == pytest.approx(599.0)
    figures = backlog.drain_figures([0.0, 1, 2, 3, 4, 5, 6, 7, 8, 100])
    assert (figures["p50"], figures["p95"], figures["all"]) == (4, 100, 100)
    assert (figures["p50_rate"], figures["all_rate"]) == (1.0, 0.09)
