"""Online RL (objective=ppo | grpo | rloo | dapo | gspo | reinforce_pp): rollouts, the training loop, metrics, resume, divergence.

Everything trains for real on a 1-layer model for a handful of iterations (seconds each); the
proofs that these objectives *align* are in test_rl_aligns.py.
"""

from __future__ import annotations

import hashlib
import math

import mlflow
import pytest
import torch
from conftest import fast, require_example_plugin

from alignx.checkpoint import load_checkpoint
from alignx.config import compose
from alignx.errors import ConfigError
from alignx.generation import (
    decode_responses,
    encode_prompts,
    generate,
    left_pad,
    position_ids,
    sample,
)
from alignx.models.heads import add_reward_head, token_values
from alignx.models.loading import build_llama, save_pretrained_atomic
from alignx.objectives.online import TrainingDiverged
from alignx.train import train

#: diagnostics every online objective logs each iteration (docs/metrics.md)
DIAGNOSTICS = {"policy/logprob_mismatch", "policy/clipfrac_avg", "objective/entropy"}
PPO_METRICS = DIAGNOSTICS | {
    "objective/kl", "objective/non_score_reward", "objective/rlhf_reward", "objective/scores",
    "policy/approxkl_avg", "loss/policy_avg", "loss/value_avg", "val/clipfrac_avg",
    "val/ratio", "val/num_eos_tokens", "val/explained_variance",
}
GROUP_METRICS = DIAGNOSTICS | {
    "reward", "reward_std", "frac_reward_zero_std", "kl", "entropy", "completions/mean_length",
    "completions/clipped_ratio",
}
# a few prompts, short completions: each iteration takes well under a second
SMALL_RL = ("data.batch_size=4", "objective.max_new_tokens=6", "trainer.max_steps=3", "eval.enabled=false", "save.model=false")


def _rl(tmp_path, *overrides, name="job"):
    return compose(fast(*SMALL_RL, f"output_dir={tmp_path / name}", f"outputs_root={tmp_path}", *overrides))


def _history(job, key):
    client = mlflow.tracking.MlflowClient(job.tracking_uri)
    return [m.value for m in sorted(client.get_metric_history(job.run_id, key), key=lambda m: m.step)]


def _run(job):
    return mlflow.tracking.MlflowClient(job.tracking_uri).get_run(job.run_id)


# -- rollout generation ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sft_model(sentiment_sft):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(sentiment_sft.model_dir).eval(), AutoTokenizer.from_pretrained(sentiment_sft.model_dir)


PROMPTS = ["Review: The plot was", "Review: The music seemed", "Review: The cast felt", "Hi"]


def test_left_padded_batch_samples_what_each_prompt_samples_alone(sft_model):
    model, tok = sft_model
    ids, mask = left_pad(encode_prompts(tok, PROMPTS), tok.pad_token_id)
    assert mask[-1].tolist()[:-3] == [0] * (ids.size(1) - 3)  # "Hi" is left-padded
    kw = dict(eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, max_new_tokens=16, greedy=True)
    batch = sample(model, ids, mask, **kw)
    for i, p in enumerate(PROMPTS):
        alone = sample(model, *left_pad(encode_prompts(tok, [p]), tok.pad_token_id), **kw)
        n = int(alone.response_mask.sum())
        assert batch.response_ids[i, :n].tolist() == alone.response_ids[0, :n].tolist(), p
    # the KV cache changes speed, not tokens
    no_cache = sample(model, ids, mask, use_cache=False, **kw)
    assert torch.equal(no_cache.response_ids, batch.response_ids)


