"""The evaluation suite: win rate against the reference policy, best-of-N, on hand-computed values
and through a real job."""

import pytest

from alignx.config import compose
from alignx.evaluation import best_of_n, win_rate
from alignx.train import train
from conftest import fast


def test_win_rate_counts_ties_as_half():
    # wins at 0 and 3, a tie at 1, a loss at 2: (1 + 0.5 + 0 + 1) / 4
    assert win_rate([0.9, 0.5, 0.1, 0.7], [0.2, 0.5, 0.4, 0.6]) == pytest.approx(0.625)
    assert win_rate([1.0], [1.0]) == 0.5
    with pytest.raises(ValueError, match="one reference score per policy score"):
        win_rate([1.0, 2.0], [1.0])


def test_best_of_n_keeps_the_top_score_of_each_prompts_group():
    assert best_of_n([0.1, 0.9, 0.3, 0.2, 0.0, 0.4], 3) == [0.9, 0.4]
    assert best_of_n([0.5, 0.6], 1) == [0.5, 0.6]
    with pytest.raises(ValueError, match="not whole groups of n=4"):
        best_of_n([0.1, 0.2, 0.3], 4)


def test_a_job_with_a_reference_reports_win_rate_and_best_of_n(tmp_path):
    job = train(compose(fast("objective=dpo", "adapter=lora", "eval.best_of_n=4", "tracking=none",
                             f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}")))
    assert 0.0 <= job.metrics["eval/win_rate"] <= 1.0
    assert 0.0 <= job.metrics["eval/gold_reward_best_of_4"] <= 1.0


def test_alignx_eval_reproduces_a_known_models_numbers(sentiment_sft, sentiment_rm, tmp_path, capsys):
    """`alignx eval` on the session's SFT model reports exactly the numbers its training job
    reported (same held-out prompts, same seed); against itself as the reference every comparison
    is a tie and the KL is 0. On the reward model: its held-out accuracy. (The CLI entry point runs
    in-process here; test_cli covers the console script itself.)"""
    import re

    from alignx.cli import main

    assert main(["eval", str(sentiment_sft.model_dir), "--reference", str(sentiment_sft.model_dir),
                 f"outputs_root={tmp_path}"]) == 0
    shown = dict(re.findall(r"│ (eval/\S+)\s+│\s+(-?[\d.]+) │", capsys.readouterr().out))
    for key in ("eval/gold_reward_greedy", "eval/gold_reward_sampled", "eval/perplexity"):
        assert float(shown[key]) == pytest.approx(sentiment_sft.metrics[key], abs=1e-4), key
    assert float(shown["eval/win_rate"]) == 0.5
    assert float(shown["eval/kl_to_reference"]) == pytest.approx(0.0, abs=1e-4)
    import mlflow

    runs = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_runs(
        ["0", *[e.experiment_id for e in mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()]],
        filter_string="tags.`alignx.eval` = 'true'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"

    assert main(["eval", str(sentiment_rm.model_dir), "--no-track"]) == 0
    accuracy = float(re.search(r"│ eval/rm_accuracy\s+│\s+([\d.]+) │", capsys.readouterr().out).group(1))
    assert accuracy == pytest.approx(sentiment_rm.metrics["eval/rm_accuracy"], abs=1e-4) and accuracy > 0.7


def test_alignx_eval_of_a_missing_model_is_one_clear_error(tmp_path, capsys):
    from alignx.cli import main

    assert main(["eval", str(tmp_path / "nope"), "--no-track"]) == 2
    err = capsys.readouterr().err
    assert "alignx: error:" in err and "nope" in err and "Traceback" not in err


def test_standard_error_of_the_mean():
    from alignx.evaluation import standard_error

    # mean 2, sample variance ((1)^2 + 0 + 1^2) / 2 = 1, stderr = 1 / sqrt(3)
    assert standard_error([1.0, 2.0, 3.0]) == pytest.approx(3 ** -0.5)
    assert standard_error([0.5, 0.5]) == 0.0
    assert standard_error([1.0]) != standard_error([1.0])  # NaN: one value has no spread


def test_a_job_logs_the_standard_error_of_its_gold_reward_means(tmp_path):
    """eval/gold_reward_*_stderr: the spread of the per-prompt gold rewards in the job's own samples table."""
    from alignx.evaluation import standard_error

    job = train(compose(fast("eval.num_logged_samples=8", "tracking=none", "save.model=false",
                             f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}")))
    assert len(job.samples) == 8  # eval.num_prompts=8: every prompt's scores are in the table
    for kind in ("greedy", "sampled"):
        scores = [row[f"{kind}_reward"] for row in job.samples]
        assert job.metrics[f"eval/gold_reward_{kind}_stderr"] == pytest.approx(standard_error(scores), abs=1e-9)
        assert job.metrics[f"eval/gold_reward_{kind}"] == pytest.approx(sum(scores) / len(scores), abs=1e-9)
