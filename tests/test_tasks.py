"""Builtin synthetic tasks: row generation, splits, determinism and gold rewards (no torch)."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys

import pytest

from alignx.errors import ConfigError
from alignx.tasks import (
    BUILTIN_TASKS,
    ROW_KINDS,
    SPLITS,
    ArithmeticTask,
    FormatTask,
    SentimentTask,
    StepsTask,
    Task,
    split_of,
)
from alignx.tasks.format import FormatSpec

TASK_NAMES = sorted(BUILTIN_TASKS)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = {
    "sft": {"prompt", "completion"},
    "prompt": {"prompt"},
    "pairs": {"prompt", "chosen", "rejected"},
    "ranked": {"prompt", "completions", "ranks"},
    "unpaired": {"prompt", "completion", "label"},
    "rated": {"prompt", "completion", "rating"},
}


def _run_python(code: str, **env: str) -> str:
    """Run ``code`` in a fresh interpreter that imports this checkout's alignx."""
    path = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": path, **env},
    )
    return proc.stdout


@pytest.fixture(params=TASK_NAMES)
def task(request) -> Task:
    return BUILTIN_TASKS[request.param]()


def _gold(task: Task, rows: list[dict], column: str) -> list[float]:
    return task.gold_reward([r["prompt"] for r in rows], [r[column] for r in rows])


# -- registry ----------------------------------------------------------------------------------
def test_builtin_registry():
    assert BUILTIN_TASKS == {"sentiment": SentimentTask, "arithmetic": ArithmeticTask, "format": FormatTask, "steps": StepsTask}
    for name, cls in BUILTIN_TASKS.items():
        assert issubclass(cls, Task) and cls.name == name


def test_import_is_light():
    code = "import sys, alignx.tasks; print(sorted(m for m in ('torch', 'numpy', 'transformers') if m in sys.modules))"
    assert _run_python(code).strip() == "[]"


# -- schemas and sizes -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ROW_KINDS)
def test_row_schema(task, kind):
    rows = task.rows(kind, "train", 200, seed=1)
    assert len(rows) == 200
    for row in rows:
        assert set(row) == COLUMNS[kind]
        for key, value in row.items():
            if key == "label":
                assert type(value) is bool
            elif key == "ranks":
                assert len(value) == len(row["completions"]) and all(type(r) is int for r in value)
            elif key == "rating":  # gold reward in [0, 1]; rating_noise defaults to 0 in rows()
                assert type(value) is float and 0.0 <= value <= 1.0
            elif key == "completions":
                assert len(value) == 4 and len(set(value)) == 4
                assert all(isinstance(c, str) and c.strip() and len(c.encode()) < 40 for c in value), value
            else:
                assert isinstance(value, str) and value.strip(), (key, value)
                # byte-level tokenizer: keep sequences short
                assert len(value.encode()) < (60 if key == "prompt" else 40), (key, value)


def test_n_zero_gives_no_rows(task):
    assert task.rows("sft", "val", 0) == []


def test_sft_demonstrations_are_good():
    for cls in (ArithmeticTask, FormatTask):
        t = cls()
        rows = t.rows("sft", "train", 300, seed=3)
        assert _gold(t, rows, "completion") == [1.0] * 300


def test_sentiment_sft_mix_is_not_mostly_positive():
    t = SentimentTask()
    gold = _gold(t, t.rows("sft", "train", 2000, seed=0), "completion")
    pos = sum(g > 0.6 for g in gold) / len(gold)
    neu = sum(g == 0.5 for g in gold) / len(gold)
    neg = sum(g < 0.4 for g in gold) / len(gold)
    assert pos + neu + neg == pytest.approx(1.0)
    assert pos == pytest.approx(0.4, abs=0.05)
    assert neu == pytest.approx(0.3, abs=0.05)
    assert neg == pytest.approx(0.3, abs=0.05)


def test_sentiment_sft_mix_is_configurable():
    class PositiveOnly(SentimentTask):
        sft_mix = {"positive": 1.0}

    t = PositiveOnly()
    assert min(_gold(t, t.rows("sft", "train", 200), "completion")) > 0.6


