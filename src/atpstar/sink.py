"""The warning for prompt pairs whose clean and noise prompts differ at the first position the model sees.

Most language models park the attention they do not need on the first position of the sequence (the
*attention sink*): the key and value there are read by nearly every head at every later position. When
clean and noise differ in that very token, patching it moves every head's attention at once, far
outside the range where a first-order (gradient) estimate holds: AtP's estimates of nodes at the first
positions can be many times their true effect, of either sign. A beginning-of-sequence (BOS) token in
front keeps the sink the same in clean and noise, which is why pairs are built with one by default.
"""

from __future__ import annotations

import warnings

from .tokens import bos_id, tokenizer

SHOWN = 3


def first_position_differs(pairs) -> list[int]:
    """Indices of the pairs whose clean and noise prompts have different first tokens."""
    return [i for i, (c, x) in enumerate(zip(pairs.clean, pairs.noise)) if int(c[0]) != int(x[0])]


def starts_with_bos(model, pairs) -> bool:
    """Whether every prompt starts with the model's beginning-of-sequence token."""
    first = bos_id(tokenizer(model))
    return first is not None and all(int(p[0]) == first for p in (*pairs.clean, *pairs.noise))


def warn_first_position(pairs, tok, bos: bool, stacklevel: int = 3) -> None:
    """Warn (UserWarning) when some pairs differ at their first token, saying why and what to do."""
    differ = first_position_differs(pairs)
    if not differ:
        return
    if bos:  # asked for, but the model has none (with one, every prompt starts with it)
        why, fix = "this model's tokenizer has no beginning-of-sequence (or end-of-text) token to put in front", \
            "start every clean and noise prompt with the same fixed token (e.g. a newline or a word)"
    else:
        why, fix = "no beginning-of-sequence token is in front (bos=False, or --no-bos)", \
            "build the pairs with bos=True (the default; on the command line leave out --no-bos)"
    examples = ", ".join(f"pair {i}: {_piece(tok, pairs.clean[i][0])} vs {_piece(tok, pairs.noise[i][0])}"
                         for i in differ[:SHOWN])
    more = f" and {len(differ) - SHOWN} more" if len(differ) > SHOWN else ""
    warnings.warn(
        f"{len(differ)} of {len(pairs)} prompt pairs differ in their first token ({examples}{more}) and {why}. "
        "The first position is where attention heads park their attention (the attention sink): changing the "
        "token there moves every head's attention at once, so AtP's estimates for nodes at the first positions "
        f"can be many times their true effect, even of the wrong sign. To fix it, {fix}.",
        UserWarning, stacklevel=stacklevel)


def _piece(tok, token) -> str:
    return repr(tok.decode([int(token)]))