def test_responses_stop_at_eos_and_are_padded_after_it(sft_model):
    model, tok = sft_model
    ids, mask = left_pad(encode_prompts(tok, PROMPTS * 8), tok.pad_token_id)
    r = sample(model, ids, mask, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, max_new_tokens=40, seed=3)
    assert r.has_eos.float().mean() > 0.5  # the SFT model ends its reviews
    for row, m, eos in zip(r.response_ids.tolist(), r.response_mask.tolist(), r.has_eos.tolist()):
        n = sum(m)
        assert m == [True] * n + [False] * (len(m) - n)  # right-padded mask
        if eos:
            assert row[n - 1] == tok.eos_token_id and tok.eos_token_id not in row[: n - 1]
            assert row[n:] == [tok.pad_token_id] * (len(row) - n)
        else:
            assert n == len(row) == 40
    # same seed, same samples; evaluation's text generation is this sampler, decoded
    again = sample(model, ids, mask, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, max_new_tokens=40, seed=3)
    assert torch.equal(again.response_ids, r.response_ids)
    texts = decode_responses(tok, r)
    assert all(tok.eos_token not in t and tok.pad_token not in t for t in texts)
    assert generate(model, tok, PROMPTS, greedy=True, max_new_tokens=16) == decode_responses(
        tok, sample(model, *left_pad(encode_prompts(tok, PROMPTS), tok.pad_token_id), eos_id=tok.eos_token_id,
                    pad_id=tok.pad_token_id, max_new_tokens=16, greedy=True))


def test_training_logprobs_equal_the_samplers_temperature_scaled_logprobs(sft_model):
    """Details 2 and 3: a forward over left-padded prompt + response (position ids from the mask,
    logits / temperature) gives the log-probs of the distribution the tokens were sampled from."""
    from alignx.objectives.online import OnlineObjective

    model, tok = sft_model
    ids, mask = left_pad(encode_prompts(tok, PROMPTS), tok.pad_token_id)
    temperature = 0.7
    torch.manual_seed(0)
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=temperature, top_k=None,
                         max_new_tokens=10, output_scores=True, return_dict_in_generate=True,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    response = out.sequences[:, ids.size(1):]
    from alignx.generation import Rollout
    from alignx.ops.rl import truncate_after_eos

    response, rmask, has_eos = truncate_after_eos(response, tok.eos_token_id, tok.pad_token_id)
    rollout = Rollout(ids, mask, response, rmask, has_eos)
    # the sampler's own distribution at each step: processed scores = logits / temperature
    sampler_lp = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1)
    expected = sampler_lp.gather(-1, response.unsqueeze(-1)).squeeze(-1) * rmask
    probe = OnlineObjective.__new__(OnlineObjective)
    probe.temperature = temperature
    got = OnlineObjective.response_logps(probe, model, rollout)
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
    # and not the untempered distribution
    untempered = OnlineObjective.__new__(OnlineObjective)
    untempered.temperature = 1.0
    assert not torch.allclose(OnlineObjective.response_logps(untempered, model, rollout), expected, atol=1e-2)
    # positions count real tokens only (RoPE is relative, so Llama would not notice an offset; models with
    # absolute position embeddings would)
    assert position_ids(mask)[-1].tolist()[-3:] == [0, 1, 2] and position_ids(mask)[-1, 0] == 0


def test_token_values_read_the_head_at_every_position_and_match_the_pooled_score():
    cfg = compose(fast())
    model, tok = build_llama(cfg.model)
    rm = add_reward_head(model, tok).eval()
    ids, mask = left_pad(encode_prompts(tok, ["a b", "hello there"]), tok.pad_token_id)
    values = token_values(rm, ids, mask)
    assert values.shape == ids.shape
    # the classifier's own output is the value at the last token (no right padding here)
    assert torch.allclose(rm(input_ids=ids, attention_mask=mask).logits.squeeze(-1), values[:, -1], atol=1e-5)


