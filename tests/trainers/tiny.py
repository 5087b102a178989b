"""A tiny causal LM made here: a tokenizer trained with `tokenizers` on a few lines of Python,
and a Llama-style model with random weights. Nothing comes from a hub.

Every token of the vocabulary is a whole Python statement ending in `;`, so whatever the
random model generates decodes to a valid one-line program (tokens are joined with spaces):
its output decides the reward, so a batch gets varied rewards and statuses.
"""

from __future__ import annotations

import json
from typing import Any

STATEMENTS = ["print(1);", "print(2);", "x=1;", "pass;", "print(x);", "1/0;"]
SPECIAL = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
# The program passes when it prints exactly "1": one `print(1);` and no other output.
SPEC = {"language": "python", "tests": [{"stdin": "", "expected_stdout": "1\n"}]}


def tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    corpus = [" ".join(STATEMENTS)] * 4
    raw.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=SPECIAL))
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
    )


def model(vocab_size: int, seed: int = 0) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    return LlamaForCausalLM(config)


def rows(n: int) -> list[dict[str, Any]]:
    """Prompts (any statements) with the spec as a JSON text column."""
    return [
        {
            "prompt": " ".join(STATEMENTS[i % len(STATEMENTS) : i % len(STATEMENTS) + 2]),
            "verifier": "code",
            "spec": json.dumps({**SPEC}),
            "extract": "raw",
        }
        for i in range(n)
    ]
