"""RAND-PP: two unrelated natural-text snippets of equal token length.

Clean: the first ``k`` tokens of a sentence from ``data/rand.txt`` (``k`` drawn per pair); the
answer is the sentence's true next token. Noise: the first ``k`` tokens of another sentence.
Metric: log-prob of the answer. There is no distractor.
"""

from __future__ import annotations

from .common import finish, load_data, rng, tokenizer, with_bos, word_ids

MIN_PREFIX, MAX_PREFIX = 6, 16


def rand(model, n: int = 64, seed: int = 0, only_correct: bool = False, bos: bool = True):
    """``n`` RAND prompt pairs (each sentence used once as the clean snippet), metric ``logprob``; ``bos``: the
    model's beginning-of-sequence token in front of every prompt (without it, clean and noise differ at
    their first token: see :mod:`atpstar.sink`)."""
    tok = tokenizer(model)
    sentences = [word_ids(tok, s) for s in load_data("rand.txt")]
    r = rng(seed)
    order = [i for i, s in enumerate(sentences) if len(s) > MIN_PREFIX]
    r.shuffle(order)
    rows = []
    for i in order[:n]:
        k = r.randint(MIN_PREFIX, min(MAX_PREFIX, len(sentences[i]) - 1))
        prefix = sentences[i][:k]
        others = [j for j in order if j != i and sentences[j][:k] != prefix and len(sentences[j]) >= k]
        noise = sentences[r.choice(others)][:k]
        texts = (tok.decode(prefix), tok.decode(noise))
        rows.append((with_bos(tok, prefix, bos), with_bos(tok, noise, bos), sentences[i][k], None, texts))
    why = f"the bundled collection has {len(order)} sentences longer than {MIN_PREFIX} tokens, each used once"
    return finish(model, "rand", rows, n, why, "logprob", only_correct, bos)