# -- training loop, metrics, tables ---------------------------------------------------------------
def test_ppo_logs_every_reference_metric_each_step_and_rollout_tables(tmp_path):
    job = train(_rl(tmp_path, "objective=ppo", "objective.epochs=2", "objective.mini_batch_size=2",
                    "objective.log_samples_every_n_steps=2", "objective.adaptive_kl=true"))
    run = _run(job)
    assert run.info.status == "FINISHED" and run.data.tags["alignx.objective"] == "ppo"
    for key in PPO_METRICS | {"completions/mean_length", "objective/kl_coef", "time/generation_s"}:
        assert len(_history(job, key)) == 3, key  # one value per iteration
    # first iteration: the policy *is* the reference, and it has not been updated yet when sampling
    assert _history(job, "objective/kl")[0] == pytest.approx(0.0, abs=1e-5)
    # per-token entropy summed over the completion: between 0 and length * log(vocab)
    assert 0 < _history(job, "objective/entropy")[0] < 6 * torch.log(torch.tensor(259.0)).item()
    # the first minibatch is scored before any update by the weights that produced old_logp: the two
    # forwards differ only in batch composition, so in fp32 the gap is rounding noise
    assert all(0 <= m < 1e-4 for m in _history(job, "policy/logprob_mismatch"))
    assert all(0 <= c <= 1 for c in _history(job, "policy/clipfrac_avg"))
    # the value head starts at 0 (reward=gold has no RM): it explains no variance of the returns at
    # first, and never more than all of it
    ev = _history(job, "val/explained_variance")
    assert ev[0] == pytest.approx(0.0, abs=1e-6) and all(v <= 1 for v in ev)
    # rlhf_reward = scores + non_score_reward (the KL penalty)
    for s, n, r in zip(*(_history(job, k) for k in ("objective/scores", "objective/non_score_reward", "objective/rlhf_reward"))):
        assert r == pytest.approx(s + n, abs=1e-5)
    # the adaptive controller moved beta away from its initial value (KL far below target 6 -> beta shrinks)
    betas = _history(job, "objective/kl_coef")
    assert betas[0] == pytest.approx(0.05) and betas[-1] < betas[0]
    # 4 rollouts, 2 epochs x 2 minibatches = 4 optimizer steps per iteration, yet global steps count iterations
    client = mlflow.tracking.MlflowClient(job.tracking_uri)
    assert sorted(m.step for m in client.get_metric_history(job.run_id, "objective/scores")) == [1, 2, 3]
    tables = [a.path for a in client.list_artifacts(job.run_id, "samples/rollouts")]
    assert tables == ["samples/rollouts/step-000001.json", "samples/rollouts/step-000003.json"]
    import json

    table = json.loads(open(client.download_artifacts(job.run_id, tables[0], str(tmp_path))).read())
    assert table["columns"][:3] == ["prompt", "completion", "reward"] and len(table["data"]) == 4
    assert all(row[0].startswith("Review: The ") for row in table["data"])


def test_ppo_value_model_starts_from_the_reward_model_or_a_zero_head(tmp_path):
    from alignx.objectives.base import JobContext
    from alignx.objectives.ppo import PPO
    from alignx.registry import load_plugins

    cfg = compose(fast())
    model, tok = build_llama(cfg.model)
    rm = add_reward_head(build_llama(cfg.model)[0], tok).eval()
    save_pretrained_atomic(tmp_path / "rm", rm, tok)
    registry = load_plugins()

    def value_model(*overrides):
        c = _rl(tmp_path, "objective=ppo", *overrides)
        ppo = PPO(build_llama(c.model)[0], tok, c.objective, optimizer=torch.optim.SGD)
        ppo.attach(JobContext(c, registry, [{"input_ids": [1, 70], "prompt": "x"}], []))
        return ppo.value_model

    zero = value_model()  # reward=gold has no RM: zero-initialised head on a copy of the policy
    ids, mask = left_pad(encode_prompts(tok, ["a b c"]), tok.pad_token_id)
    assert torch.count_nonzero(token_values(zero, ids, mask)) == 0
    from_rm = value_model("reward=rm", f"reward.path={tmp_path / 'rm'}")
    assert torch.allclose(token_values(from_rm, ids, mask), token_values(rm, ids, mask), atol=1e-6)
    with pytest.raises(ConfigError, match="value_model=reward needs exactly one reward model"):
        value_model("objective.value_model=reward")


@pytest.mark.parametrize("objective", ["grpo", "rloo"])
def test_group_objectives_log_their_metrics_and_use_plugin_rewards(tmp_path, objective):
    require_example_plugin()
    job = train(_rl(tmp_path, f"objective={objective}", "objective.group_size=3",
                    "+reward.components.brevity.weight=0.5"))
    assert _run(job).info.status == "FINISHED"
    for key in GROUP_METRICS | {"objective/kl", "objective/scores", "loss/policy_avg"}:
        assert len(_history(job, key)) == 3, key
    assert _history(job, "kl")[0] == pytest.approx(0.0, abs=1e-5)
    # reward is the weighted sum, scored on 4 prompts x 3 completions
    rewards = _history(job, "reward")
    assert all(0 <= r <= 1.5 for r in rewards)
    # one update per iteration (epochs 1, one minibatch): the ratio is 1 up to rounding, nothing is clipped
    assert all(0 <= m < 1e-4 for m in _history(job, "policy/logprob_mismatch"))
    assert _history(job, "policy/clipfrac_avg") == [0.0, 0.0, 0.0]
    assert all(0 < h < 6 * torch.log(torch.tensor(259.0)).item() for h in _history(job, "objective/entropy"))