# -- determinism -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ROW_KINDS)
def test_deterministic(task, kind):
    a = task.rows(kind, "train", 100, seed=7, label_noise=0.2)
    b = type(task)().rows(kind, "train", 100, seed=7, label_noise=0.2)
    assert a == b
    assert task.rows(kind, "train", 100, seed=8, label_noise=0.2) != a


def test_prefix_stable_in_n(task):
    assert task.rows("pairs", "train", 300, seed=2)[:50] == task.rows("pairs", "train", 50, seed=2)


def test_kinds_share_prompts(task):
    prompts = [r["prompt"] for r in task.rows("prompt", "val", 40, seed=5)]
    for kind in ("sft", "pairs", "ranked", "unpaired"):
        assert [r["prompt"] for r in task.rows(kind, "val", 40, seed=5)] == prompts


def test_deterministic_across_processes():
    code = (
        "import json; from alignx.tasks import BUILTIN_TASKS;"
        "print(json.dumps({n: c().rows('pairs', 'test', 30, seed=11, label_noise=0.25)"
        " for n, c in sorted(BUILTIN_TASKS.items())}))"
    )
    outs = [json.loads(_run_python(code, PYTHONHASHSEED=hash_seed)) for hash_seed in ("1", "2")]
    assert outs[0] == outs[1]
    here = {n: c().rows("pairs", "test", 30, seed=11, label_noise=0.25) for n, c in sorted(BUILTIN_TASKS.items())}
    assert outs[0] == here


# -- splits ------------------------------------------------------------------------------------
def test_split_of_is_stable():
    assert split_of("What is 37+45?") == split_of("What is 37+45?")
    counts = {s: 0 for s in SPLITS}
    for i in range(5000):
        counts[split_of(f"prompt {i}")] += 1
    assert counts["test"] == pytest.approx(500, abs=80)
    assert counts["val"] == pytest.approx(500, abs=80)


def test_split_prompt_sets_disjoint(task):
    sets = {s: set(task.split_prompts(s)) for s in SPLITS}
    assert all(len(sets[s]) >= 3 for s in SPLITS), {s: len(v) for s, v in sets.items()}
    assert not sets["train"] & sets["val"]
    assert not sets["train"] & sets["test"]
    assert not sets["val"] & sets["test"]
    assert sets["train"] | sets["val"] | sets["test"] == set(task.prompt_space())
    for split in SPLITS:
        for kind in ROW_KINDS:
            used = {r["prompt"] for r in task.rows(kind, split, 150, seed=4)}
            assert used <= sets[split]


def test_unique_prompts_within_split():
    for cls in (ArithmeticTask, FormatTask):
        rows = cls().rows("prompt", "train", 1000, seed=0)
        assert len({r["prompt"] for r in rows}) == 1000


def test_n_larger_than_split_raises():
    t = ArithmeticTask()
    size = len(t.split_prompts("val"))
    assert len(t.rows("prompt", "val", size)) == size
    with pytest.raises(ValueError, match=f"at most {size}"):
        t.rows("prompt", "val", size + 1)
    # sentiment repeats openings, so any n works
    assert len(SentimentTask().rows("prompt", "test", 500)) == 500


def test_format_combinations_are_balanced():
    t = FormatTask()
    pool = t.split_prompts("train")
    rows = t.rows("prompt", "train", 300, seed=0)
    specs = [FormatSpec.parse(r["prompt"]) for r in rows]
    # every combination present in the split shows up early, not just the numerous word pairs
    assert {s.active for s in specs} == {FormatSpec.parse(p).active for p in pool}
    with_case = sum(s.case is not None for s in specs) / len(specs)
    pool_case = sum(FormatSpec.parse(p).case is not None for p in pool) / len(pool)
    assert pool_case < 0.06 and with_case > 0.2


def test_format_three_constraints_option():
    class Format3(FormatTask):
        constraint_counts = (1, 2, 3)

    t = Format3()
    assert "Write 3 words in all caps ending with CAT:" in t.prompt_space()
    assert all(FormatSpec.parse(p).prompt() == p for p in random.Random(0).sample(t.prompt_space(), 2000))
    assert "Write 2 words starting with cat ending with dog containing sun:" not in t.prompt_space()
    rows = t.rows("sft", "train", 300, seed=0)
    assert max(len(FormatSpec.parse(r["prompt"]).active) for r in rows) == 3
    assert _gold(t, rows, "completion") == [1.0] * 300


