"""IOI-PP: indirect-object identification prompt pairs.

Clean: a template with the indirect object A and the subject B, e.g. "When Mary and John went to
the store, John gave a drink to" → " Mary" (distractor " John"). Noise: the same template, place
and object with two fresh names C, D (the paper's "ABC" corruption), of equal token length.
Templates come in both orders (ABBA and BABA); see ``data/ioi.json``.
"""

from __future__ import annotations

from .common import encode, finish, load_data, rng, single_token_words, tokenizer

ATTEMPTS_PER_PAIR = 20


def ioi(model, n: int = 64, seed: int = 0, only_correct: bool = False, bos: bool = True):
    """``n`` IOI prompt pairs (deterministic for ``seed``), metric ``logit_diff`` (IO − S); ``bos``: the
    model's beginning-of-sequence token in front of every prompt (see :mod:`atpstar.tokens`)."""
    tok = tokenizer(model)
    data = load_data("ioi.json")
    names = single_token_words(tok, data["names"])
    if len(names) < 4:
        raise ValueError(f"ioi: only {len(names)} of the bundled names are single tokens in this "
                         "tokenizer (with a leading space); 4 are needed")
    pool, r = sorted(names), rng(seed)
    rows, seen, attempts = [], set(), n * ATTEMPTS_PER_PAIR
    for _ in range(attempts):
        if len(rows) == n:
            break
        template, place, obj = (r.choice(data[k]) for k in ("templates", "places", "objects"))
        a, b, c, d = r.sample(pool, 4)
        clean = template.format(A=a, B=b, place=place, object=obj)
        noise = template.format(A=c, B=d, place=place, object=obj)
        clean_ids, noise_ids = encode(tok, clean, bos), encode(tok, noise, bos)
        if clean in seen or len(clean_ids) != len(noise_ids):
            continue
        seen.add(clean)
        rows.append((clean_ids, noise_ids, names[a], names[b], (clean, noise)))
    why = (f"{len(names)} single-token names, {len(data['templates'])} templates; {attempts} attempts "
           "to find distinct clean prompts whose noise prompt has the same token length")
    return finish(model, "ioi", rows, n, why, "logit_diff", only_correct, bos)
