"""Search-space YAML: the shipped spaces load, conditions hold, and every bad input is a one-line error."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import optuna
import pytest
import yaml

from tests.helpers import REPO, VALID, edit
from tune_fusion.errors import ConfigError
from tune_fusion.space import DefineByRun, load_spec, parse_spec

SPACES = sorted((REPO / "search_spaces").glob("*.yaml"))
def test_shipped_spaces_are_valid():
    names = {p.stem for p in SPACES}
    assert {"quickstart", "middle_fusion", "full", "graph_only"} <= names
    for path in SPACES:
        spec = load_spec(path)
        assert spec.params and spec.num_samples >= 1 and spec.base.data.dataset.endswith("jarvis_dft3d_800.json.gz")
    assert load_spec(REPO / "search_spaces" / "graph_only.yaml").base.model.graph_only
    full = load_spec(REPO / "search_spaces" / "full.yaml")
    assert len(full.searcher.points_to_evaluate) == 3


def test_conditional_parameters_drawn_only_when_their_condition_holds():
    spec = load_spec(REPO / "search_spaces" / "full.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    space = DefineByRun(spec.params, spec.base)
    drawn = []
    for _ in range(60):
        trial = study.ask()
        space(trial)
        drawn.append(trial.params)
        study.tell(trial, 1.0)
    for params in drawn:
        assert ("cross_modal_num_heads" in params) == params["use_cross_modal"]
        assert ("contrastive_weight" in params) == params["use_contrastive"]
        assert ("middle_fusion_initial_scale" in params) == params["use_middle_fusion"]
        if "middle_fusion_initial_scale" in params:
            assert 1.0 <= params["middle_fusion_initial_scale"] <= 20.0
    assert any(p["use_cross_modal"] for p in drawn) and not all(p["use_cross_modal"] for p in drawn)


# One row per bad input: (how to break the valid file, what the one-line error must say).
BAD_YAML = [
    ("search: [oops", "not valid YAML"),
    ("num_sample: 4", "unknown key 'num_sample'. Did you mean 'num_samples'?"),
    ("fixed: {epochs: 30, batch_size: 64, use_middle_fusion: true} => fixed: {epoch: 30}", "Did you mean 'epochs'?"),
    ("fixed: {epochs: 30, batch_size: 64, use_middle_fusion: true} => fixed: {epochs: thirty}", "epochs='thirty' is not a valid int"),
    ("low: 1.0, high: 20.0 => low: 20.0, high: 1.0", "low=20.0 must be < high=1.0"),
    ("low: 1.0, high: 20.0 => low: 1.0, high: 1.0", "empty or inverted range"),
    ("low: 1.0, high: 20.0 => low: 0.0, high: 20.0", "loguniform needs low > 0"),
    ('values: ["2", "3", "2,3"] => values: []', "a choice needs a non-empty list"),
    ('values: ["2", "3", "2,3"] => values: ["2", "7"]', "names layer(s) [7] but the model has alignn_layers=4"),
    ("when: {use_cross_modal: true} => when: {use_crossmodal: true}", "condition on unknown parameter 'use_crossmodal'"),
    ("type: loguniform => type: lognormal", "type='lognormal' must be one of"),
    ("middle_fusion_initial_scale: {type => middle_fusion_init_scale: {type", "Did you mean 'middle_fusion_initial_scale'?"),
    ("max_t: 30 => max_t: 50", "max_t=50 must equal epochs=30"),
    ("max_t: 30 => max_t: 10", "max_t=10 must equal epochs=30"),
    ("use_cross_modal: {type: choice, values: [true, false]} => use_cross_modal: {type: choice, values: [true, false]}"
     "\n  gcn_layers: {type: loguniform, low: 1, high: 8}", "gcn_layers is a int, so type: loguniform cannot draw it"),
    ("use_cross_modal: {type: choice, values: [true, false]} => use_cross_modal: {type: choice, values: [true, false]}"
     "\n  alignn_layers: {type: int, low: 2, high: 4, step: 0.5}", "step=0.5 must be a int > 0"),
    ("searcher: {type: optuna, sampler: tpe, seed: 0} => searcher: {type: optuna, points_to_evaluate: "
     "[{middle_fusion_initial_scale: abc}]}", "middle_fusion_initial_scale='abc' is not a valid float"),
    ("fixed: {epochs: 30, batch_size: 64, use_middle_fusion: true} => fixed: {epochs: 30, device: 'cuda:1'}",
     "'device' has no meaning in a search"),
    ("fixed: {epochs: 30, => fixed: { && search: => search:\n  epochs: {type: int, low: 10, high: 30}",
     "cannot be searched with ASHA"),
    ("grace_period: 3 => grace_period: 0", "1 <= grace_period <= max_t"),
    ("num_samples: 32 => num_samples: 0", "num_samples=0 must be >= 1"),
    ("num_samples: 32 => num_samples: many", "num_samples='many' must be a int"),
    ("resources: {cpu: 1, gpu: 0} => resources: {cpu: 1, gpus: 1}", "unknown key 'gpus'. Did you mean 'gpu'?"),
    ("sampler: tpe => sampler: cmaes", "sampler='cmaes' must be tpe or random"),
    ("use_cross_modal: {type: choice, values: [true, false]} => use_cross_modal: {type: choice, values: [true, maybe]}",
     "use_cross_modal='maybe' is not a valid bool"),
    ("cross_modal_num_heads: {type: choice, values: [1, 2, 4, 8] => cross_modal_num_heads: {type: choice, values: [3]",
     "cross_modal_num_heads=3 must divide cross_modal_hidden_dim=256"),
    ("when: {use_cross_modal: true} => when: {use_cross_modal: 3}", "use_cross_modal=3 is not a valid bool"),
    ("searcher: {type: optuna, sampler: tpe, seed: 0} => searcher: {type: optuna, points_to_evaluate: [{lr: 1}]}",
     "'lr' is not a searched parameter"),
    ("fixed: {epochs: 30, batch_size: 64, use_middle_fusion: true} => fixed: {epochs: 30, middle_fusion_layers: '2'}",
     "'middle_fusion_layers' is both fixed and searched"),
    ("sampler: tpe => sampler: tpe, n_startup_trials: -1", "n_startup_trials=-1 must be >= 0"),
    ("use_cross_modal: {type: choice, values: [true, false]} => use_cross_modal: {type: choice, values: [true, false]}"
     "\n  cutoff: {type: uniform, low: 6.0, high: 8.0}", "'cutoff' shapes the prepared data"),
    ("sampler: tpe => sampler: tpe, multivariate: maybe", "multivariate='maybe' must be a bool"),
    # the error names the key that is wrong, not the first one checked after it
    ('values: ["2", "3", "2,3"] => values: ["9"]', "search.middle_fusion_layers: value '9' names layer(s) [9]"),
    ('values: ["2", "3", "2,3"] => values: ["two"]', "search.middle_fusion_layers: middle_fusion_layers='two' is not"),
]


@pytest.mark.parametrize("change, message", BAD_YAML, ids=[m[:40] for _, m in BAD_YAML])
def test_bad_yaml_is_a_one_line_error_naming_file_key_and_fix(tmp_path, change, message):
    path = tmp_path / "space.yaml"
    path.write_text(edit(change))
    with pytest.raises(ConfigError) as caught:
        load_spec(path)
    text = str(caught.value)
    assert message in text and "\n" not in text and str(path) in text


def test_the_valid_base_really_is_valid(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(VALID)
    spec = load_spec(path)
    assert [p.name for p in spec.params][-1] == "cross_modal_num_heads"  # after the param its condition reads


def test_overrides_from_the_command_line_are_validated_too():
    raw = yaml.safe_load(VALID)
    assert parse_spec(raw, "x.yaml", {"num_samples": 3}).num_samples == 3
    with pytest.raises(ConfigError, match="max_concurrent=0 must be >= 1"):
        parse_spec(raw, "x.yaml", {"max_concurrent": 0})


def test_run_search_cli_reports_bad_space_in_one_line_before_ray_starts(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(edit("num_sample: 4"))
    out = subprocess.run([sys.executable, "run_search.py", "--space", str(path)], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "num_samples" in out.stderr
    assert "Ray" not in out.stdout


def test_missing_space_file():
    with pytest.raises(ConfigError, match="search space nowhere.yaml not found"):
        load_spec(Path("nowhere.yaml"))
    with pytest.raises(ConfigError, match="Did you mean 'middle_fusion.yaml'"):
        load_spec(Path("search_spaces/middle-fusion.yaml"))


def test_tpe_settings_scale_with_the_budget_and_reach_the_sampler(tmp_path):
    from tune_fusion.searcher import make_sampler

    spec = parse_spec(yaml.safe_load(VALID), "valid.yaml")
    assert spec.searcher.multivariate and spec.searcher.group and spec.searcher.constant_liar
    assert [spec.searcher.startup_trials(n) for n in (4, 8, 32, 64, 200)] == [2, 2, 8, 16, 16]
    sampler = make_sampler(spec)
    assert sampler._n_startup_trials == 8 and sampler._multivariate and sampler._group and sampler._constant_liar
    custom = parse_spec(yaml.safe_load(edit("sampler: tpe => sampler: tpe, n_startup_trials: 5, constant_liar: false")),
                        "custom.yaml")
    assert make_sampler(custom)._n_startup_trials == 5 and not make_sampler(custom)._constant_liar


def three_configs(trial: optuna.Trial) -> None:
    trial.suggest_categorical("middle_fusion_layers", ["0", "1", "0,1"])


@pytest.mark.parametrize("seed", range(5))
def test_the_searcher_does_not_run_a_finished_configuration_again(seed):
    from tune_fusion.names import FINISHED, METRIC
    from tune_fusion.searcher import FusionOptunaSearch

    searcher = FusionOptunaSearch(space=three_configs, metric=METRIC, mode="min",
                                  sampler=optuna.samplers.RandomSampler(seed=seed))
    configs = []
    for i in range(3):
        configs.append(searcher.suggest(f"t{i}"))
        result = {METRIC: 0.5 + i, "best_val_mae": 0.5 + i, "training_iteration": 1, FINISHED: i != 1}
        searcher.on_trial_complete(f"t{i}", result)  # t1: stopped by the scheduler
    assert sorted(c["middle_fusion_layers"] for c in configs) == ["0", "0,1", "1"]  # three proposals, no repeat
    study = searcher._ot_study
    ran = {t.number for t in study.trials if "ray_trial_id" in t.user_attrs}
    for trial in study.trials:  # a skipped repeat carries the earlier trial's result, so the sampler learns from it
        if trial.number not in ran:
            earlier = study.trials[trial.user_attrs["repeat_of"]]
            assert (trial.params, trial.state, trial.values, trial.intermediate_values) == (
                earlier.params, earlier.state, earlier.values, earlier.intermediate_values)
    assert searcher.suggest("t3") is not None  # an exhausted space still proposes (a repeat), it does not hang


def test_points_to_evaluate_run_even_when_they_repeat():
    from tune_fusion.searcher import ask_new

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(2):
        study.enqueue_trial({"middle_fusion_layers": "0"})

    def ask() -> optuna.Trial:
        trial = study.ask()
        three_configs(trial)
        return trial

    for _ in range(2):
        trial = ask_new(study, ask)
        assert trial.params == {"middle_fusion_layers": "0"}
        study.tell(trial, 1.0)
    assert len(study.trials) == 2


def test_warm_start_copies_are_not_taken_for_results_of_this_search():
    from tune_fusion.names import REPEAT_OF, WARM_START_FROM
    from tune_fusion.searcher import ask_new

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    layers = optuna.distributions.CategoricalDistribution(["0", "1", "0,1"])
    for value in ("0", "1", "0,1"):  # an earlier search (another target) tried every configuration
        study.add_trial(optuna.trial.create_trial(params={"middle_fusion_layers": value},
                                                  distributions={"middle_fusion_layers": layers}, value=20.0,
                                                  user_attrs={WARM_START_FROM: "earlier"}))

    def ask() -> optuna.Trial:
        trial = study.ask()
        three_configs(trial)
        return trial

    trained = []
    for i in range(3):
        trial = ask_new(study, ask)
        study.tell(trial, 0.1 * (i + 1))
        trained.append(trial.params["middle_fusion_layers"])
    assert sorted(trained) == ["0", "0,1", "1"]  # each trained here once, though the earlier search had them all
    for trial in study.trials:
        if REPEAT_OF in trial.user_attrs:  # repeats carry this search's results, never the earlier search's
            earlier = study.trials[trial.user_attrs[REPEAT_OF]]
            assert WARM_START_FROM not in earlier.user_attrs and trial.value == earlier.value < 1


def test_a_bad_warm_start_is_a_one_line_error_before_ray_starts(tmp_path):
    out = subprocess.run([sys.executable, "run_search.py", "--space", str(REPO / "search_spaces" / "quickstart.yaml"),
                          "--warm-start", str(tmp_path), "--storage", str(tmp_path / "r")], capture_output=True,
                         text=True, cwd=REPO, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "no Optuna study" in out.stderr


def test_parameter_importance_counts_only_the_trials_the_search_trained(tmp_path):
    from tune_fusion.experiment import study_storage
    from tune_fusion.importance import parameter_importance
    from tune_fusion.names import REPEAT_OF, STUDY_FILE, WARM_START_FROM

    folder = tmp_path / "exp"
    folder.mkdir()
    study = optuna.create_study(study_name="exp", storage=study_storage(folder / STUDY_FILE))
    rate = optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    fusion = optuna.distributions.CategoricalDistribution([True, False])

    def add(lr: float, fused: bool, value: float, **attrs) -> None:
        study.add_trial(optuna.trial.create_trial(
            params={"learning_rate": lr, "use_middle_fusion": fused},
            distributions={"learning_rate": rate, "use_middle_fusion": fusion}, value=value, user_attrs=attrs))

    for i in range(8):  # trained here: the value follows the learning rate
        add(1e-4 * 1.8 ** i, i % 2 == 0, 0.5 - 0.03 * i)
    for _ in range(8):  # copies that would make fusion look decisive if they were counted
        add(1e-3, True, 0.1, **{WARM_START_FROM: "elsewhere"})
        add(1e-3, False, 0.9, **{REPEAT_OF: 0})
    importances, note = parameter_importance(folder)
    assert "over the 8 completed trials" in note
    assert importances["learning_rate"] > importances["use_middle_fusion"]


def test_the_study_names_its_objective_with_the_targets_unit(tmp_path):
    from tune_fusion.experiment import study_storage
    from tune_fusion.names import METRIC, STUDY_FILE
    from tune_fusion.searcher import FusionOptunaSearch

    storage = study_storage(tmp_path / STUDY_FILE)  # the journal a search writes
    searcher = FusionOptunaSearch(space=three_configs, metric=METRIC, mode="min", storage=storage, study_name="s",
                                  sampler=optuna.samplers.RandomSampler(seed=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna's ExperimentalWarning would reach the quiet console
        searcher.name_metric("formation_energy_peratom")
    assert optuna.load_study(study_name="s", storage=study_storage(tmp_path / STUDY_FILE)).metric_names == [
        "val_mae (eV/atom)"]  # what optuna-dashboard shows instead of "Objective 0"
