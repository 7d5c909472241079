"""The weak-to-strong recipe (experiment=weak_to_strong) measured in miniature on builtin ``sentiment`` pairs.

The preset's models (tiny supervising small) cost minutes of CPU per stage, so this keeps the recipe
and shrinks both sides: the weak supervisor is a 1-layer width-16 model, the strong one a 2-layer
width-64 model (both built in code from random weights); about 30 s of one core for the whole job.

What it measures is an honest negative: at this scale the strong student trained on weak labels
(with the auxiliary confidence loss, alpha 0.75) learns its supervisor's preferences, and no more.
It lands within about 0.015 of the weak model's held-out accuracy, while the same strong model on
gold labels does better: PGR is about 0 or below (-0.09 / -0.25 / -0.41 at seeds 0 / 1 / 2). Burns
et al.'s students are pretrained models whose latent knowledge the weak labels elicit; a model with
random weights has none, and copies its supervisor's systematic mistakes. So the test asserts what
was measured robustly (the student learned from the labels and sits at its supervisor's level; the
ceiling is well above chance) rather than a PGR > 0 it did not show.
"""

import pytest

from alignx.config import compose
from alignx.pipeline import run_pipeline


def _size(width: int, layers: int) -> list[str]:
    return [f"model.hidden_size={width}", f"model.intermediate_size={2 * width}", f"model.num_hidden_layers={layers}",
            "model.num_attention_heads=2", "model.num_key_value_heads=2"]


#: the weak stage of the preset with a smaller model (the strong one is the job's `model`)
WEAK_STAGE = "pipeline.stages.0.overrides=[" + ",".join(
    f"'{o}'" for o in ["model=tiny", *_size(16, 1), "dataset.n_train=${pipeline.weak_rows}"]) + "]"
#: 500 gold pairs for the weak model, 2000 labelled by it; 150 steps of 16 pairs at lr 3e-3 per model;
#: every model's accuracy on the same 512 held-out pairs
PROOF = ["experiment=weak_to_strong", "model=tiny", *_size(64, 2), WEAK_STAGE, "pipeline.weak_rows=500",
         "dataset.n_train=2500", "pipeline.alpha=0.75", "trainer.max_steps=150", "optim.lr=3e-3",
         "dataset.n_test=512", "eval.num_prompts=512", "tracking=none", "trainer.enable_progress_bar=false"]


@pytest.mark.slow
def test_a_strong_student_on_weak_labels_reaches_its_weak_supervisor(tmp_path):
    """Measured (CPU, one thread, 512 held-out pairs), seeds 0 / 1 / 2:
    weak 0.703 / 0.748 / 0.760, student 0.697 / 0.746 / 0.746, ceiling 0.770 / 0.756 / 0.793,
    PGR -0.09 / -0.25 / -0.41; the weak labels agree with gold on 74.6 / 76.0 / 74.8 % of the 2000
    rows. Bars and margins: student > 0.65 (margin 0.047, seed 0); |student - weak| < 0.04 (largest
    0.014, seed 2: margin 0.026); ceiling > 0.72 (margin 0.036, seed 1). The ceiling was above the
    student at every seed, but by 0.010 (5 pairs) at seed 1: too close to assert. About 31 s of CPU in the job's process (4-5 min wall on the loaded 2-core
    machine).
    """
    ov = [*PROOF, f"output_dir={tmp_path / 'job'}", f"outputs_root={tmp_path}"]
    job = run_pipeline(compose(ov), ov)
    weak, student, ceiling = (job.metrics[f"{s}/eval/rm_accuracy"] for s in ("weak", "student", "ceiling"))
    print(f"weak {weak:.4f} student {student:.4f} ceiling {ceiling:.4f} PGR {job.metrics['eval/pgr']:.3f}")
    assert student > 0.65  # it learned from the weak labels (chance is 0.5)
    assert abs(student - weak) < 0.04  # ... and lands at its supervisor's level
    assert ceiling > 0.72  # the same strong model on gold labels
    if ceiling != weak:
        assert job.metrics["eval/pgr"] == pytest.approx((student - weak) / (ceiling - weak))
