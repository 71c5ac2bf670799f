"""The search service with real Ray, real trials on the sample data (tiny model, 3 epochs): Optuna + ASHA,
conditional parameters, the persisted study, TensorBoard files, resume after a killed driver, and a 2-node
cluster that loses a worker node mid-trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml

from tests.helpers import finish, nothing_trained_again, run_search_cli, trial_rows, write_space
from tune_fusion import plots
from tune_fusion.experiment import open_study, read_trials
from tune_fusion.names import LOST, STUDY_FILE, Status
from tune_fusion.search import run_search
from tune_fusion.space import load_spec


@pytest.fixture(scope="module")
def finished_search(tiny_search):
    return tiny_search, Path(tiny_search.experiment_dir)


@pytest.mark.slow
def test_search_end_to_end_with_asha_stopping_trials(finished_search):
    outcome, exp_dir = finished_search
    rows = trial_rows(exp_dir)
    assert len(outcome.results) == len(rows) == 6 and outcome.results.num_errors == 0
    epochs_run = {name: r[-1]["training_iteration"] for name, r in rows.items()}
    stopped = [n for n, r in rows.items() if not r[-1]["trial_finished"]]
    assert stopped and all(epochs_run[n] < 3 for n in stopped)  # ASHA stopped these early
    assert any(epochs_run[n] == 3 and r[-1]["trial_finished"] for n, r in rows.items())
    best = min(min(x["val_mae"] for x in r) for r in rows.values())
    assert outcome.best_val_mae == pytest.approx(best)


@pytest.mark.slow
def test_study_persisted_with_pruned_trials(finished_search):
    outcome, exp_dir = finished_search
    study = open_study(exp_dir)[0]
    states = [t.state for t in study.trials]
    stopped = sum(not r[-1]["trial_finished"] for r in trial_rows(exp_dir).values())
    assert states.count(optuna.trial.TrialState.PRUNED) == stopped
    assert states.count(optuna.trial.TrialState.COMPLETE) == 6 - stopped
    best_by_trial = {name: min(r["val_mae"] for r in rows) for name, rows in trial_rows(exp_dir).items()}
    for trial in study.trials:
        if trial.state == optuna.trial.TrialState.COMPLETE:  # told its best epoch's val_mae, not its last
            assert trial.value == pytest.approx(best_by_trial[f"trial_{trial.user_attrs['ray_trial_id']}"])


@pytest.mark.slow
def test_every_epoch_is_an_intermediate_value_of_its_optuna_trial(finished_search):
    outcome, exp_dir = finished_search
    study = open_study(exp_dir)[0]
    rows = trial_rows(exp_dir)
    for trial in study.trials:
        epochs = rows[f"trial_{trial.user_attrs['ray_trial_id']}"]
        for row in epochs:  # every reported epoch is there (a stopped trial may have sent one more before it ended)
            assert trial.intermediate_values[row["training_iteration"]] == pytest.approx(row["val_mae"])
        if trial.state == optuna.trial.TrialState.PRUNED:  # Optuna's rule: the value of the last reported epoch
            assert trial.value == pytest.approx(trial.intermediate_values[max(trial.intermediate_values)])


@pytest.mark.slow
def test_warm_start_feeds_exactly_the_earlier_trials(finished_search, tmp_path):
    from tune_fusion.warm_start import feed_earlier_trials

    outcome, exp_dir = finished_search
    earlier = open_study(exp_dir)[0]
    spec = load_spec(Path(exp_dir).parent.parent / "tiny.yaml")
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'new.db'}")
    assert feed_earlier_trials(exp_dir, spec, storage, "new") == 6
    fed = optuna.load_study(study_name="new", storage=storage).trials
    assert [(t.params, t.state, t.values, t.intermediate_values) for t in fed] == [
        (t.params, t.state, t.values, t.intermediate_values) for t in earlier.trials]
    assert all(t.user_attrs["warm_start_from"] == str(exp_dir) for t in fed)


def _dashboard_get(app, path: str) -> tuple[str, object]:
    """One GET of optuna-dashboard's WSGI app: its status line and JSON body."""
    from wsgiref.util import setup_testing_defaults

    environ: dict = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    answer: list[str] = []
    body = b"".join(app(environ, lambda status, headers, *exc: answer.append(status)))
    return answer[0], json.loads(body)


