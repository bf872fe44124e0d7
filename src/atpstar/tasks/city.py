"""CITY-PP: city → country factual recall.

Clean: "The city of Paris is located in the country of" → " France". Noise: the same sentence with
a city of another country whose prompt has the same token length; its country is the distractor.
Only countries that are one token (with a leading space) are used; see ``data/cities.json``.
The format was chosen as the one SmolLM2-135M answers best among the few tried (docs/tasks.md).
"""

from __future__ import annotations

from ..metrics import resolve
from .common import encode, finish, load_data, rng, single_token_words, tokenizer

FORMAT = "The city of {city} is located in the country of"


def city(model, n: int = 64, seed: int = 0, only_correct: bool = False, metric="logprob", bos: bool = True):
    """``n`` city prompt pairs (each clean city used once), metric ``"logprob"`` or ``"logit_diff"``; ``bos``:
    the model's beginning-of-sequence token in front of every prompt (see :mod:`atpstar.tokens`)."""
    resolve(metric)  # fail early on an unknown metric name
    tok = tokenizer(model)
    facts = load_data("cities.json")
    country = single_token_words(tok, sorted({f["country"] for f in facts}))
    facts = [f for f in facts if f["country"] in country]
    prompts = {f["city"]: encode(tok, FORMAT.format(city=f["city"]), bos) for f in facts}
    r = rng(seed)
    order = facts[:]
    r.shuffle(order)
    rows = []
    for f in order:
        if len(rows) == n:
            break
        clean = prompts[f["city"]]
        others = [g for g in facts if g["country"] != f["country"] and len(prompts[g["city"]]) == len(clean)]
        if not others:
            continue
        g = r.choice(others)
        texts = (FORMAT.format(city=f["city"]), FORMAT.format(city=g["city"]))
        rows.append((clean, prompts[g["city"]], country[f["country"]], country[g["country"]], texts))
    why = (f"{len(facts)} cities with a single-token country, each used once as the clean city, "
           "and only if a city of another country has a prompt of the same token length")
    return finish(model, "city", rows, n, why, metric, only_correct, bos)
