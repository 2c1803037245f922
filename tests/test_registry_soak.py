"""The registry soak's scenario, short: a Pub/Sub job on a registry through three promotions.

bench/registry_soak.py runs it for 5 minutes (`make bench`, figures in bench/README.md); here the
same scenario runs for 60 s of publishing at 4 posts/s (240 posts: the trickle on which a registry
job once stopped reading 20 s in), a broken promotion at a quarter, two promotions inside one
watch interval at half, SIGINT 20 s after the last post. The checks
are the bench's (`run_soak` -> failures): every post stored exactly once, nothing left unread,
the job's own accounting, no row names the broken version, the last promotion wins, and every
row's label and score are what the version it names gives for its text (re-scored offline).
"""
import pytest

from bench.registry_soak import run_soak

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory, toy_corpus_dir):
    from models import train

    out = tmp_path_factory.mktemp("soak_b") / "model"
    train.run(toy_corpus_dir, str(out), epochs=2, ablation=False, progress=False, version="tiny-b")
    return str(out)


def test_a_registry_job_holds_through_a_broken_promotion_and_two_in_one_interval(
        pubsub_env, tiny_bundled_model, other_weights, tmp_path):
    result = run_soak(tiny_bundled_model, other_weights, str(tmp_path / "soak"), duration_s=60, rate=4.0)
    print(f"\nregistry soak (short): {result.summary()}")
    assert result.failures == [], f"{result.summary()}\n{result.output_tail}"
    assert set(result.versions) <= {"tiny-test", "tiny-test-b", "tiny-test-a2"}
    assert result.versions_in_order[0] == "tiny-test" and result.versions_in_order[-1] == "tiny-test-a2"