@pytest.mark.slow
def test_the_study_is_a_journal_that_the_dashboard_opens_and_an_old_sqlite_study_still_opens(finished_search,
                                                                                               tmp_path):
    import shutil

    import optuna_dashboard

    from tune_fusion.importance import parameter_importance
    from tune_fusion.names import OLD_STUDY_FILE, STUDY_FILE
    from tune_fusion.warm_start import feed_earlier_trials

    outcome, exp_dir = finished_search
    journal = exp_dir / STUDY_FILE
    assert journal.is_file() and not (exp_dir / OLD_STUDY_FILE).exists()  # NFS-safe: a journal, not SQLite
    status, studies = _dashboard_get(optuna_dashboard.wsgi(str(journal)), "/api/studies")  # what its CLI opens
    assert status.startswith("200") and [s["study_name"] for s in studies["study_summaries"]] == [exp_dir.name]
    status, study = _dashboard_get(optuna_dashboard.wsgi(str(journal)),
                                   f"/api/studies/{studies['study_summaries'][0]['study_id']}")
    assert status.startswith("200") and len(study["trials"]) == 6

    # a search made before the journal: its SQLite study still feeds --warm-start and parameter importance
    old = tmp_path / exp_dir.name
    shutil.copytree(exp_dir, old, ignore=shutil.ignore_patterns(STUDY_FILE, "*.pt"))
    optuna.copy_study(from_study_name=exp_dir.name, from_storage=open_study(exp_dir)[0]._storage,
                      to_storage=f"sqlite:///{old / OLD_STUDY_FILE}")
    assert not (old / STUDY_FILE).exists() and open_study(old)[1] == old / OLD_STUDY_FILE
    assert [t.params for t in open_study(old)[0].trials] == [t.params for t in open_study(exp_dir)[0].trials]
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'new.db'}")
    assert feed_earlier_trials(old, load_spec(exp_dir.parent.parent / "tiny.yaml"), storage, "new") == 6
    assert "no Optuna study" not in parameter_importance(old)[1]


@pytest.mark.slow
def test_conditional_parameters_follow_their_conditions(finished_search):
    outcome, _ = finished_search
    for result in outcome.results:
        config = result.config
        assert ("middle_fusion_layers" in config) == config["use_middle_fusion"]
        assert ("cross_modal_num_heads" in config) == config["use_cross_modal"]


@pytest.mark.slow
def test_tensorboard_files_hold_the_named_scalars(finished_search):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    outcome, exp_dir = finished_search
    fused = next(r for r in outcome.results if r.config["use_middle_fusion"])
    events = EventAccumulator(str(fused.path))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    layer = fused.config["middle_fusion_layers"]
    for name in ("val_mae", "train_mae", "train_loss", "lr", f"text_scale/layer_{layer}", "alpha_mean", "val_rmse"):
        assert f"ray/tune/{name}" in tags, (name, sorted(tags))
    values = [e.value for e in events.Scalars("ray/tune/val_mae")]
    assert values == pytest.approx(list(fused.metrics_dataframe["val_mae"]), rel=1e-5)


