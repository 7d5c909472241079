"""Closed-set benchmarks (registry kind ``benchmark``, ``eval.benchmarks``): multiple-choice scoring
against log-likelihoods computed by hand from the model, exact-match normalisation, the builtin
arithmetic benchmarks, a job and a real ``alignx eval`` run with a benchmark and a judge."""

from __future__ import annotations

import re

import pytest
import torch
from omegaconf import OmegaConf

from alignx.config import compose
from alignx.errors import PluginError
from alignx.evaluation.benchmarks import (
    ARITHMETIC_ITEMS,
    Benchmark,
    BenchmarkItem,
    arithmetic_choice,
    arithmetic_exact,
    benchmark_metrics,
    check_benchmark_names,
    choice_correct,
    continuation_logps,
    exact_match,
    normalize_answer,
    score_benchmark,
)
from alignx.generation import generate
from alignx.models.loading import build_hf, build_llama, save_pretrained_atomic
from alignx.registry import Registry, load_plugins
from alignx.tasks import split_of
from alignx.tasks.arithmetic import parse_problem
from alignx.train import train
from conftest import fast, run_cli


@pytest.fixture(scope="module")
def tiny():
    """A tiny random policy and its byte tokenizer (FAST dimensions)."""
    return build_llama(compose(fast()).model)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny):
    """(policy dir, judge dir): the tiny policy and another tiny model (init_seed=1) as the judge, saved."""
    root = tmp_path_factory.mktemp("benchmarks")
    policy = save_pretrained_atomic(root / "policy", *tiny)
    judge = save_pretrained_atomic(root / "judge", *build_llama(compose(fast("model.init_seed=1")).model))
    return policy, judge


def test_normalize_answer_and_exact_match():
    assert normalize_answer("  The Answer:  82. ") == "the answer: 82"
    assert normalize_answer("\uff18\uff12") == "82"  # full-width digits (NFKC)
    assert normalize_answer("-5") == "-5"  # a sign is not edge punctuation
    assert exact_match(" 82\n", "82") and exact_match("Paris!", "paris") and exact_match("a\t b", "A B")
    assert not exact_match("820", "82") and not exact_match("8 2", "82")


def test_choice_correct_needs_a_strict_maximum():
    assert choice_correct([-1.0, -2.0, -3.0], 0)
    assert not choice_correct([-1.0, -2.0, -3.0], 1)
    assert not choice_correct([-1.0, -1.0, -3.0], 0)  # a tie at the top is wrong


