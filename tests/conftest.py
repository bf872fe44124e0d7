"""Shared fixtures: tiny randomly initialised models of every supported architecture (built from
configs, no downloads), random prompt pairs, and the real SmolLM2 for tests marked ``slow``."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
)

import atpstar  # noqa: E402

VOCAB = 97
TINY = {
    "llama": lambda: LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
                                 num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                                 initializer_range=0.3),
    "gpt2": lambda: GPT2Config(vocab_size=VOCAB, n_embd=48, n_layer=3, n_head=4, n_positions=64, initializer_range=0.3),
    "gpt_neox": lambda: GPTNeoXConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=4, rotary_pct=0.5, use_parallel_residual=True,
                                      max_position_embeddings=64, initializer_range=0.3),
    "gemma3": lambda: Gemma3TextConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
                                       num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=4,
                                       layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                                       max_position_embeddings=64, initializer_range=0.3),
}
ARCH_NAMES = list(TINY)


class StubTokenizer:
    """Tiny models are driven by token ids; this stands in where a tokenizer object is required."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) % VOCAB for c in text]}

    def decode(self, ids):
        return "".join(chr(65 + i % 26) for i in ids)


def tiny_hf(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(TINY[arch](), attn_implementation="eager", dtype=torch.float32).eval()


def tiny_model(arch: str, seed: int = 0) -> atpstar.Model:
    return atpstar.load_model(tiny_hf(arch, seed), tokenizer=StubTokenizer())


def random_pairs(lengths=(7, 9), seed: int = 1, metric="logit_diff") -> atpstar.PromptPairs:
    """Random clean/noise pairs; noise differs from clean in a few positions, so effects are sparse-ish."""
    gen = torch.Generator().manual_seed(seed)
    clean, noise = [], []
    for n in lengths:
        c = torch.randint(0, VOCAB, (n,), generator=gen)
        x = c.clone()
        flip = torch.randperm(n, generator=gen)[: max(2, n // 2)]
        x[flip] = torch.randint(0, VOCAB, (len(flip),), generator=gen)
        clean.append(c)
        noise.append(x)
    answer = torch.randint(0, VOCAB, (len(lengths),), generator=gen)
    distractor = (answer + 1 + torch.randint(0, VOCAB - 1, (len(lengths),), generator=gen)) % VOCAB
    return atpstar.PromptPairs.from_ids(clean, noise, answer.tolist(), distractor.tolist(), metric=metric)


def planted_edge_effects(graph, n_pos: int, seed: int = 0) -> torch.Tensor:
    """(W, R, T) float64 random edge effects, NaN where no edge exists: a ranking whose order the tests set."""
    effect = torch.randn(graph.n_writers, graph.n_readers, n_pos, generator=torch.Generator().manual_seed(seed),
                         dtype=torch.float64)
    effect[~graph.valid] = torch.nan
    return effect


def planted_edge_scores(model, n_pos: int, seed: int = 0):
    """EdgeScores ``planted`` of :func:`planted_edge_effects` over every edge of ``model``; score = |effect|."""
    from atpstar.edges import EdgeGraph, EdgeScores

    graph = EdgeGraph.of(model)
    effect = planted_edge_effects(graph, n_pos, seed)
    return EdgeScores("planted", graph, effect, effect.abs(), 1)


@pytest.fixture(params=ARCH_NAMES)
def arch(request):
    return request.param


@pytest.fixture
def model(arch):
    return tiny_model(arch)


@pytest.fixture(scope="session")
def smollm():
    try:
        return atpstar.load_model("default")
    except ModuleNotFoundError as err:  # pragma: no cover - the README's install step provides it
        pytest.skip(str(err))