@pytest.mark.slow
def test_every_trial_checkpoint_is_plain_data_with_best_weights(finished_search):
    import torch

    outcome, _ = finished_search
    for result in outcome.results:
        ckpt = torch.load(Path(result.checkpoint.path) / "checkpoint.pt", weights_only=True)
        assert ckpt["epoch"] == result.metrics["training_iteration"]
        assert ckpt["val_mae"] == pytest.approx(min(result.metrics_dataframe["val_mae"]))
        assert set(ckpt["best_model"]) == set(ckpt["model"])
        assert len(list(Path(result.path).glob("checkpoint_*"))) <= 2  # bounded disk use


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the search ended before {what}: {proc.stdout.read() if proc.stdout else ''}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_resume_after_the_driver_is_killed(tmp_path, cache_dir, prepared):
    # FIFO: every trial runs to its end, so the kill always lands mid-search
    space = write_space(tmp_path / "resume.yaml", cache_dir, num_samples=4, epochs=3, fifo=True)
    storage, exp_dir = tmp_path / "results", tmp_path / "results" / "resume"
    args = ["--space", str(space), "--storage", str(storage)]
    driver = run_search_cli(*args)

    def finished_trials():
        done = {n: r for n, r in trial_rows(exp_dir).items() if r and r[-1]["trial_finished"]}
        return done if len(done) >= 2 else None

    done_before = wait_for(finished_trials, 300, "two finished trials", driver)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and everything it started, mid-search
    driver.wait()
    assert sum(bool(r and r[-1]["trial_finished"]) for r in trial_rows(exp_dir).values()) < 4  # really mid-search
    # as a study made before the objective had a name (the resume names it); the same bytes, renamed: Ray's snapshot
    # of the searcher holds its place in the journal by byte offset
    journal = exp_dir / STUDY_FILE
    journal.write_text(journal.read_text().replace('"study:metric_names"', '"study:metric_namez"'))
    assert open_study(exp_dir)[0].metric_names is None
    resumed = run_search_cli(*args, "--resume")
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output[-3000:]
    after = trial_rows(exp_dir)
    for name, rows in done_before.items():
        assert nothing_trained_again(rows, after[name])  # finished trials are not run again
    assert len(after) == 4 and all(r[-1]["trial_finished"] for r in after.values())
    study = open_study(exp_dir)[0]
    assert len([t for t in study.trials if t.state.is_finished()]) >= 4
    assert study.metric_names == ["val_mae (eV/atom)"]
    assert "best validation MAE" in output


@pytest.mark.slow
def test_a_resume_whose_saved_state_ray_cannot_read_stops_in_one_line_instead_of_waiting_for_ever(
        tmp_path, cache_dir, prepared):
    """Ray Tune, failing to read its saved state, starts the experiment again with no trials, and the searcher it
    restored proposes none: the resumed driver would wait for ever (seen when a test rewrote the study journal)."""
    space = write_space(tmp_path / "broken.yaml", cache_dir, num_samples=2, epochs=1, fifo=True)
    storage, exp_dir = tmp_path / "results", tmp_path / "results" / "broken"
    args = ["--space", str(space), "--storage", str(storage)]
    first = run_search_cli(*args)
    assert first.wait(timeout=300) == 0, first.communicate()[0][-3000:]
    state = max(exp_dir.glob("searcher-state-*.pkl"))
    state.write_bytes(state.read_bytes()[:100])  # cut short
    before = trial_rows(exp_dir)
    resumed = run_search_cli(*args, "--resume")
    output = finish(resumed, 180)
    assert resumed.returncode == 2, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith("error: cannot resume: Ray could not read its saved state of the search (") and (
        "--warm-start" in last), output[-3000:]
    assert "Traceback" not in output and trial_rows(exp_dir) == before