def test_multiple_choice_scores_are_the_models_log_likelihoods(tiny):
    """continuation_logps equals the summed log-softmax of the choice tokens (and EOS) from a plain
    forward pass; an item is right exactly when its answer is the most likely choice (summed, or
    mean per token with length_normalised); benchmark_metrics reports the accuracy of a
    benchmark a plugin registered."""
    model, tok = tiny
    prompt, choices = "What is 2+3?", (" 5", " 6", " 55", " 105")

    def by_hand(choice: str) -> tuple[float, int]:
        ctx = tok(prompt)["input_ids"]
        ids = ctx + tok(choice, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
        return sum(float(logp[i - 1, ids[i]]) for i in range(len(ctx), len(ids))), len(ids) - len(ctx)

    expected = [by_hand(c) for c in choices]
    sums, counts = continuation_logps(model, tok, [prompt] * 4, list(choices), eos=True, batch_size=3)
    assert sums.tolist() == pytest.approx([s for s, _ in expected], abs=1e-4)
    assert counts.tolist() == [n for _, n in expected] == [3, 3, 4, 5]

    best_sum = max(range(4), key=lambda i: expected[i][0])
    best_mean = max(range(4), key=lambda i: expected[i][0] / expected[i][1])
    items = [BenchmarkItem(prompt, choices[i], choices) for i in range(4)]
    assert score_benchmark(Benchmark("choice", items, eos=True), model, tok) == [i == best_sum for i in range(4)]
    assert score_benchmark(Benchmark("choice", items, length_normalised=True, eos=True), model, tok) == \
        [i == best_mean for i in range(4)]

    registry = Registry()  # what a plugin's register(registry) does
    registry.register("benchmark", "two_plus_three", lambda: Benchmark("choice", items, eos=True))
    eval_cfg = OmegaConf.merge(compose(fast()).eval, {"benchmarks": ["two_plus_three"], "benchmark_limit": 2})
    metrics = benchmark_metrics(eval_cfg, registry, model, tok)
    # the first two items: right iff the most likely choice is the first or the second
    assert metrics["eval/benchmark/two_plus_three/accuracy"] == (best_sum < 2) / 2
    assert set(metrics) == {"eval/benchmark/two_plus_three/accuracy", "eval/benchmark/two_plus_three/accuracy_stderr"}
    with pytest.raises(ValueError, match="is not one of its choices"):
        Benchmark("choice", [BenchmarkItem(prompt, " 7", choices)])


def test_exact_match_scores_the_greedy_completion(tiny):
    model, tok = tiny
    prompts = ["What is 2+3?", "What is 9-4?"]
    greedy = generate(model, tok, prompts, greedy=True, max_new_tokens=6)
    items = [BenchmarkItem(prompts[0], f"  {greedy[0]} "), BenchmarkItem(prompts[1], greedy[1] + "x")]
    assert score_benchmark(Benchmark("exact", items), model, tok, max_new_tokens=6) == [True, False]


def test_builtin_arithmetic_benchmarks_ask_held_out_problems():
    mc, em = arithmetic_choice(), arithmetic_exact()
    assert mc.mode == "choice" and mc.eos and em.mode == "exact"
    assert len(mc.items) == len(em.items) == ARITHMETIC_ITEMS
    assert [i.prompt for i in mc.items] == [i.prompt for i in em.items]
    for item in mc.items:
        assert split_of(item.prompt) == "test"
        assert item.answer == f" {parse_problem(item.prompt)}"
        assert len(set(item.choices)) == 4 and item.answer in item.choices
    assert all(i.answer == str(parse_problem(i.prompt)) for i in em.items)
    assert arithmetic_choice() == mc  # the same questions and option order every time
    # the answer is not always in the same position
    assert len({i.choices.index(i.answer) for i in mc.items}) == 4


def test_benchmarks_are_a_registry_kind_listed_by_alignx_plugins(capsys):
    from alignx.cli import main

    registry = load_plugins()
    assert registry.names("benchmark")[:2] == ["arithmetic_choice", "arithmetic_exact"]
    with pytest.raises(PluginError, match=r"unknown benchmark 'arith'. Valid benchmarks: arithmetic_choice, arithmetic_exact"):
        check_benchmark_names({"benchmarks": ["arithmetic_exact", "arith"]}, registry)
    assert main(["plugins", "--kind", "benchmark"]) == 0
    out = capsys.readouterr().out
    assert "arithmetic_choice" in out and "arithmetic_exact" in out


def test_a_job_reports_its_benchmarks(tmp_path):
    job = train(compose(fast("eval.benchmarks=[arithmetic_exact,arithmetic_choice]", "eval.benchmark_limit=4",
                             "tracking=none", "save.model=false", f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}")))
    for name in ("arithmetic_exact", "arithmetic_choice"):
        assert job.metrics[f"eval/benchmark/{name}/accuracy"] in (0.0, 0.25, 0.5, 0.75, 1.0)


@pytest.mark.parametrize("override, message", [
    ("eval.benchmarks=[arithmetic_choise]", "unknown benchmark 'arithmetic_choise'"),
    ("eval.judge={tmp}/no_judge", "no_judge' does not exist"),
    ("eval.prm={tmp}/no_prm", "no_prm' does not exist: give the directory of a saved objective=prm model"),
])
def test_a_training_job_refuses_a_bad_benchmark_or_judge_before_training(tmp_path, override, message):
    """Found before any training, not by the end-of-job evaluation: nothing is written."""
    from alignx.errors import AlignxError

    out = tmp_path / "job"
    with pytest.raises(AlignxError, match=re.escape(message)):
        train(compose(fast(override.format(tmp=tmp_path), f"output_dir={out}", f"outputs_root={tmp_path / 'root'}")))
    assert not out.exists() and not (tmp_path / "root" / "mlflow.db").exists()


def test_alignx_eval_bad_benchmark_or_judge_is_one_clear_error(saved, tmp_path, capsys):
    from alignx.cli import main

    policy, _ = saved
    assert main(["eval", str(policy), "eval.benchmarks=[arithmetic_choise]", "--no-track", f"outputs_root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark 'arithmetic_choise'" in err and "arithmetic_choice, arithmetic_exact" in err
    assert main(["eval", str(policy), f"eval.judge={tmp_path / 'no_judge'}", "--no-track", f"outputs_root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "eval.judge=" in err and "no_judge' does not exist" in err and "Traceback" not in err


def test_alignx_eval_runs_benchmarks_and_a_judge(saved, tmp_path):
    """The console script on a saved tiny model: each benchmark's accuracy equals scoring the saved
    model here, the judge's three rates are reported, and all of it is logged to MLflow."""
    policy, judge = saved
    scratch = tmp_path / "tmp"  # the process's temporary directory: eval cleans up what it puts there
    scratch.mkdir()
    result = run_cli(["eval", str(policy), "dataset=arithmetic", "eval.benchmarks=[arithmetic_choice,arithmetic_exact]",
                      "eval.benchmark_limit=12", f"eval.judge={judge}", "eval.num_prompts=6", "eval.max_new_tokens=4",
                      f"outputs_root={tmp_path}"], cwd=tmp_path, env={"TMPDIR": str(scratch)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert not any(p.name.startswith("alignx-eval-") for p in scratch.iterdir()), "alignx eval left its scratch dir behind"
    shown = {k: float(v) for k, v in re.findall(r"│ (eval/\S+)\s+│\s+(-?[\d.]+|nan) │", result.stdout)}
    model, tok = build_hf({"name_or_path": str(policy), "dtype": None})
    for name, bench in (("arithmetic_choice", arithmetic_choice()), ("arithmetic_exact", arithmetic_exact())):
        right = score_benchmark(Benchmark(bench.mode, bench.items[:12], eos=bench.eos), model, tok, max_new_tokens=4)
        assert shown[f"eval/benchmark/{name}/accuracy"] == pytest.approx(sum(right) / 12, abs=1e-4), name
    win, tie, bias = (shown[f"eval/judge_{k}"] for k in ("win_rate", "tie_rate", "position_bias"))
    assert 0.0 <= bias <= tie <= 1.0 and 0.0 <= win <= 1.0  # a position-biased prompt is a tie
    # six prompts: every rate is a multiple of 1/6 (win rate: of 1/12)
    assert round(tie * 6, 3) == round(tie * 6) and round(win * 12, 3) == round(win * 12)

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.`alignx.eval` = 'true'")
    assert len(runs) == 1
    logged = runs[0].data.metrics
    assert logged["eval/benchmark/arithmetic_choice/accuracy"] == pytest.approx(shown["eval/benchmark/arithmetic_choice/accuracy"], abs=1e-4)
    assert logged["eval/judge_position_bias"] == pytest.approx(bias, abs=1e-4)
