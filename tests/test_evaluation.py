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
    # an objective without a reference policy has no win rate against one
    sft = train(compose(fast("tracking=none", f"output_dir={tmp_path / 'sft'}", f"outputs_root={tmp_path}")))
    assert "eval/win_rate" not in sft.metrics and "eval/gold_reward_sampled" in sft.metrics
