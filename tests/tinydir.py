"""A tiny model saved as a directory, with a real (word-level) tokenizer, for command-line tests:
``load_model(dir)`` then goes through the same code as for any model saved with ``save_pretrained``.

The tokenizer's vocabulary is every word of the bundled task data, so the built-in tasks (IOI,
city, rand) build their pairs with it; each word, with or without a leading space, is one token.
"""

from __future__ import annotations

import re
from importlib import resources

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedTokenizerFast

CONFIGS = {
    "llama": lambda vocab: LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                       initializer_range=0.3),
    "gpt2": lambda vocab: GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                     initializer_range=0.3),
}


def word_tokenizer() -> PreTrainedTokenizerFast:
    data = resources.files("atpstar.tasks").joinpath("data")
    text = " ".join(data.joinpath(n).read_text(encoding="utf-8") for n in ("ioi.json", "cities.json", "rand.txt"))
    words = sorted(set(re.findall(r"\w+|[^\w\s]+", text)))
    vocab = {"[UNK]": 0, "[BOS]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="[BOS]")


def save_tiny_model(path, arch: str = "llama", seed: int = 0):
    """Save a tiny random ``arch`` model and its tokenizer in ``path``; returns ``path``."""
    tok = word_tokenizer()
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(CONFIGS[arch](len(tok)))
    hf.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny Llama saved with its word-level tokenizer (one per test session)."""
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny") / "llama"))
