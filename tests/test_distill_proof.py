"""Proof in miniature that distillation transfers a teacher: a small student trained from scratch by
token-level KD (objective=distill: forward KL to the teacher on the dataset's completions) from the
quickstart SFT model ends closer to that teacher than the same student trained by SFT on the same
rows for the same number of steps."""

from __future__ import annotations

import time

import pytest
import torch

from alignx.config import compose
from alignx.data.batching import collate_sft
from alignx.data.tokenize import encode_sft_row
from alignx.losses.distill import distill_loss
from alignx.models.loading import build_hf
from alignx.tasks import BUILTIN_TASKS
from alignx.train import train

#: the student: a 2-layer, 96-wide Llama (about a tenth of model=tiny's parameters) from random weights,
#: 150 steps of 32 rows of builtin sentiment at lr 3e-3, by SFT or by KD
STUDENT = ["dataset=sentiment", "model=tiny", "model.hidden_size=96", "model.intermediate_size=256",
           "model.num_hidden_layers=2", "model.num_attention_heads=2", "model.num_key_value_heads=2",
           "trainer.max_steps=150", "optim.lr=3e-3", "eval.num_prompts=64", "tracking=none",
           "trainer.enable_progress_bar=false"]


@torch.no_grad()
def kl_to_teacher(student_dir, teacher_dir, n: int = 64) -> float:
    """Forward KL(teacher || student) per completion token, in nats, on ``n`` held-out sentiment
    demonstrations (the test split): both models read the same prompt and completion, and their
    next-token distributions are compared at every completion position (temperature 1)."""
    student, tok = build_hf({"name_or_path": str(student_dir)})
    teacher, _ = build_hf({"name_or_path": str(teacher_dir)})
    rows = BUILTIN_TASKS["sentiment"]().rows("sft", "test", n, seed=0)
    items = [encode_sft_row(r, tok, max_length=128, truncation="truncate_prompt", completion_only=True,
                            chat_template=False)[0] for r in rows]
    batch = collate_sft(items, tok.pad_token_id)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    loss, _ = distill_loss(student.eval()(**inputs).logits, teacher.eval()(**inputs).logits, batch["labels"], beta=0.0)
    return float(loss)


@pytest.mark.slow
def test_distilled_student_is_closer_to_the_teacher_than_sft_on_the_same_data(sentiment_sft, tmp_path):
    """KD against SFT of the same student, same rows, same steps; the teacher is the quickstart SFT model.

    Measured (``seed=<s>`` on the teacher fixture and both student jobs; CPU, one thread), seeds
    0/1/2: forward KL to the teacher per held-out completion token KD 0.633 / 0.816 / 0.715 against
    SFT 0.850 / 0.895 / 0.836 (KD lower by 0.217 / 0.079 / 0.121; 0.04 required: margin +0.039, at
    seed 1). What does **not** hold at this budget, so it is not asserted: the Monte-Carlo
    KL(student || teacher) on the students' own samples of 64 held-out prompts, KD 13.5 / 23.3 / 18.6
    against SFT 18.5 / 22.6 / 22.3 nats (lower at seeds 0 and 2, not at 1), and the gold reward:
    greedy KD 0.304 / 0.344 / 0.341 against SFT 0.417 / 0.225 / 0.133, sampled 0.045 / 0.032 / 0.041
    against 0.047 / 0.012 / 0.032. Neither student is fluent after 150 steps (the teacher's sampled
    gold is about 0.41), so gold mostly measures noise here; on-policy GKD from the random student
    was worse still (seed 0: sampled gold 0.003, MC KL 27.4), as the GKD paper's advice to start
    on-policy distillation from a student that can already produce text suggests. The advantage is
    one of speed: the teacher is itself SFT on these rows, so with twice the budget (300 steps, both
    students fluent) the two end about equally close, forward KL KD 0.107 / 0.080 / 0.054 against SFT
    0.083 / 0.133 / 0.125 (reversed at seed 0), and gold stays mixed (sampled KD 0.313 / 0.288 / 0.246
    against SFT 0.251 / 0.306 / 0.223; greedy 0.432 / 0.643 / 0.543 against 0.514 / 0.500 / 0.333).
    A teacher better than the data (SFT then DPO) is what would make gold differ. Cost: 38 s of CPU
    time for both student jobs and the KL measurement (one thread), on top of the shared fixture.
    """
    teacher = sentiment_sft.model_dir
    cpu = time.process_time()
    sft = train(compose([*STUDENT, "objective=sft", f"output_dir={tmp_path / 'sft'}", f"outputs_root={tmp_path}"]))
    kd = train(compose([*STUDENT, "objective=distill", f"objective.teacher={teacher}", f"output_dir={tmp_path / 'kd'}",
                        f"outputs_root={tmp_path}"]))
    kl_sft, kl_kd = kl_to_teacher(sft.model_dir, teacher), kl_to_teacher(kd.model_dir, teacher)
    print(f"forward KL to teacher per token: KD {kl_kd:.3f} SFT {kl_sft:.3f}; gold greedy KD "
          f"{kd.metrics['eval/gold_reward_greedy']:.3f} SFT {sft.metrics['eval/gold_reward_greedy']:.3f}; sampled KD "
          f"{kd.metrics['eval/gold_reward_sampled']:.3f} SFT {sft.metrics['eval/gold_reward_sampled']:.3f}; "
          f"val/kl_to_teacher {kd.metrics['val/kl_to_teacher']:.3f}; CPU {time.process_time() - cpu:.0f} s")
    assert kl_kd < kl_sft - 0.04
    # the objective's own held-out measure (validation split) agrees with the test-split measure
    assert abs(kd.metrics["val/kl_to_teacher"] - kl_kd) < 0.1


