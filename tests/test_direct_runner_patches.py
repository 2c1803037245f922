"""The DirectRunner patches are all or nothing, for the pinned Beam only, and fail loudly if Beam moves.

`install_direct_runner_fixes()` first checks that apache-beam is the version the project pins
(setup.py's install_requires, from requirements.in) and that every Beam internal a patch
replaces or wraps is where the patch expects it; either failure is one line, before anything
is patched, and `pulse run` prints it as its error.

    .venv/bin/pytest tests/test_direct_runner_patches.py -q
"""
import importlib

import apache_beam
import pytest

from pipelines import direct_runner, sentiment_pipeline
from pipelines.direct_runner import PATCHED_INTERNALS, PatchedBeamMismatch, check_beam


def test_every_patched_internal_of_the_pinned_beam_is_there():
    assert direct_runner.pinned_beam_version() == apache_beam.__version__
    check_beam()
    assert set(PATCHED_INTERNALS) == {"metrics", "triggers", "state", "specs", "side_inputs"}


def test_another_beam_version_is_refused_in_one_line():
    with pytest.raises(PatchedBeamMismatch) as e:
        check_beam("2.78.0")
    assert str(e.value) == (f"the DirectRunner patches (pipelines/direct_runner) are for apache-beam "
                            f"{apache_beam.__version__}, this is 2.78.0: install the pinned version "
                            "(pip install -r requirements.lock)")


# StateSampler.update_metric is a method of a compiled (Cython) class: it cannot be deleted to
# simulate a move, so it is left out here; check_beam's lookup of it is covered by
# test_every_patched_internal_of_the_pinned_beam_is_there.
@pytest.mark.parametrize("patch, module, path", [(patch, module, path) for patch, targets in PATCHED_INTERNALS.items()
                                                 for module, path in targets
                                                 if (module, path) != ("apache_beam.runners.worker.statesampler",
                                                                       "StateSampler.update_metric")])
def test_a_patched_internal_that_moved_stops_the_install(patch, module, path, monkeypatch, tmp_path, capsys):
    owner = importlib.import_module(module)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    if not isinstance(owner, type) and not isinstance(owner, type(importlib)):
        owner = type(owner)  # an instance (Beam's MetricsEnvironment): its class defines the method
    holders = [c for c in getattr(owner, "__mro__", [owner]) if name in vars(c)] if isinstance(owner, type) else [owner]
    for holder in holders:
        try:
            monkeypatch.delattr(holder, name)
        except TypeError:
            pytest.fail(f"{holder.__name__}.{name} cannot be removed to simulate a move: leave it out above")
    with pytest.raises(PatchedBeamMismatch, match=f"has no {module}.{path}, which the DirectRunner patch "
                                                  f"pipelines/direct_runner/{patch}.py replaces"):
        direct_runner.install_direct_runner_fixes()
    (tmp_path / "in.jsonl").write_text("{}\n")
    assert sentiment_pipeline.main(["--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"pulse run: error: apache-beam ")


def test_the_trigger_patch_refuses_rather_than_doing_nothing(monkeypatch):
    from apache_beam.transforms import trigger

    from pipelines.direct_runner import triggers

    monkeypatch.setattr(triggers, "_INSTALLED", False)
    monkeypatch.delattr(trigger.GeneralTriggerDriver, "_output")
    with pytest.raises(RuntimeError, match="GeneralTriggerDriver._output is gone"):
        triggers.install()
