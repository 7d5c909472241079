"""Pairwise judge evaluation (eval.judge): verdict aggregation on hand-made verdicts, the judge's
choice against its own log-likelihoods, and the errors that name the key."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from alignx.config import compose
from alignx.errors import ConfigError
from alignx.evaluation.judge import (
    FIRST,
    SECOND,
    TIE,
    PairwiseJudge,
    aggregate_verdicts,
    check_judge,
    check_template,
    choice,
)
from alignx.models.loading import build_llama, save_pretrained_atomic
from conftest import fast


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    """A tiny random causal LM saved as a judge (the byte tokenizer with it)."""
    cfg = compose(fast())
    model, tok = build_llama(cfg.model)
    return save_pretrained_atomic(tmp_path_factory.mktemp("judge") / "judge", model, tok)


def test_aggregate_verdicts_on_hand_made_verdicts():
    # (policy shown first, policy shown second) per prompt:
    #   win, win, loss, same position twice (x2: biased ties), an exact tie in one order (tie, not biased)
    first = [FIRST, FIRST, SECOND, FIRST, SECOND, TIE]
    second = [SECOND, SECOND, FIRST, FIRST, SECOND, SECOND]
    out = aggregate_verdicts(first, second)
    # 2 wins, 1 loss, 3 ties: (2 + 3/2) / 6; ties 3/6; position-biased 2/6
    assert out == pytest.approx({"eval/judge_win_rate": 3.5 / 6, "eval/judge_tie_rate": 0.5,
                                 "eval/judge_position_bias": 2 / 6})
    # a judge that always answers "first": every prompt is a biased tie, the win rate is parity
    assert aggregate_verdicts([FIRST] * 4, [FIRST] * 4) == {
        "eval/judge_win_rate": 0.5, "eval/judge_tie_rate": 1.0, "eval/judge_position_bias": 1.0}
    # a consistent judge that always prefers the policy
    assert aggregate_verdicts([FIRST] * 3, [SECOND] * 3) == {
        "eval/judge_win_rate": 1.0, "eval/judge_tie_rate": 0.0, "eval/judge_position_bias": 0.0}
    with pytest.raises(ValueError, match="one verdict per order"):
        aggregate_verdicts([FIRST], [])
    with pytest.raises(ValueError, match="a verdict is one of"):
        aggregate_verdicts(["A"], [FIRST])


def test_choice_picks_the_more_likely_label():
    assert choice(-1.0, -2.0) == FIRST
    assert choice(-3.0, -0.5) == SECOND
    assert choice(-1.0, -1.0) == TIE


def test_the_judge_chooses_by_its_labels_log_likelihoods(judge_dir):
    """The judge's choice in each order equals the comparison of log p(label | text) computed here
    from a plain forward pass of the same model; compare() aggregates the two orders."""
    cfg = compose(fast())
    judge = PairwiseJudge.load(str(judge_dir), cfg.eval.judge_template, list(cfg.eval.judge_labels))
    prompts, policy, baseline = ["What is 12+30?", "What is 40-13?"], [" 42", " 27 or so"], [" 41", " 27"]

    def label_logp(text: str, label: str) -> float:
        tok = judge.tokenizer
        ctx = tok(text)["input_ids"]
        ids = ctx + tok(label, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(judge.model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
        return sum(float(logp[i - 1, ids[i]]) for i in range(len(ctx), len(ids)))

    def by_hand(first, second):
        out = []
        for p, a, b in zip(prompts, first, second):
            text = judge.text(p, a, b)
            out.append(choice(label_logp(text, " A"), label_logp(text, " B")))
        return out

    assert judge.text(prompts[0], policy[0], baseline[0]).startswith("Question: What is 12+30?\nAnswer A: 42\nAnswer B: 41\n")
    assert judge.choose(prompts, policy, baseline) == by_hand(policy, baseline)
    assert judge.choose(prompts, baseline, policy) == by_hand(baseline, policy)
    assert judge.compare(prompts, policy, baseline) == aggregate_verdicts(by_hand(policy, baseline), by_hand(baseline, policy))


def test_judge_errors_name_the_key(tmp_path, judge_dir):
    cfg = compose(fast(f"eval.judge={tmp_path / 'nope'}"))
    with pytest.raises(ConfigError, match=r"eval.judge='.*nope' does not exist"):
        check_judge(cfg.eval)
    with pytest.raises(ConfigError, match=r"eval.judge='.*' has no config.json"):
        check_judge(OmegaConf.merge(cfg.eval, {"judge": str(tmp_path)}))
    with pytest.raises(ConfigError, match=r"eval.judge='.*nope' does not exist"):
        PairwiseJudge.load(str(tmp_path / "nope"), cfg.eval.judge_template, ["A", "B"])
    with pytest.raises(ConfigError, match=r"eval.judge_template lacks the placeholder\(s\) \{second\}"):
        check_template("{prompt} {first}")
    with pytest.raises(ConfigError, match="eval.judge_template must use only the placeholders"):
        check_template("{prompt} {first} {second} {other}")
    with pytest.raises(ConfigError, match="eval.judge_labels must be two different labels"):
        PairwiseJudge.load(str(judge_dir), cfg.eval.judge_template, ["A", "A"])
    check_judge(OmegaConf.merge(cfg.eval, {"judge": str(judge_dir)}))  # a saved model passes


def test_a_judge_text_longer_than_the_model_keeps_its_end(judge_dir):
    """Past the judge's position limit, the label is scored after the text's last tokens."""
    from alignx.evaluation.benchmarks import continuation_logps

    cfg = compose(fast())
    judge = PairwiseJudge.load(str(judge_dir), cfg.eval.judge_template, list(cfg.eval.judge_labels))
    tok, text = judge.tokenizer, "a long question " * 4 + "The better answer is"
    ids = tok(text)["input_ids"] + tok(" B", add_special_tokens=False)["input_ids"]
    kept = ids[-8:]
    with torch.no_grad():
        logp = torch.log_softmax(judge.model(input_ids=torch.tensor([kept])).logits[0].double(), -1)
    n_label = len(tok(" B", add_special_tokens=False)["input_ids"])
    expected = sum(float(logp[i - 1, kept[i]]) for i in range(8 - n_label, 8))
    sums, counts = continuation_logps(judge.model, tok, [text], [" B"], max_positions=8)
    assert sums.tolist() == pytest.approx([expected], abs=1e-4) and counts.tolist() == [n_label]