def test_rloo_defaults_to_the_papers_sequence_loss_and_keeps_the_token_mean_variant(tmp_path):
    """objective=rloo's loss is the paper's sequence-level REINFORCE: on one rollout, its parameter
    gradient is |y| times that of the token-mean variant (loss_normalization=grpo), on-policy."""
    from alignx.objectives.base import JobContext
    from alignx.objectives.grpo import RLOO
    from alignx.registry import load_plugins

    assert compose(fast("objective=rloo")).objective.loss_normalization == "sequence"
    registry = load_plugins()

    def rloo(*overrides):
        c = _rl(tmp_path, "objective=rloo", "objective.group_size=2", "objective.max_new_tokens=5", *overrides)
        model, tok = build_llama(c.model)  # seeded by model.init_seed: both objectives get the same weights
        obj = RLOO(model.eval(), tok, c.objective, optimizer=torch.optim.SGD)  # eval: as training_step
        ids = encode_prompts(tok, ["Review: The plot was", "Review: The cast felt"])
        obj.attach(JobContext(c, registry, [{"input_ids": i, "prompt": p, "reward_prompt": p} for i, p in zip(ids, PROMPTS)], []))
        return obj

    seq, tok_mean = rloo(), rloo("objective.loss_normalization=grpo")
    exp = seq.make_experience(0)
    seq.compute_advantages(exp)
    # the gold scorer gives an untrained model's gibberish the same score, so every advantage is 0:
    # set one by hand (the advantages are tested in test_losses_policy_gradient.py; this is the loss)
    row = 1
    exp.data["advantages"] = torch.tensor([0.0, 1.5, 0.0, 0.0])
    length = int(exp.mask[row].sum())
    assert length > 1  # the two losses coincide on a one-token completion
    grads = []
    for obj in (seq, tok_mean):
        obj.model.zero_grad()
        loss, stats = obj.minibatch_loss(exp, torch.tensor([row]))
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in obj.model.parameters() if p.grad is not None]))
        assert float(stats["policy/clipfrac_avg"]) == 0.0
    assert grads[0].abs().max() > 0
    # equal up to fp32 rounding (entries reach ~8; the largest difference seen is ~4e-6)
    assert torch.allclose(grads[0], length * grads[1], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(grads[0], grads[1], rtol=1e-2, atol=1e-3)  # and so not the same gradient


def test_lora_ppo_uses_the_disabled_adapter_as_reference_and_trains_a_lora_value_model(tmp_path):
    from peft import PeftModel

    job = train(_rl(tmp_path, "objective=ppo", "adapter=lora", "trainer.max_steps=2", "eval.enabled=true",
                    "save.model=true"))
    assert _run(job).info.status == "FINISHED"
    assert _history(job, "objective/kl")[0] == pytest.approx(0.0, abs=1e-5)
    assert "eval/kl_to_reference" in job.metrics
    assert (job.model_dir / "adapter_config.json").is_file()
    assert PeftModel  # imported: the value model is wrapped the same way (checked via the run finishing)


# -- exact resume -----------------------------------------------------------------------------------
def _digest(path):
    state = load_checkpoint(path)["state_dict"]
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].float().numpy().tobytes())
    return h.hexdigest(), state


