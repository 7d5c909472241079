"""Knowledge distillation: the generalised JSD against hand-computed values, masks, the chunked path,
the teacher's loading errors, and short real jobs of objective=distill and objective=gkd."""

from __future__ import annotations

import math

import pytest
import torch

from alignx.config import compose
from alignx.errors import ConfigError
from alignx.losses.distill import distill_loss, distill_loss_from_hidden, generalized_jsd
from alignx.models.loading import build_llama, save_pretrained_atomic
from alignx.objectives.distill import Distill, load_teacher
from alignx.ops.logprobs import IGNORE_INDEX
from alignx.train import train
from conftest import fast

# Teacher T = (1/2, 1/2), student S = (1/4, 3/4), given as log-probabilities (softmax(log p) = p).
T = [math.log(0.5), math.log(0.5)]
S = [math.log(0.25), math.log(0.75)]
# By hand:
#   KL(T || S) = 1/2 ln(0.5/0.25) + 1/2 ln(0.5/0.75) = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3)
FORWARD = 0.5 * math.log(4 / 3)
#   KL(S || T) = 1/4 ln(0.25/0.5) + 3/4 ln(0.75/0.5) = -1/4 ln 2 + 3/4 ln(3/2)
REVERSE = -0.25 * math.log(2) + 0.75 * math.log(1.5)
#   beta = 1/2: M = (3/8, 5/8);
#   KL(T || M) = 1/2 ln(0.5/0.375) + 1/2 ln(0.5/0.625) = 1/2 ln(4/3) + 1/2 ln(4/5) = 1/2 ln(16/15)
#   KL(S || M) = 1/4 ln(0.25/0.375) + 3/4 ln(0.75/0.625) = 1/4 ln(2/3) + 3/4 ln(6/5)
#   JSD = 1/2 KL(T || M) + 1/2 KL(S || M)
JSD_HALF = 0.5 * (0.5 * math.log(16 / 15)) + 0.5 * (0.25 * math.log(2 / 3) + 0.75 * math.log(6 / 5))


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


def test_forward_kl_reverse_kl_and_jsd_at_half_by_hand():
    s, t = _t([S]), _t([T])
    assert generalized_jsd(s, t, 0.0).item() == pytest.approx(FORWARD, rel=1e-12)
    assert generalized_jsd(s, t, 1.0).item() == pytest.approx(REVERSE, rel=1e-12)
    assert generalized_jsd(s, t, 0.5).item() == pytest.approx(JSD_HALF, rel=1e-12)
    assert FORWARD == pytest.approx(0.14384104, rel=1e-7) and JSD_HALF == pytest.approx(0.03382208, rel=1e-6)


def test_jsd_at_beta_quarter_by_hand():
    # M = 1/4 T + 3/4 S = (5/16, 11/16)
    m = (5 / 16, 11 / 16)
    kl_tm = 0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])
    kl_sm = 0.25 * math.log(0.25 / m[0]) + 0.75 * math.log(0.75 / m[1])
    assert generalized_jsd(_t([S]), _t([T]), 0.25).item() == pytest.approx(0.25 * kl_tm + 0.75 * kl_sm, rel=1e-12)


def test_both_limits_of_the_normalised_jsd():
    """The endpoints are the limits of the mixture divergence normalised by its weight."""
    s, t = _t([S]), _t([T])
    eps = 1e-6
    assert (generalized_jsd(s, t, eps) / eps).item() == pytest.approx(FORWARD, rel=1e-4)
    assert (generalized_jsd(s, t, 1 - eps) / eps).item() == pytest.approx(REVERSE, rel=1e-4)
    # the unnormalised divergence goes to 0 at both ends (the loss is not rescaled)
    assert generalized_jsd(s, t, eps).item() < 1e-6 and generalized_jsd(s, t, 1 - eps).item() < 1e-6