# -- pairs and unpaired ------------------------------------------------------------------------
def test_pairs_chosen_beats_rejected(task):
    rows = task.rows("pairs", "train", 500, seed=0)
    chosen, rejected = _gold(task, rows, "chosen"), _gold(task, rows, "rejected")
    assert all(c > r for c, r in zip(chosen, rejected))
    assert all(row["chosen"] != row["rejected"] for row in rows)


def test_pairs_cover_quality_range(task):
    rows = task.rows("pairs", "train", 500, seed=0)
    gold = _gold(task, rows, "chosen") + _gold(task, rows, "rejected")
    assert min(gold) < 0.3 and max(gold) > 0.85


def test_pairs_label_noise(task):
    clean = task.rows("pairs", "train", 1000, seed=0)
    noisy = task.rows("pairs", "train", 1000, seed=0, label_noise=0.3)
    flipped = 0
    for c, n in zip(clean, noisy):
        # noise only swaps otherwise identical pairs
        assert (n["chosen"], n["rejected"]) in ((c["chosen"], c["rejected"]), (c["rejected"], c["chosen"]))
        flipped += n["chosen"] == c["rejected"]
    assert flipped / 1000 == pytest.approx(0.3, abs=0.05)
    gold_flipped = sum(ch < rj for ch, rj in zip(_gold(task, noisy, "chosen"), _gold(task, noisy, "rejected")))
    assert gold_flipped == flipped


def test_unpaired_labels_agree_with_gold(task):
    rows = task.rows("unpaired", "train", 1000, seed=0)
    gold = _gold(task, rows, "completion")
    assert all(row["label"] == (g >= task.good_threshold) for row, g in zip(rows, gold))
    assert sum(row["label"] for row in rows) / 1000 == pytest.approx(0.5, abs=0.06)


def test_unpaired_label_noise(task):
    clean = task.rows("unpaired", "train", 1000, seed=0)
    noisy = task.rows("unpaired", "train", 1000, seed=0, label_noise=0.3)
    assert [r["completion"] for r in clean] == [r["completion"] for r in noisy]
    flipped = sum(c["label"] != n["label"] for c, n in zip(clean, noisy))
    assert flipped / 1000 == pytest.approx(0.3, abs=0.05)


def test_ranked_rows_follow_gold(task):
    for k in (2, 4, 6):
        rows = task.rows("ranked", "train", 200, seed=0, k=k)
        for row in rows:
            gold = task.gold_reward([row["prompt"]] * k, row["completions"])
            ranks = row["ranks"]
            assert len(set(row["completions"])) == k and len(set(ranks)) > 1  # distinct, never all tied
            # dense ranks: 0 = best; equal gold <=> equal rank; better gold <=> lower rank
            assert min(ranks) == 0 and sorted(set(ranks)) == list(range(len(set(ranks))))
            for i in range(k):
                for j in range(k):
                    assert (gold[i] > gold[j] + 1e-9) == (ranks[i] < ranks[j])
    # ties occur (equal gold gets equal rank) without making every row a tie
    rows = task.rows("ranked", "train", 300, seed=0)
    assert any(len(set(r["ranks"])) < 4 for r in rows)


def test_ranked_label_noise_swaps_one_adjacent_pair(task):
    clean = task.rows("ranked", "train", 1000, seed=0)
    noisy = task.rows("ranked", "train", 1000, seed=0, label_noise=0.3)
    changed = 0
    for c, n in zip(clean, noisy):
        assert c["completions"] == n["completions"] and c["prompt"] == n["prompt"]
        if c["ranks"] != n["ranks"]:
            changed += 1
            diff = [i for i in range(4) if c["ranks"][i] != n["ranks"][i]]
            assert len(diff) == 2
            a, b = diff
            # the two swapped their ranks, and those ranks were adjacent levels
            assert (n["ranks"][a], n["ranks"][b]) == (c["ranks"][b], c["ranks"][a])
            assert abs(c["ranks"][a] - c["ranks"][b]) == 1
    assert changed / 1000 == pytest.approx(0.3, abs=0.05)