@pytest.mark.parametrize("objective", ["ppo", "grpo"])
def test_resumed_run_continues_the_same_trajectory(tmp_path, objective):
    extra = ["objective.adaptive_kl=true", "objective.mini_batch_size=2"] if objective == "ppo" else ["objective.group_size=2"]
    common = [f"objective={objective}", "trainer.max_steps=4", "checkpoint.every_n_steps=2", "scheduler=linear",
              "scheduler.num_warmup_steps=1", *extra]
    full = train(_rl(tmp_path, *common, name="full"))
    ckpt = full.output_dir / "checkpoints" / "step-000002.ckpt"
    assert ckpt.is_file() and (full.output_dir / "checkpoints" / "last.ckpt").is_file()
    resumed = train(_rl(tmp_path, *common, f"resume={ckpt}", name="resumed"))
    assert _run(resumed).data.tags["alignx.resumed_from"] == str(ckpt)
    # the same weights (policy and value model), optimizer moments and LR schedule at the end
    full_digest, full_state = _digest(full.output_dir / "checkpoints" / "step-000004.ckpt")
    res_digest, res_state = _digest(resumed.output_dir / "checkpoints" / "step-000004.ckpt")
    assert full_state.keys() == res_state.keys()
    assert full_digest == res_digest
    keys = ["objective/scores", "objective/kl", "completions/mean_length", "lr"] + (
        ["objective/kl_coef", "loss/value_avg"] if objective == "ppo" else ["reward_std"])
    for key in keys:
        assert _history(resumed, key) == _history(full, key)[2:], key
    if objective == "ppo":  # the adaptive KL controller's state came back too
        c_full = load_checkpoint(full.output_dir / "checkpoints" / "step-000004.ckpt")
        c_res = load_checkpoint(resumed.output_dir / "checkpoints" / "step-000004.ckpt")
        assert c_full["alignx_kl_controller"] == c_res["alignx_kl_controller"]
        assert c_full["alignx_kl_controller"]["value"] != 0.05


# -- bad input ----------------------------------------------------------------------------------------
def test_an_infinite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    """A reward model whose scores are finite but astronomically large makes PPO's value loss
    overflow to inf: the job stops naming the loss, the step's update is never saved, the run is
    FAILED, and the last checkpoint still holds the good weights of the previous step."""
    cfg = compose(fast())
    model, tok = build_llama(cfg.model)
    rm = add_reward_head(model, tok).eval()
    with torch.no_grad():
        rm.score.weight.mul_(1e36)
    save_pretrained_atomic(tmp_path / "huge_rm", rm, tok)

    common = ["objective=ppo", "checkpoint.every_n_steps=1", "trainer.max_steps=4"]
    good = train(_rl(tmp_path, *common, "trainer.max_steps=2", name="good"))
    last = good.output_dir / "checkpoints" / "last.ckpt"
    before, _ = _digest(last)
    # continue the same job from its last checkpoint, now scored by the exploding reward model
    with pytest.raises(TrainingDiverged, match=r"the ppo loss is not finite in training step 3; training stopped\. "
                                               r"No update of this step was saved"):
        train(_rl(tmp_path, *common, f"resume={last}", "reward=rm", f"reward.path={tmp_path / 'huge_rm'}",
                  "objective.value_model=policy", "output_dir=" + str(good.output_dir)))
    after, state = _digest(last)
    assert after == before  # not overwritten
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    failed = mlflow.tracking.MlflowClient(good.tracking_uri).search_runs(
        [_run(good).info.experiment_id], filter_string="tags.`alignx.resumed_from` != ''")
    assert [r.info.status for r in failed] == ["FAILED"]


def test_diverged_weights_stop_training_with_a_message(tmp_path):
    # lr=1e30: the first updates blow the weights up; whichever check trips first names the step
    with pytest.raises(TrainingDiverged, match=r"not finite (in|after the updates of) training step \d+; training stopped"):
        train(_rl(tmp_path, "objective=grpo", "optim.lr=1e30", "trainer.max_steps=8"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["objective=ppo", "+objective.gama=0.9"], r"unknown key 'objective.gama'. Did you mean 'objective.gamma'"),
        (["objective=grpo", "objective.group_size=1"], r"group_size must be >= 2 for objective=grpo"),
        (["objective=grpo", "objective.loss_normalization=dapo"],
         r"loss_normalization='dapo' is not valid for objective=grpo. Valid: grpo, bnpo, dr_grpo$"),
        (["objective=grpo", "objective.loss_normalization=sequence"], r"Valid: grpo, bnpo, dr_grpo$"),
        (["objective=rloo", "objective.loss_normalization=token"], r"for objective=rloo. Valid: sequence, grpo, bnpo, dr_grpo$"),
        (["objective=ppo", "objective.kl_estimator=k2"], r"Valid: k1, k3"),
        (["objective=ppo", "trainer.max_steps=-1", "trainer.max_epochs=1"], r"set trainer.max_steps to a positive number"),
        (["objective=rloo", "objective.precompute_ref_logps=true"], r"precompute_ref_logps is not possible for objective=rloo"),
        (["objective=ppo", "resume=/nonexistent/run"], r"resume=/nonexistent/run: no checkpoint at"),
        (["objective=grpo", "objective.scale_rewards=mad"], r"scale_rewards='mad' is not valid. Valid: std, batch, none$"),
        (["objective=gspo", "objective.importance_sampling_level=seq"],
         r"importance_sampling_level='seq' is not valid. Valid: token, sequence$"),
        (["objective=dapo", "objective.overlong_buffer_len=7"], r"overlong_buffer_len must be in \[0, objective.max_new_tokens=6\]"),
        (["objective=dapo", "objective.dynamic_sampling_rounds=-1"], r"dynamic_sampling_rounds must be >= 0"),
        (["objective=dapo", "objective.clip_range_high=-0.1"], r"clip_range_high must be >= 0 or null"),
        (["objective=reinforce_pp", "+objective.scale_rewards=batch"], r"unknown key 'objective.scale_rewards'"),
    ],
)
def test_bad_online_config_fails_before_any_run_naming_the_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train(_rl(tmp_path, *overrides))
    assert not (tmp_path / "mlflow.db").exists()  # checked before any run or output exists
    assert not (tmp_path / "job").exists()