def test_temperature_divides_both_logits():
    # at tau = 2, softmax(log p / 2) is proportional to sqrt(p): T stays uniform, S = (1, sqrt 3) / (1 + sqrt 3)
    r3 = math.sqrt(3)
    s2 = (1 / (1 + r3), r3 / (1 + r3))
    expected = 0.5 * math.log(0.5 / s2[0]) + 0.5 * math.log(0.5 / s2[1])
    assert generalized_jsd(_t([S]), _t([T]), 0.0, temperature=2.0).item() == pytest.approx(expected, rel=1e-12)


def test_equal_distributions_give_zero_loss_and_zero_gradient():
    logits = torch.randn(5, 7, dtype=torch.float64)
    for beta in (0.0, 0.3, 1.0):
        s = logits.clone().requires_grad_(True)
        d = generalized_jsd(s, logits, beta).sum()
        d.backward()
        assert abs(d.item()) < 1e-12 and s.grad.abs().max().item() < 1e-12


def test_gradient_flows_only_to_the_student():
    s = _t([S]).requires_grad_(True)
    t = _t([T]).requires_grad_(True)
    generalized_jsd(s, t.detach(), 0.5).sum().backward()
    assert s.grad is not None and t.grad is None


def test_beta_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="beta must be in"):
        generalized_jsd(_t([S]), _t([T]), 1.5)


def test_distill_loss_masks_prompt_and_padding_and_averages_over_tokens():
    """Logits at position t are compared where the label at t + 1 is set; other positions may hold anything."""
    junk = [50.0, -50.0]
    # row 0: positions 0..3, labels at 2 and 3 -> logits at 1 and 2 count; row 1: label at 1 -> logits at 0
    student = _t([[junk, S, S, junk], [S, junk, junk, junk]])
    teacher = _t([[T, T, T, T], [T, T, T, T]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 5, 6], [IGNORE_INDEX, 7, IGNORE_INDEX, IGNORE_INDEX]])
    loss, n = distill_loss(student, teacher, labels, beta=0.0)
    assert int(n) == 3 and loss.item() == pytest.approx(FORWARD, rel=1e-12)
    # one position where the student equals the teacher: the mean is over the 3 tokens
    student[0, 1] = _t(T)
    loss, n = distill_loss(student, teacher, labels, beta=1.0)
    assert loss.item() == pytest.approx(2 * REVERSE / 3, rel=1e-12)
    none, n0 = distill_loss(student, teacher, torch.full_like(labels, IGNORE_INDEX), beta=0.5)
    assert int(n0) == 0 and none.item() == 0.0


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_chunked_from_hidden_equals_logits_path_in_value_and_gradient(beta):
    g = torch.Generator().manual_seed(0)
    b, length, h_s, h_t, v = 2, 6, 5, 3, 11
    hs = torch.randn(b, length, h_s, generator=g, dtype=torch.float64)
    ht = torch.randn(b, length, h_t, generator=g, dtype=torch.float64)
    ws = torch.randn(v, h_s, generator=g, dtype=torch.float64)
    bs = torch.randn(v, generator=g, dtype=torch.float64)
    wt = torch.randn(v, h_t, generator=g, dtype=torch.float64)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 1, 2, 3, IGNORE_INDEX], [IGNORE_INDEX, 4, 5, 6, 7, 8]])

    def grads(fn):
        h, w = hs.clone().requires_grad_(True), ws.clone().requires_grad_(True)
        loss, n = fn(h, w)
        loss.backward()
        return loss.detach(), n, h.grad, w.grad

    plain = grads(lambda h, w: distill_loss(h @ w.T + bs, ht @ wt.T, labels, beta=beta, temperature=0.7))
    for chunk in (None, 1, 3):
        chunked = grads(lambda h, w: distill_loss_from_hidden(h, w, bs, ht, wt, None, labels, beta=beta, temperature=0.7,
                                                              chunk_size=chunk))
        assert int(chunked[1]) == int(plain[1]) == 8
        assert chunked[0].item() == pytest.approx(plain[0].item(), rel=1e-10)
        assert torch.allclose(chunked[2], plain[2], atol=1e-12) and torch.allclose(chunked[3], plain[3], atol=1e-12)