@pytest.mark.parametrize("k", [1, 0, 2.0, True, "4"])
def test_bad_k(task, k):
    with pytest.raises(ValueError, match="k .*must be an integer >= 2"):
        task.rows("ranked", "train", 3, k=k)


# -- gold rewards ------------------------------------------------------------------------------
def test_gold_in_unit_interval_on_garbage(task):
    rng = random.Random(0)
    prompts = [r["prompt"] for r in task.rows("prompt", "train", 300)]
    completions = [bytes(rng.randrange(256) for _ in range(rng.randint(0, 40))).decode("utf-8", "replace") for _ in prompts]
    gold = task.gold_reward(prompts, completions)
    assert len(gold) == len(prompts)
    assert all(isinstance(g, float) and 0.0 <= g <= 1.0 for g in gold)
    assert sum(gold) / len(gold) < 0.1  # an untrained byte model scores about nothing


def test_gold_length_mismatch_raises(task):
    prompt = task.rows("prompt", "train", 1)[0]["prompt"]
    with pytest.raises(ValueError, match="one prompt per completion"):
        task.gold_reward([prompt, prompt], [" x"])
    assert task.gold_reward([], []) == []


@pytest.mark.parametrize(
    "completion, expected",
    [
        (" great fun.", 0.9820),  # sigmoid(2 * 2)
        (" dull.", 0.1192),  # sigmoid(-2)
        (" very good.", 0.8808),  # sigmoid(2); "very" is a known neutral word
        (" long and quiet.", 0.5),  # fluent neutral
        (" great, but dull.", 0.5),  # cancels out
        (" great xq.", 0.4404),  # sigmoid(2) * 1/2 known
        (" GREAT FUN!", 0.9820),  # case-insensitive
        ("xq zz", 0.0),  # gibberish: nothing known
        ("", 0.0),
        (" 123 ...", 0.0),  # no alphabetic tokens
    ],
)
def test_sentiment_gold_values(completion, expected):
    [gold] = SentimentTask().gold_reward(["Review: The film was"], [completion])
    assert gold == pytest.approx(expected, abs=1e-4)


def test_sentiment_sigmoid_by_hand():
    [gold] = SentimentTask().gold_reward(["Review: The plot felt"], [" great fun."])
    assert gold == pytest.approx(1.0 / (1.0 + math.exp(-4.0)), abs=1e-12)


@pytest.mark.parametrize(
    "prompt, completion, expected",
    [
        ("What is 37+45?", " 82", 1.0),
        ("What is 37+45?", " 85", 0.5),
        ("What is 37+45?", " 182", 2 / 3),  # right-aligned: 8 and 2 match, over 3 positions
        ("What is 37+45?", " 28", 0.0),
        ("What is 37+45?", " 2", 0.5),
        ("What is 37+45?", " 082", 1.0),  # leading zeros do not matter
        ("What is 37+45?", " 82 or 85", 1.0),  # the first integer is the answer
        ("What is 37+45?", " 85 or 82", 0.5),
        ("What is 37+45?", " it is 82.", 1.0),
        ("What is 37+45?", " -82", 2 / 3),  # the sign is one more position
        ("What is 37+45?", " eighty-two", 0.0),
        ("What is 37+45?", "", 0.0),
        ("What is 99+99?", " 198", 1.0),
        ("What is 90-37?", " 53", 1.0),
        ("What is 50-50?", " 0", 1.0),
        ("What is 50-50?", " 00", 1.0),
        ("What is 50-50?", " 10", 0.5),
        ("What is 64-58?", " 16", 0.5),
    ],
)
def test_arithmetic_gold_values(prompt, completion, expected):
    assert ArithmeticTask().gold_reward([prompt], [completion]) == [pytest.approx(expected)]


def test_arithmetic_prompt_space():
    t = ArithmeticTask()
    space = t.prompt_space()
    assert len(space) == len(set(space)) == 90 * 90 + 90 * 91 // 2
    rows = t.rows("sft", "train", 500)
    assert all(int(r["completion"]) >= 0 and r["completion"].startswith(" ") for r in rows)


