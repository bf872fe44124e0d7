"""A tiny GPT-2 with a planted attention sink at the first position, and a word tokenizer with a BOS token.

The model is a small random GPT-2 (float64, small weights, so that it is close to linear and AtP
is accurate on it) with four planted coordinates of the residual stream:

- ``FIRST``: the position embedding of position 0 carries it (only the first position has it);
- ``GATE``: layer 0's attention writes a random projection of what it reads, so at position 0, where
  a head can only attend to itself, it is a feature of the first token;
- ``SINK``: one layer-0 MLP neuron writes it, firing steeply when ``FIRST`` and ``GATE`` are both high:
  only at position 0, and by an amount that depends sharply on the first token;
- ``ONE``: every token embedding carries it (a constant).

Every head of layers 1 and 2 attends to a position in proportion to ``ONE`` (its query) times ``SINK``
(the key there): the first position is a sink whose pull on every head depends steeply on the
first token. When clean and noise prompts differ in their first token, that pull changes in every head
at once, far outside the range where a first-order estimate holds. With a BOS token in front the first
position is the same in clean and noise and the sink does not move; the first word, now at position
1, has no ``FIRST`` feature and the neuron stays silent there.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, GPT2Config

import atpstar

FIRST, GATE, SINK, ONE = 0, 1, 2, 3
PLANTED = [FIRST, GATE, SINK, ONE]
D, HEADS, D_HEAD = 48, 4, 12
WORDS = 96
BOS = WORDS  # the last id of the vocabulary


class WordTokenizer:
    """``"w5 w17"`` -> ``[5, 17]``; a ``bos_token_id`` that it does not add itself (as SmolLM2's)."""

    bos_token_id = BOS

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [int(w[1:]) for w in text.split()]}

    def decode(self, ids):
        return "".join("<bos>" if i == BOS else f" w{i}" for i in ids)


def sink_hf(seed: int = 0, gate_scale: float = 3.0, steep: float = 20.0, threshold: float = 6.0,
            sink_out: float = 2.0, pull: float = 8.0):
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=WORDS + 1, n_embd=D, n_layer=3, n_head=HEADS, n_positions=64, initializer_range=0.05)
    hf = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float64).eval()
    t = hf.transformer
    with torch.no_grad():
        _clear(t)
        t.wpe.weight[0, FIRST] = 3.0
        t.wte.weight[:, ONE] = 2.0
        gate = torch.randn(D, generator=torch.Generator().manual_seed(seed + 7), dtype=torch.float64)
        t.h[0].attn.c_proj.weight[:, GATE] = gate_scale * gate / gate.norm()
        fc, out = t.h[0].mlp.c_fc, t.h[0].mlp.c_proj  # neuron 0: steep in FIRST + GATE, writes SINK
        fc.weight[:, 0] = 0
        fc.weight[[FIRST, GATE], 0] = steep
        fc.bias[0] = -steep * threshold
        out.weight[0, :] = 0
        out.weight[0, SINK] = sink_out
        for block in t.h[1:]:  # every head: query reads ONE, key reads SINK
            qkv = block.attn.c_attn.weight
            for h in range(HEADS):
                qkv[ONE, h * D_HEAD] = pull
                qkv[SINK, D + h * D_HEAD] = pull
    return hf


def _clear(t) -> None:
    """No random weight reads or writes the planted coordinates."""
    for emb in (t.wte.weight, t.wpe.weight):
        emb[:, PLANTED] = 0
    for block in t.h:
        block.attn.c_attn.weight[PLANTED] = 0
        block.mlp.c_fc.weight[PLANTED] = 0
        for proj in (block.attn.c_proj, block.mlp.c_proj):
            proj.weight[:, PLANTED] = 0
            proj.bias[PLANTED] = 0


def sink_model(seed: int = 0) -> atpstar.Model:
    return atpstar.load_model(sink_hf(seed), tokenizer=WordTokenizer())


def first_word_pairs(n: int = 12, length: int = 6, seed: int = 1):
    """``n`` (clean, noise) texts of ``length`` words that differ in their first word only (as pronoun
    pairs like "Anna went home early because" / "James went home early because"), and answers."""
    gen = torch.Generator().manual_seed(seed)
    clean, noise = [], []
    for _ in range(n):
        words = torch.randint(2, 90, (length,), generator=gen).tolist()
        other = int(torch.randint(2, 90, (1,), generator=gen))
        clean.append(" ".join(f"w{w}" for w in words))
        noise.append(" ".join(f"w{w}" for w in [other, *words[1:]]))
    answer = torch.randint(0, WORDS, (n,), generator=gen)
    return clean, noise, answer.tolist(), ((answer + 5) % WORDS).tolist()
