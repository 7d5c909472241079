"""A byte-level tokenizer built in code: no download, and it loads back with plain transformers.

Every UTF-8 byte is one token (256 ids) plus ``<pad>``, ``<s>`` and ``</s>``. Because there are no
merges, tokenising ``prompt`` and ``completion`` separately gives exactly the tokens of the
concatenation, which keeps completion masks exact. It is saved as a ``tokenizer.json`` fast
tokenizer, so ``AutoTokenizer.from_pretrained(dir)`` works without alignx installed.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<s>", "</s>"

#: A minimal chat template: role markers on their own lines, EOS closes each assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def build_byte_tokenizer(model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """Return the embedded byte-level tokenizer (vocab 259; BOS prepended by the post-processor)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {PAD: 0, BOS: 1, EOS: 2}
    for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet())):
        vocab[symbol] = i + 3
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    # use_regex=False: no word splitting, so every byte maps to exactly one token
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, 1)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=model_max_length,
        padding_side="right",
        chat_template=CHAT_TEMPLATE,
    )
    return tok