@pytest.mark.parametrize(
    "prompt, completion, expected",
    [
        ("Write 3 words in all caps ending with CAT:", " RED SUN CAT.", 1.0),
        ("Write 3 words in all caps ending with CAT:", " red sun cat.", 2 / 3),  # case fails
        ("Write 3 words in all caps ending with CAT:", " RED CAT.", 2 / 3),  # count fails
        ("Write 3 words in all caps ending with CAT:", " CAT RED.", 1 / 3),  # only case holds
        ("Write 3 words in all caps ending with CAT:", "", 0.0),
        ("Write words in lowercase:", " big red dog.", 1.0),
        ("Write words in lowercase:", " Big red dog.", 0.0),
        ("Write words in lowercase:", " 42.", 0.0),  # no letters is not lowercase text
        ("Write words in all caps:", " HOT SUN!", 1.0),
        ("Write 2 words:", " fish moon.", 1.0),
        ("Write 2 words:", " fish, moon, star.", 0.0),
        ("Write words starting with dog containing fish:", " dog big fish.", 1.0),
        ("Write words starting with dog containing fish:", " DOG FISH", 1.0),  # words match any case
        ("Write words starting with dog containing fish:", " fish dog.", 0.5),
        ("Write words starting with dog containing fish:", " dogfish.", 0.0),  # whole words only
        ("Write words starting with dog ending with cat:", " dog cat.", 1.0),
        ("Write words starting with dog ending with cat:", " cat dog.", 0.0),
        ("Write 4 words containing rain:", " rain rain rain rain.", 1.0),
    ],
)
def test_format_gold_values(prompt, completion, expected):
    assert FormatTask().gold_reward([prompt], [completion]) == [pytest.approx(expected)]


def test_format_spec_round_trip():
    for prompt in FormatTask().prompt_space():
        spec = FormatSpec.parse(prompt)
        assert spec.prompt() == prompt
        assert 1 <= len(spec.active) <= 2
        assert len(prompt) < 60
    spec = FormatSpec.parse("Write 3 words in all caps ending with CAT:")
    assert spec == FormatSpec(count=3, case="upper", end="cat")


@pytest.mark.parametrize(
    "task_cls, prompt",
    [
        (ArithmeticTask, "What is 3 plus 4?"),
        (ArithmeticTask, "Review: The film was"),
        (FormatTask, "Write words:"),  # no constraint
        (FormatTask, "Write a poem"),
    ],
)
def test_gold_rejects_foreign_prompts(task_cls, prompt):
    with pytest.raises(ValueError, match="not an? .*-task prompt"):
        task_cls().gold_reward([prompt], [" 1"])


# -- argument validation -----------------------------------------------------------------------
def test_bad_kind_lists_valid_kinds(task):
    with pytest.raises(ValueError) as err:
        task.rows("preferences", "train", 10)
    for kind in ROW_KINDS:
        assert kind in str(err.value)
    assert isinstance(err.value, ConfigError)  # printed as a user error by the CLI


def test_bad_split_lists_valid_splits(task):
    with pytest.raises(ValueError, match="train, val, test"):
        task.rows("sft", "dev", 10)


@pytest.mark.parametrize("noise", [-0.1, 0.51, 1.0, float("nan"), "0.1", True])
def test_bad_label_noise(task, noise):
    with pytest.raises(ValueError, match=r"label_noise must be a number in \[0, 0.5\]"):
        task.rows("pairs", "train", 10, label_noise=noise)


@pytest.mark.parametrize("n", [-1, 2.5, "10", None])
def test_bad_n(task, n):
    with pytest.raises(ValueError, match="n must be a non-negative integer"):
        task.rows("sft", "train", n)


def test_bad_seed(task):
    with pytest.raises(ValueError, match="seed must be an integer"):
        task.rows("sft", "train", 5, seed="0")


def test_label_noise_bounds_accepted(task):
    assert len(task.rows("pairs", "train", 5, label_noise=0)) == 5
    assert len(task.rows("pairs", "train", 5, label_noise=0.5)) == 5