# -- the teacher -------------------------------------------------------------------------------------


def _save_tiny(path, *overrides: str, tokenizer=None):
    """A FAST-sized random model (``overrides`` on its model node) saved with its tokenizer to ``path``."""
    cfg = compose(fast(*overrides))
    model, tok = build_llama(cfg.model, tokenizer)
    save_pretrained_atomic(path, model, tok)
    return path


def test_a_missing_teacher_is_named_before_any_work(tmp_path):
    cfg = compose(fast("objective=distill"))
    with pytest.raises(ConfigError, match=r"objective.teacher must be set for objective=distill"):
        Distill.check_config(cfg)
    cfg = compose(fast("objective=gkd", f"objective.teacher={tmp_path / 'nowhere'}"))
    with pytest.raises(ConfigError, match=r"objective.teacher='.*nowhere' is not a directory"):
        Distill.check_config(cfg)


def test_a_missing_teacher_stops_the_job(tmp_path):
    with pytest.raises(ConfigError, match=r"objective.teacher must be set"):
        train(compose(fast("objective=distill", "tracking=none", f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}")))


def test_an_unloadable_or_incompatible_teacher_is_named(tmp_path):
    from alignx.models.tokenizer import build_byte_tokenizer

    student_tok = build_byte_tokenizer()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"objective.teacher='.*empty' could not be loaded"):
        load_teacher(str(tmp_path / "empty"), student_tok)
    other = build_byte_tokenizer()
    other.add_tokens(["<extra>"])
    _save_tiny(tmp_path / "other", tokenizer=other)
    with pytest.raises(ConfigError, match=r"objective.teacher='.*other' has another tokenizer than the student \(260 vs 259"):
        load_teacher(str(tmp_path / "other"), student_tok)
    teacher = load_teacher(str(_save_tiny(tmp_path / "ok", "model.init_seed=1")), student_tok)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_bad_values_are_named(tmp_path):
    teacher = _save_tiny(tmp_path / "t")
    for override, message in [("objective.source=web", r"objective.source='web' is not valid. Valid: dataset, teacher"),
                               ("objective.beta=1.5", r"objective.beta must be in \[0, 1\]"),
                               ("objective.on_policy_fraction=-0.1", r"objective.on_policy_fraction must be in \[0, 1\]"),
                               ("objective.temperature=0", r"objective.temperature must be > 0"),
                               ("data.completion_only_loss=false", r"data.completion_only_loss must be true")]:
        with pytest.raises(ConfigError, match=message):
            Distill.check_config(compose(fast("objective=distill", f"objective.teacher={teacher}", override)))


# -- real jobs ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny teacher with peaked distributions: 6 SFT steps at a high learning rate on sentiment."""
    root = tmp_path_factory.mktemp("teacher")
    job = train(compose(fast("optim.lr=1e-2", "model.init_seed=1", "tracking=none", f"output_dir={root / 'job'}",
                             f"outputs_root={root}")))
    return job.model_dir


def _job(tmp_path, name, *overrides):
    return train(compose(fast(*overrides, "tracking=none", f"output_dir={tmp_path / name}", f"outputs_root={tmp_path}")))


def test_off_policy_distillation_moves_the_student_towards_the_teacher(teacher_dir, tmp_path):
    """Forward KL on the dataset's completions: the held-out KL to the teacher falls below the untrained student's."""
    common = ["objective=distill", f"objective.teacher={teacher_dir}"]
    start = _job(tmp_path, "start", *common, "optim.lr=1e-12")  # lr must be > 0: this one moves nothing
    job = _job(tmp_path, "kd", *common, "optim.lr=3e-3")
    m = job.metrics
    print("start", start.metrics["val/kl_to_teacher"], "after", m["val/kl_to_teacher"])
    assert m["val/kl_to_teacher"] < 0.8 * start.metrics["val/kl_to_teacher"]
    assert m["val/loss"] == pytest.approx(m["val/kl_to_teacher"])  # beta=0, temperature 1: the loss is that KL
    assert m["train/on_policy"] == 0.0 and m["train/tokens"] > 0
    assert (job.model_dir / "config.json").is_file() and "eval/gold_reward_greedy" in m


def test_gkd_on_policy_trains_on_student_samples_with_chunked_logprobs(teacher_dir, tmp_path):
    job = _job(tmp_path, "gkd", "objective=gkd", f"objective.teacher={teacher_dir}", "objective.on_policy_fraction=1",
               "objective.max_new_tokens=8", "model.logprob_chunk_size=16", "optim.lr=3e-3")
    m = job.metrics
    assert m["train/on_policy"] == 1.0
    # beta = 1/2: the validation loss is the symmetric JSD, which lies in (0, ln 2] for distinct distributions
    assert 0.0 < m["val/loss"] <= math.log(2) and m["val/kl_to_teacher"] > 0.0
    assert math.isfinite(m["train/loss"]) and m["train/tokens"] > 0


def test_sequence_level_kd_from_teacher_samples(teacher_dir, tmp_path):
    job = _job(tmp_path, "seqkd", "objective=distill", f"objective.teacher={teacher_dir}", "objective.source=teacher",
               "objective.max_new_tokens=8")
    m = job.metrics
    assert m["train/on_policy"] == 0.0 and 0 < m["train/tokens"] <= 16 * 8  # completions the teacher sampled, <= 8 tokens each
    assert math.isfinite(m["val/kl_to_teacher"])


def test_on_policy_draws_are_seeded_by_step_and_near_the_fraction(teacher_dir):
    cfg = compose(fast("objective=gkd", f"objective.teacher={teacher_dir}", "objective.on_policy_fraction=0.3"))
    model, tok = build_llama(cfg.model)
    objective = Distill(model, tok, cfg.objective, optimizer=torch.optim.SGD)
    draws = [objective.on_policy_draw(s) for s in range(400)]
    assert draws == [objective.on_policy_draw(s) for s in range(400)]
    assert 0.22 < sum(draws) / 400 < 0.38


def test_chunked_and_padding_free_divergence_equal_the_plain_one_on_left_padded_samples(teacher_dir):
    """The objective's three forward paths agree on a batch of student samples (left-padded prompts
    with position ids, right-padded responses) and on dataset rows, in value and gradient."""
    from alignx.models.packing import enable_padding_free

    cfg = compose(fast("objective=gkd", f"objective.teacher={teacher_dir}", "objective.max_new_tokens=6"))
    model, tok = build_llama(cfg.model)
    objective = Distill(model, tok, cfg.objective, optimizer=torch.optim.SGD)
    rows = [tok("The film was")["input_ids"] + tok(" great.")["input_ids"][1:] + [tok.eos_token_id],
            tok("A")["input_ids"] + tok(" bad one.")["input_ids"][1:] + [tok.eos_token_id]]
    from alignx.data.batching import collate_sft

    prompt_lens = [len(tok("The film was")["input_ids"]), len(tok("A")["input_ids"])]
    items = [{"input_ids": r, "labels": [IGNORE_INDEX] * p + r[p:]} for r, p in zip(rows, prompt_lens)]
    batch = collate_sft(items, tok.pad_token_id)
    sampled = objective.sampled_inputs(objective.model, batch, seed=3)
    assert (sampled["attention_mask"][:, 0] == 0).any()  # the shorter prompt is left-padded
    for inputs in (batch, sampled):
        results = []
        for chunk, padding_free in ((None, False), (5, False), (None, True)):
            objective.logprob_chunk_size, objective.padding_free = chunk, padding_free
            if padding_free:
                enable_padding_free(objective.model)
            objective.model.zero_grad()
            loss, n = objective.divergence(inputs, 0.5, 0.8)
            loss.backward()
            results.append((loss.item(), int(n), objective.model.model.embed_tokens.weight.grad.clone()))
        (plain, n0, g0), *others = results
        for value, n, grad in others:
            assert n == n0 and value == pytest.approx(plain, rel=1e-4)
            assert torch.allclose(grad, g0, atol=1e-6, rtol=1e-3)