@pytest.mark.slow
def test_trials_that_ended_after_rays_last_snapshot_are_not_trained_again(tmp_path, cache_dir, prepared):
    """Ray resumes a search from its own snapshot of the trials (every few seconds, copied behind the trials' files),
    so trials that ended after it come back as pending or running. Here the first snapshot in which both trials
    exist (in practice, before either reported) is put back after the search ended: the resume must tell each trial's
    epochs again from its last checkpoint, not train them again, and the study (saved at every tell) must keep its
    results as they were."""
    space = write_space(tmp_path / "lag.yaml", cache_dir, num_samples=2, epochs=3, fifo=True)
    spec, exp_dir, snapshot, searching = load_spec(space), tmp_path / "results" / "lag", {}, threading.Event()

    def take_snapshot() -> None:  # the first whole one holding both trials before either ended (it is taken before
        while searching.is_set() and not snapshot:  # either reports, as trials take seconds to start)
            files = {f.name: f.read_bytes() for pattern in ("experiment_state-*", "searcher-state-*",
                                                            "search_gen_state-*") for f in exp_dir.glob(pattern)}
            try:
                trials = json.loads(next(v for k, v in files.items() if k.startswith("experiment_state")))["trial_data"]
                if len(files) == 3 and len(trials) == 2 and not any(
                        json.loads(t[1])["last_result"].get("trial_finished") for t in trials):
                    snapshot.update(files)
            except (StopIteration, ValueError):  # not written yet, or caught mid-write
                pass
            time.sleep(0.05)

    searching.set()
    watcher = threading.Thread(target=take_snapshot)
    watcher.start()
    try:
        run_search(spec, storage=str(tmp_path / "results"), verbose=False)
    finally:
        searching.clear()
        watcher.join()
    assert snapshot
    study = open_study(exp_dir)[0]
    told = sorted((t.number, t.state, t.value) for t in study.trials)
    begun = study.ask()  # as a trial begun just before a hard stop: in the study, not in Ray's snapshot, and having
    begun.report(0.5, 1)  # told its first epoch inside the second before the stop (a tiny model can)
    lost = begun.number
    before = trial_rows(exp_dir)
    for name, content in snapshot.items():
        (exp_dir / name).write_bytes(content)

    run_search(spec, storage=str(tmp_path / "results"), resume=True, verbose=False)
    after = trial_rows(exp_dir)
    assert after.keys() == before.keys() and len(after) == 2
    for name, rows in before.items():
        assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["trial_finished"] == 1
        assert after[name] != rows and nothing_trained_again(rows, after[name])  # Ray ran it again, it trained nothing
    study = open_study(exp_dir)[0]
    closed = study.trials[lost]  # closed as lost, not left running for ever
    assert closed.state == optuna.trial.TrialState.FAIL and LOST in closed.user_attrs
    assert sorted((t.number, t.state, t.value) for t in study.trials if t.number != lost) == told  # nothing twice
    trials = read_trials(exp_dir)
    assert [(t.status, [r["epoch"] for r in t.history]) for t in trials] == [(Status.COMPLETED, [1, 2, 3])] * 2


@pytest.mark.slow
def test_trials_that_cannot_train_end_with_their_reason_and_the_search_goes_on(tmp_path, cache_dir, prepared):
    path = write_space(tmp_path / "faulty.yaml", cache_dir, num_samples=3, epochs=2, fifo=True, use_middle_fusion=True,
                       middle_fusion_layers="1", use_cross_modal=True, max_text_scale=2.0)
    space = yaml.safe_load(path.read_text())
    del space["fixed"]["cross_modal_hidden_dim"]
    space["search"] = {"cross_modal_num_heads": {"type": "choice", "values": [2, 3]},
                       "cross_modal_hidden_dim": {"type": "choice", "values": [6, 8]},
                       "middle_fusion_initial_scale": {"type": "choice", "values": [0.5, 4.0]}}
    space["searcher"]["points_to_evaluate"] = [  # one of each: 3 heads cannot split 8 dims, an exploding scale, fine
        {"cross_modal_num_heads": 3, "cross_modal_hidden_dim": 8, "middle_fusion_initial_scale": 0.5},
        {"cross_modal_num_heads": 2, "cross_modal_hidden_dim": 8, "middle_fusion_initial_scale": 4.0},
        {"cross_modal_num_heads": 2, "cross_modal_hidden_dim": 8, "middle_fusion_initial_scale": 0.5}]
    path.write_text(yaml.safe_dump(space))
    outcome = run_search(load_spec(path), storage=str(tmp_path / "results"), name="faulty")
    assert len(outcome.results) == 3 and outcome.results.num_errors == 0  # nothing crashed, nothing retried
    reasons = sorted(r.metrics["stop_reason"].split(":")[0] for r in outcome.results)
    assert reasons == ["", "config_error", "text_scale_exploded"]
    finite = [v for r in outcome.results for v in r.metrics_dataframe["val_mae"] if v != float("inf")]
    assert outcome.best_val_mae == pytest.approx(min(finite))
    study = open_study(Path(outcome.experiment_dir))[0]
    states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE", "COMPLETE", "FAIL"]  # the config error failed; the exploded trial has a value
    trials = read_trials(Path(outcome.experiment_dir))  # the analysis draws the two that trained, and only them
    drawn = {t.get_text() for t in plots.learning_curves(trials, "formation_energy_peratom").axes[0].texts}
    assert drawn == {t.trial_id[:8] for t in trials if t.status != Status.CONFIG_ERROR} and len(drawn) == 2
