"""The benchmarks' tiny random model for ``--quick`` runs: a 3-layer random Llama with a character
tokenizer, and random prompt pairs for it (no download, seconds)."""

from __future__ import annotations

import torch

import atpstar

VOCAB = 97


class CharTokenizer:
    """Characters to ids modulo the vocabulary; ids decode to capital letters."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) % VOCAB for c in text]}

    def decode(self, ids):
        return "".join(chr(65 + i % 26) for i in ids)


def tiny_llama(dtype: torch.dtype = torch.float32) -> atpstar.Model:
    """A 3-layer random Llama (6 heads, 2 kv heads, d_model 48), its weights drawn after ``torch.manual_seed(0)``."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                      initializer_range=0.3)
    hf = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=dtype).eval()
    return atpstar.load_model(hf, tokenizer=CharTokenizer(), dtype=dtype)


def random_pairs(lengths, seed: int = 1) -> atpstar.PromptPairs:
    """Random clean prompts of the given lengths, their noise prompts differing at positions 1, 3 and 5;
    pair i answers ``5 + 2i`` against ``11 + 2i`` (logit difference)."""
    gen = torch.Generator().manual_seed(seed)
    clean = [torch.randint(0, VOCAB, (n,), generator=gen) for n in lengths]
    noise = [c.clone() for c in clean]
    for x in noise:
        x[[1, 3, 5]] = torch.randint(0, VOCAB, (3,), generator=gen)
    n = len(clean)
    return atpstar.PromptPairs.from_ids(clean, noise, [5 + 2 * i for i in range(n)], [11 + 2 * i for i in range(n)],
                                        metric="logit_diff")
