"""reward=ensemble: K saved reward models aggregated by mean, min or mean - k * std.

The aggregation functions against hand-computed values (std: the population convention), the
config errors (each naming the key a user sets), the ensemble scoring with real saved models, and
a real GRPO job optimising an ensemble, its disagreement logged to a real MLflow store.
"""

from __future__ import annotations

import math

import mlflow
import pytest
import torch

from alignx.config import compose
from alignx.errors import ConfigError
from alignx.models.heads import add_reward_head
from alignx.models.loading import build_llama, save_pretrained_atomic
from alignx.registry import load_plugins
from alignx.rewards import check_reward_config
from alignx.rewards.combine import build_reward
from alignx.rewards.ensemble import AGGREGATES, aggregate, ensemble_std
from alignx.rewards.model import RewardModelScorer
from alignx.train import train
from conftest import FAST, fast

PROMPTS = ["The film was", "The plot was"]
COMPLETIONS = [" great and warm.", " dull."]

#: 3 members x 2 completions
SCORES = torch.tensor([[1.0, 0.0],
                       [2.0, 0.0],
                       [3.0, 3.0]])


def test_aggregates_hand_computed():
    assert aggregate(SCORES, "mean").tolist() == pytest.approx([2.0, 1.0])
    assert aggregate(SCORES, "min").tolist() == pytest.approx([1.0, 0.0])
    # population std: column 0 deviations -1, 0, 1 -> var 2/3; column 1 (0, 0, 3), mean 1,
    # deviations -1, -1, 2 -> var (1 + 1 + 4) / 3 = 2
    assert ensemble_std(SCORES).tolist() == pytest.approx([math.sqrt(2 / 3), math.sqrt(2)])
    # not the sample std (K - 1 = 2 in the denominator: 1 and sqrt(3))
    assert ensemble_std(SCORES).tolist() != pytest.approx([1.0, math.sqrt(3)])
    assert aggregate(SCORES, "uncertainty", k=0.5).tolist() == pytest.approx(
        [2.0 - 0.5 * math.sqrt(2 / 3), 1.0 - 0.5 * math.sqrt(2)])
    # k = 0 is the mean; two members: std = |a - b| / 2
    assert aggregate(SCORES, "uncertainty", k=0.0).tolist() == pytest.approx([2.0, 1.0])
    two = torch.tensor([[1.0], [4.0]])
    assert ensemble_std(two).tolist() == pytest.approx([1.5])
    assert aggregate(two, "uncertainty", k=2.0).tolist() == pytest.approx([2.5 - 3.0])
    # one member: every aggregate but uncertainty is that member
    one = SCORES[:1]
    assert aggregate(one, "mean").tolist() == aggregate(one, "min").tolist() == [1.0, 0.0]
    assert ensemble_std(one).tolist() == [0.0, 0.0]


def test_aggregate_refuses_what_it_cannot_compute():
    with pytest.raises(ValueError, match=r"aggregate must be one of mean, min, uncertainty, got 'max'"):
        aggregate(SCORES, "max")
    with pytest.raises(ValueError, match=r"aggregate 'uncertainty' needs at least 2 members"):
        aggregate(SCORES[:1], "uncertainty")
    with pytest.raises(ValueError, match=r"scores must be \[members"):
        aggregate(SCORES[0], "mean")
    assert AGGREGATES == ("mean", "min", "uncertainty")


def _save_rm(path, seed):
    torch.manual_seed(seed)
    model, tok = build_llama(compose(FAST).model)
    save_pretrained_atomic(path, add_reward_head(model, tok).eval(), tok)
    return path


@pytest.fixture(scope="module")
def rms(tmp_path_factory):
    """Three tiny untrained reward models (different seeds: they disagree) and a saved causal LM."""
    root = tmp_path_factory.mktemp("rms")
    paths = [str(_save_rm(root / f"rm{i}", i)) for i in range(3)]
    model, tok = build_llama(compose(FAST).model)
    save_pretrained_atomic(root / "policy", model, tok)
    return paths, root / "policy"


def _ensemble(*overrides):
    return build_reward(compose(["reward=ensemble", *overrides]).reward)