@pytest.mark.parametrize("preset", ["rlhf_ppo", "rlhf_grpo"])
def test_rl_presets_compose_with_an_sft_model_path(preset):
    cfg = compose([f"experiment={preset}", "model.name_or_path=/some/sft/model"])
    assert cfg.objective.name == preset.split("_")[1] and cfg.model.kind == "hf"
    assert cfg.scheduler._target_.endswith("get_linear_schedule_with_warmup") and cfg.scheduler.num_warmup_steps == 0
    assert cfg.optim.eps == 1e-5 and cfg.checkpoint.every_n_steps == 10


def test_ppo_ptx_and_the_missing_eos_penalty(tmp_path):
    """PPO-ptx adds the NLL of the dataset's demonstrations; a completion cut by the length limit
    (no EOS) is scored reward.missing_eos_penalty instead of the reward."""
    import json

    job = train(_rl(tmp_path, "objective=ppo", "objective.ptx_coef=0.5", "reward.missing_eos_penalty=-1.0",
                    "objective.log_samples_every_n_steps=1", "objective.num_logged_samples=4"))
    assert _run(job).info.status == "FINISHED"
    ptx = _history(job, "loss/ptx_avg")
    assert len(ptx) == 3 and all(v > 1.0 for v in ptx)  # an untrained model's NLL per token, far above 0
    client = mlflow.tracking.MlflowClient(job.tracking_uri)
    rows = []
    for art in client.list_artifacts(job.run_id, "samples/rollouts"):
        table = json.loads(open(client.download_artifacts(job.run_id, art.path, str(tmp_path))).read())
        rows += [dict(zip(table["columns"], r)) for r in table["data"]]
    assert len(rows) == 12 and any(not r["has_eos"] for r in rows)
    assert all(r["reward"] == -1.0 for r in rows if not r["has_eos"])


# -- the GRPO family: DAPO, GSPO, REINFORCE++, scale_rewards=batch ---------------------------------
@pytest.mark.parametrize("overrides", [
    ["objective=dapo"], ["objective=gspo"], ["objective=reinforce_pp"], ["objective=grpo", "objective.scale_rewards=batch"],
])
def test_grpo_family_objectives_train_and_log_their_metrics(tmp_path, overrides):
    job = train(_rl(tmp_path, *overrides))
    assert _run(job).info.status == "FINISHED"
    for key in GROUP_METRICS | {"objective/kl", "objective/scores", "loss/policy_avg"}:
        assert len(_history(job, key)) == 3, key
    assert all(0 <= m < 1e-4 for m in _history(job, "policy/logprob_mismatch"))
    assert all(math.isfinite(v) for v in _history(job, "loss/policy_avg"))
    if overrides == ["objective=dapo"]:
        for key in ("dynamic_sampling/extra_rounds", "dynamic_sampling/dropped_groups", "objective/overlong_penalty"):
            assert len(_history(job, key)) == 3, key
        assert all(0 <= r <= 3 for r in _history(job, "dynamic_sampling/extra_rounds"))  # the preset's cap
    if overrides == ["objective=reinforce_pp"]:
        assert len(_history(job, "objective/rlhf_reward")) == 3