#: the student is the quickstart SFT model; 60 steps of 32 sentiment rows at lr 3e-4, by KD or by more SFT
FROM_SFT = ["dataset=sentiment", "trainer.max_steps=60", "optim.lr=3e-4", "tracking=none", "trainer.enable_progress_bar=false"]


@pytest.mark.slow
def test_distilling_a_better_teacher_beats_sft_on_the_same_rows(sentiment_sft, sentiment_dpo, tmp_path):
    """A teacher better than the data: the DPO model (``sentiment_dpo``: SFT then 150 DPO steps). The
    quickstart SFT model continues for 60 steps by token-level KD from it (forward KL on the dataset's
    completions), by on-policy GKD from it (``objective=gkd``: half the batches sampled by the student,
    generalised JSD at beta 0.5) or by SFT on the same rows, then each is compared with the teacher.

    Measured (``seed=<s>`` on the SFT and DPO models and both jobs; CPU, one thread), seeds 0/1/2:
    forward KL to the teacher per held-out completion token KD 0.020 / 0.039 / 0.024 against SFT
    0.540 / 0.378 / 0.507 (ratio 0.04 / 0.10 / 0.05; below 0.25 required); greedy gold KD 0.906 /
    0.900 / 0.610 against SFT 0.530 / 0.500 / 0.322 (gain +0.376 / +0.400 / +0.288; 0.2 required:
    margin +0.088, at seed 2; the teacher's 0.914 / 0.881 / 0.585). Not asserted: sampled gold, KD
    0.386 / 0.438 / 0.338 against SFT 0.353 / 0.492 / 0.319 (-0.054 at seed 1). With the teacher's
    own samples as completions (``objective.source=teacher``) greedy gold was 0.906 / 0.911 / 0.681
    and sampled 0.446 / 0.404 / 0.333, at 55 s of CPU instead of 34 s. GKD: forward KL 0.030 / 0.045 /
    0.061 (ratio to SFT's 0.06 / 0.12 / 0.12; below 0.25 required), greedy gold 0.893 / 0.911 / 0.864
    (gain over SFT +0.363 / +0.411 / +0.542; 0.2 required: margin +0.163, at seed 0), sampled 0.427 /
    0.451 / 0.349 (-0.041 at seed 1: not asserted). Cost: about 110 s of CPU for the three jobs and
    the KL measurements (one thread), the two models being shared session fixtures.
    """
    teacher = sentiment_dpo.model_dir
    start = ["model=hf", f"model.name_or_path={sentiment_sft.model_dir}", f"outputs_root={tmp_path}"]
    sft = train(compose([*FROM_SFT, *start, "objective=sft", f"output_dir={tmp_path / 'sft'}"]))
    kd = train(compose([*FROM_SFT, *start, "objective=distill", f"objective.teacher={teacher}",
                        f"output_dir={tmp_path / 'kd'}"]))
    gkd = train(compose([*FROM_SFT, *start, "objective=gkd", f"objective.teacher={teacher}",
                         f"output_dir={tmp_path / 'gkd'}"]))
    kl_sft, kl_kd = kl_to_teacher(sft.model_dir, teacher), kl_to_teacher(kd.model_dir, teacher)
    kl_gkd = kl_to_teacher(gkd.model_dir, teacher)
    print(f"forward KL to teacher per token: KD {kl_kd:.3f} SFT {kl_sft:.3f}; gold greedy KD "
          f"{kd.metrics['eval/gold_reward_greedy']:.3f} SFT {sft.metrics['eval/gold_reward_greedy']:.3f} teacher "
          f"{sentiment_dpo.metrics['eval/gold_reward_greedy']:.3f}; sampled KD {kd.metrics['eval/gold_reward_sampled']:.3f} "
          f"SFT {sft.metrics['eval/gold_reward_sampled']:.3f}; GKD KL {kl_gkd:.3f} greedy "
          f"{gkd.metrics['eval/gold_reward_greedy']:.3f} sampled {gkd.metrics['eval/gold_reward_sampled']:.3f}")
    assert kl_kd < 0.25 * kl_sft
    assert kd.metrics["eval/gold_reward_greedy"] > sft.metrics["eval/gold_reward_greedy"] + 0.2
    assert kl_gkd < 0.25 * kl_sft
    assert gkd.metrics["eval/gold_reward_greedy"] > sft.metrics["eval/gold_reward_greedy"] + 0.2