def test_ensemble_scores_are_the_aggregate_of_its_members(rms):
    paths, _ = rms
    members = torch.tensor([RewardModelScorer(p)(PROMPTS, COMPLETIONS) for p in paths])
    assert members.shape == (3, 2) and members.std(0).min() > 0  # the members really disagree
    for how in AGGREGATES:
        reward = _ensemble(f"reward.paths=[{','.join(paths)}]", f"reward.aggregate={how}", "reward.k=2.0")
        assert reward.names == ["ensemble"]
        total, parts = reward.score(PROMPTS, COMPLETIONS)
        want = {"mean": members.mean(0), "min": members.min(0).values,
                "uncertainty": members.mean(0) - 2.0 * members.std(0, correction=0)}[how]
        assert total.tolist() == pytest.approx(want.tolist(), abs=1e-5)
        # the disagreement is a part of its own, logged, not added to the total
        assert parts["ensemble/std"].tolist() == pytest.approx(members.std(0, correction=0).tolist(), abs=1e-5)
        assert set(reward.metrics(parts)) == {"reward/ensemble", "reward/ensemble/std"}
    # one member with min is that reward model (the single-RM baseline of the over-optimisation demo)
    single = _ensemble(f"reward.paths=[{paths[0]}]", "reward.aggregate=min")
    assert single(PROMPTS, COMPLETIONS) == pytest.approx(members[0].tolist(), abs=1e-5)


@pytest.mark.parametrize("overrides, message", [
    ([], r"^reward.paths is required: component 'ensemble' \(reward 'ensemble'\) needs option 'paths' "
         r"\(a list of K saved objective=rm model directories\); set reward.paths=<value>$"),
    (["reward.paths=[]"], r"^reward.paths: paths is empty: give the directories of K >= 1 saved objective=rm models"),
    (["reward.paths=rm0"], r"^reward.paths: paths must be a list of saved objective=rm model directories, got 'rm0'"),
    (["reward.paths=[a]", "reward.aggregate=max"],
     r"^reward.aggregate='max' is not 'mean' or 'min' or 'uncertainty' \(option 'aggregate' of reward 'ensemble'\)$"),
    (["reward.paths=[a]", "reward.aggregate=uncertainty"],
     r"^reward.aggregate: aggregate 'uncertainty' \(mean - k \* std\) needs at least 2 reward models in paths, got 1 \(a\)"),
    (["reward.paths=[a,b]", "reward.k=-1"], r"^reward.k: k must be a number >= 0"),
    (["reward.paths=[a]", "+reward.path=a"], r"^unknown key 'reward.path'.*Did you mean 'reward.paths'\?"),
])
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _ensemble(*overrides)


def test_aggregate_and_missing_paths_are_caught_before_any_model_loads():
    # what online objectives run in check_config, before a job creates anything
    with pytest.raises(ConfigError, match=r"^reward.aggregate='median' is not 'mean' or 'min' or 'uncertainty'"):
        check_reward_config(compose(["reward=ensemble", "reward.paths=[a]", "reward.aggregate=median"]).reward, load_plugins())


def test_a_path_that_is_not_a_reward_model_is_named(rms, tmp_path):
    paths, policy = rms
    with pytest.raises(ConfigError, match=rf"^reward.paths: paths item 1 \({tmp_path}\) is not a saved reward model: "
                                          r"reward model directory .* has no config.json"):
        _ensemble(f"reward.paths=[{paths[0]},{tmp_path}]")
    with pytest.raises(ConfigError, match=r"^reward.paths: paths item 2 \(.*policy\) is not a saved reward model: "
                                          r".* is a classifier with 2 labels, not a reward model"):
        _ensemble(f"reward.paths=[{paths[0]},{paths[1]},{policy}]")


def test_grpo_optimises_an_ensemble_and_logs_its_disagreement(rms, tmp_path):
    paths, _ = rms
    job = train(compose(fast(
        "objective=grpo", "dataset=sentiment", "reward=ensemble", f"reward.paths=[{','.join(paths)}]",
        "reward.aggregate=uncertainty", "reward.k=1.0", "data.batch_size=4", "objective.max_new_tokens=6",
        "trainer.max_steps=2", "eval.enabled=false", "save.model=false",
        f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}")))
    assert job.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.tracking.MlflowClient(job.tracking_uri)
    run = client.get_run(job.run_id)
    assert run.data.params["reward.aggregate"] == "uncertainty"

    def history(key):
        return [m.value for m in sorted(client.get_metric_history(job.run_id, key), key=lambda m: m.step)]

    std, score = history("reward/ensemble/std"), history("reward/ensemble")
    assert len(std) == len(score) == 2
    # untrained members of different seeds disagree on every rollout batch
    assert all(s > 0 and math.isfinite(s) for s in std)
    # GRPO learns from the aggregate: its logged reward is the ensemble's (one component, weight 1)
    assert history("reward") == pytest.approx(score, abs=1e-5)
