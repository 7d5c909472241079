"""The weak-to-strong recipe (experiment=weak_to_strong) measured in miniature on builtin ``sentiment`` pairs.

The strong side is pretrained, as in Burns et al.: the session's quickstart model (``sentiment_sft``:
300 SFT steps of model=tiny on sentiment, the recipe of the preset's ``pretrain`` stage) stands in
for that stage, and the ceiling and the student are reward heads on it. The weak supervisor is a
1-layer width-16 model from random weights. Everything else is the preset's recipe at CPU scale.

History (seeds 0 / 1 / 2, 512 held-out pairs, weak: 500 gold pairs, 150 steps at lr 3e-3):

* strong from random weights (2-layer width-64, 150 steps at lr 3e-3, alpha 0.75): the student
  matched its supervisor and no more, PGR -0.09 / -0.25 / -0.41. A model with random weights has
  no latent knowledge for weak labels to elicit, and copies its supervisor's systematic mistakes.
* strong pretrained (the quickstart model), alpha 0.75, on the 2000 weak-labelled pairs, seed 0
  unless three values are given:
  150 steps at lr 3e-4: weak 0.703, student 0.699, ceiling 0.897, PGR -0.02 (the student fits the
  weak labels, mistakes included); 50 steps at lr 3e-4: student 0.734, ceiling 0.826, PGR +0.25, but
  PGR -0.11 / -0.14 at seeds 1 / 2; 150 steps at lr 1e-4: student 0.727,
  ceiling 0.875, PGR +0.14; 100 steps at lr 1e-4, alpha 0: student 0.719 / 0.772 / 0.742, PGR
  +0.13 / +0.75 / -0.17; the weak model at 30 steps instead of 150 (seeds 0 / 1): weak 0.695 / 0.725,
  PGR +0.09 / -0.18 (alpha 0) and -0.15 / -0.07 (alpha 0.75). The student stayed within 0.04 of its supervisor at every
  setting, on either side: PGR > 0 is not robust at this scale, and the test asserts what was.
"""

import json

import pytest

from alignx.config import compose
from alignx.pipeline import run_pipeline
from alignx.tasks import BUILTIN_TASKS


def _size(width: int, layers: int) -> list[str]:
    return [f"model.hidden_size={width}", f"model.intermediate_size={2 * width}", f"model.num_hidden_layers={layers}",
            "model.num_attention_heads=2", "model.num_key_value_heads=2"]


#: the preset's weak stage (stages[1]) with a smaller model at its own steps and lr
WEAK_STAGE = "pipeline.stages.1.overrides=[" + ",".join(
    f"'{o}'" for o in ["model=tiny", *_size(16, 1), "optim.lr=3e-3", "trainer.max_steps=150",
                       "dataset.n_train=${pipeline.weak_rows}"]) + "]"
#: 500 gold pairs for the weak model, 2000 labelled by it; the strong stages 100 steps of 16 pairs at lr 1e-4
#: (a pretrained model, stopped early), alpha 0.75; every model's accuracy on the same 512 held-out pairs
PROOF = ["experiment=weak_to_strong", WEAK_STAGE, "pipeline.weak_rows=500", "dataset.n_train=2500",
         "pipeline.alpha=0.75", "trainer.max_steps=100", "optim.lr=1e-4", "dataset.n_test=512", "eval.num_prompts=512",
         "tracking=none", "trainer.enable_progress_bar=false"]


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_a_pretrained_strong_student_on_weak_labels_stays_at_its_supervisors_level(tmp_path, sentiment_sft):
    """Measured (CPU, one thread, 512 held-out pairs), seeds 0 / 1 / 2:
    weak 0.703 / 0.748 / 0.760, student 0.740 / 0.738 / 0.758, ceiling 0.822 / 0.779 / 0.863,
    PGR +0.31 / -0.31 / -0.02; the weak labels agree with gold on 74.6 / 76.0 / 74.8 % of the 2000 rows.
    Pretraining raised the ceiling (0.770 / 0.756 / 0.793 from random weights) but not the student:
    PGR > 0 at one seed of three, so it is not asserted. Bars and margins: student > 0.70 (margin
    0.038, seed 1); |student - weak| < 0.06 (largest 0.037, seed 0: margin 0.023); ceiling > 0.75
    (margin 0.029, seed 1); ceiling - student > 0.02 (smallest 0.041, seed 1: margin 0.021).
    About 85-89 s of CPU in the job's process beyond the shared quickstart model (measured on the
    loaded 2-core machine; 4-6 min wall there).
    """
    ov = [*PROOF, f"pipeline.strong_start={sentiment_sft.model_dir}", f"output_dir={tmp_path / 'job'}",
          f"outputs_root={tmp_path}"]
    cfg = compose(ov)
    # the session's quickstart model is what the preset's pretrain stage makes: it stands in for the stage
    assert cfg.pipeline.stages[0].name == "pretrain"
    del cfg.pipeline.stages[0]
    job = run_pipeline(cfg, ov)
    assert set(job.stages) == {"weak", "labels", "ceiling", "student"}
    weak, student, ceiling = (job.metrics[f"{s}/eval/rm_accuracy"] for s in ("weak", "student", "ceiling"))
    print(f"weak {weak:.4f} student {student:.4f} ceiling {ceiling:.4f} PGR {job.metrics['eval/pgr']:.3f}")
    # all three on the same 512 held-out pairs: the weak stage's test split is the file the strong ones read
    test = _read(job.stages["labels"].output_dir / "test.jsonl")
    assert test == BUILTIN_TASKS["sentiment"]().rows("pairs", "test", 512, seed=0)
    assert student > 0.70  # it learned from the weak labels (chance is 0.5)
    assert abs(student - weak) < 0.06  # ... and lands at its supervisor's level
    assert ceiling > 0.75  # the pretrained strong model on gold labels
    assert ceiling - student > 0.02  # ... which the weak labels did not get the student to
    assert job.metrics["eval/pgr"] == pytest.approx((student - weak) / (ceiling - weak))
