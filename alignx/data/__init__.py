"""The data path: rows -> validated rows -> encoded items -> batches.

Import the public pieces from their modules (this package imports nothing, so that the CLI and
config or data errors never pay for torch):

* :mod:`alignx.data.formats` -- row kinds and their schemas, ``validate_row(s)``, row formats
  (``RowFormat``, ``FormatError``), the invalid-row policy (``collect_invalid_rows``, ``reject_row``);
* :mod:`alignx.data.sources` -- dataset loaders ``(cfg, kind, split, seed) -> SplitRows``;
* :mod:`alignx.data.tokenize` -- encoders (``encode_sft_row``, ``encode_pair``, ``encode_ranked``,
  ``encode_prompt_completions``), the truncation policy, ``IGNORE_INDEX``;
* :mod:`alignx.data.batching` -- collators (``collate_sft``, ``collate_pairs``, ``collate_ranked``),
  ``BucketBatchSampler``, ``IGNORE_INDEX``;
* :mod:`alignx.data.cache` -- the tokenised-data cache and what its key covers;
* :mod:`alignx.data.rows` -- ``load_rows`` and ``encode_split``, the job's first two steps.

The contract between a plugin objective and this package (what ``encode`` receives, the keys
an item carries, what survives caching) is ``docs/data.md``.
"""