def test_dynamic_sampling_drops_constant_groups_and_refills_the_batch(tmp_path):
    """The gold reward scores most of an untrained model's groups all 0 (measured: 1.0, 1.0, 0.5 of
    the groups without dynamic sampling): with it, those groups are dropped and more prompts sampled
    until the batch holds data.batch_size groups whose rewards differ, or the rounds run out."""
    plain = train(_rl(tmp_path, "objective=grpo", "data.batch_size=2", name="plain"))
    job = train(_rl(tmp_path, "objective=grpo", "data.batch_size=2", "objective.dynamic_sampling_rounds=6", name="dyn"))
    assert max(_history(plain, "frac_reward_zero_std")) > 0  # constant groups exist without it
    rounds = _history(job, "dynamic_sampling/extra_rounds")
    dropped = _history(job, "dynamic_sampling/dropped_groups")
    filled = _history(job, "dynamic_sampling/filled_zero_std")
    assert all(0 <= r <= 6 for r in rounds) and max(rounds) > 0 and max(dropped) > 0
    # the trained batch: every group whose rewards all equal is one the rounds could not replace
    assert _history(job, "frac_reward_zero_std") == [f / 2 for f in filled]
    assert min(filled) == 0
    for r, d, f in zip(rounds, dropped, filled):
        # every sampled group (2 per round) was either dropped or kept, and at least 2 - f were kept
        assert d + (2 - f) <= 2 * (1 + r)
        if r > 0:
            assert d > 0  # extra rounds only when something was dropped


def test_overlong_shaping_adds_the_length_penalty_to_the_reward(tmp_path):
    """overlong_buffer_len = max_new_tokens = 6, factor 1: the penalty is -|y| / 6 for every completion,
    so its batch mean is -mean_length / 6 and the reward learnt from is the gold reward plus it."""
    job = train(_rl(tmp_path, "objective=grpo", "objective.overlong_buffer_len=6"))
    lengths = _history(job, "completions/mean_length")
    penalty = _history(job, "objective/overlong_penalty")
    assert penalty == pytest.approx([-n / 6 for n in lengths], abs=1e-6)
    gold = _history(job, "reward/gold")
    assert _history(job, "reward") == pytest.approx([g + p for g, p in zip(gold, penalty)], abs=1e-6)


# -- proofs: each member of the family raises the gold reward on builtin sentiment ----------------
PROOF = ["trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "scheduler=linear",
         "scheduler.num_warmup_steps=0", "eval.num_prompts=64", "objective.log_samples_every_n_steps=0",
         "dataset=sentiment", "trainer.max_steps=20", "optim.lr=3e-4", "data.batch_size=16",
         "objective.mini_batch_size=16"]


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["dapo", "gspo", "reinforce_pp"])
def test_grpo_family_from_sft_raises_gold_reward_on_sentiment(sentiment_sft, tmp_path, objective):
    """20 iterations of each preset from the session's SFT model (held-out sampled gold 0.412,
    greedy 0.530), evaluated on the same 64 held-out prompts with the same sampling seed.

    Measured with one intra-op thread, seeds 0 / 1 / 2, held-out sampled gold reward (greedy):
    dapo 0.827 / 0.633 / 0.711 (0.982 / 0.784 / 0.881), gspo 0.696 / 0.662 / 0.716 (0.982 / 0.982 /
    0.973), reinforce_pp 0.740 / 0.675 / 0.719 (0.982 / 0.881 / 0.982); KL to the SFT model 6-21.
    Smallest gain +0.22 against the 0.1 required (greedy: +0.25 against 0.15). Seed 0 with two
    intra-op threads: dapo 0.832, gspo 0.696, reinforce_pp 0.740 (greedy 0.982 each).
    """
    job = train(compose([*PROOF, "model=hf", f"model.name_or_path={sentiment_sft.model_dir}", f"objective={objective}",
                         f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}"]))
    before, after = sentiment_sft.metrics, job.metrics
    rewards = _history(job, "reward")
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5  # the rollouts it trains on get better ...
    # ... and so do its samples on held-out prompts, at a KL from the SFT model
    assert after["eval/gold_reward_sampled"] > before["eval/gold_reward_sampled"] + 0.1
    assert after["eval/gold_reward_greedy"] > before["eval/gold_reward_greedy"] + 0.15
    assert after["eval/kl_to_reference"] > 0.05
