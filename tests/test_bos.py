"""The beginning-of-sequence (BOS) token: the ``bos`` option of pair building, the first-token warning,
and the attention sink that makes it matter (AtP* against exact patching on a planted sink)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import StubTokenizer, tiny_model
from sinkmodel import BOS, first_word_pairs, sink_model
from tinydir import tiny_dir  # noqa: F401 - fixture

import atpstar
from atpstar.run.cli import main
from atpstar.tokens import bos_id, encode, with_bos

SINK_WARNING = r"differ in their first token .* attention sink"


@pytest.fixture(scope="module")
def sink():
    return sink_model()


@pytest.fixture(scope="module")
def word_model(tiny_dir):  # noqa: F811 - a real tokenizer that adds [BOS] itself (as Gemma's)
    return atpstar.load_model(tiny_dir)


def agreement(model, pairs, top: int = 40) -> float:
    """Correlation of AtP*'s signed estimates with exact patching over AtP*'s top ``top`` attention nodes."""
    est = atpstar.atp(model, pairs, kinds="attn", progress=False).to_frame().head(top)
    exact = atpstar.acp(model, pairs, nodes=est, progress=False).to_frame().set_index("name")
    return float(np.corrcoef(est["effect"], exact.loc[est["name"], "effect"])[0, 1])


# --- the planted sink --------------------------------------------------------------------------
def test_bos_in_front_makes_atp_agree_with_exact_patching_on_a_planted_sink(sink):
    clean, noise, answer, distractor = first_word_pairs()
    with_bos_pairs = atpstar.PromptPairs.from_strings(sink, clean, noise, answer, distractor)  # the default
    assert all(int(c[0]) == BOS for c in with_bos_pairs.clean)
    assert agreement(sink, with_bos_pairs) >= 0.99
    with pytest.warns(UserWarning, match=SINK_WARNING):
        bare = atpstar.PromptPairs.from_strings(sink, clean, noise, answer, distractor, bos=False)
    assert agreement(sink, bare) <= 0.5  # the same pairs, first words at the sink: AtP* is far off


# --- building prompts with and without BOS -----------------------------------------------------
def test_encode_puts_exactly_one_bos_in_front(word_model):
    tok = word_model.tokenizer  # adds [BOS] (id 1) itself
    assert tok("When Mary")["input_ids"][0] == 1 == bos_id(tok)
    ids = encode(tok, "When Mary")
    assert ids[0] == 1 and ids[1] != 1 and len(ids) == 3
    assert encode(tok, "When Mary", bos=False) == ids[1:]  # off: also the tokenizer's own is left out
    assert with_bos(tok, ids) == ids and with_bos(tok, ids[1:], bos=False) == ids[1:]
    assert bos_id(StubTokenizer()) is None and encode(StubTokenizer(), "ab") == [97 % 97, 98 % 97]


def test_bos_id_falls_back_to_the_end_of_text_token():
    class EosOnly(StubTokenizer):  # GPT-2 style: no BOS, an end-of-text token (TransformerLens uses it)
        bos_token_id, eos_token_id = None, 5

    assert bos_id(EosOnly()) == 5 and encode(EosOnly(), "a") == [5, 0]


def test_built_in_tasks_and_files_put_bos_at_position_0(word_model, tmp_path):
    for pairs in (atpstar.tasks.ioi(word_model, n=2), atpstar.tasks.rand(word_model, n=2)):
        assert all(int(p[0]) == 1 for p in (*pairs.clean, *pairs.noise))
    assert all(int(p[0]) != 1 for p in atpstar.tasks.ioi(word_model, n=2, bos=False).clean)
    row = {"clean": "Mary went home", "noise": "John went home", "answer": " she"}
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(row) + "\n")
    assert atpstar.tasks.from_jsonl(path, word_model).clean[0].tolist()[0] == 1
    with pytest.warns(UserWarning, match=SINK_WARNING + r".*leave out --no-bos"):
        atpstar.tasks.from_jsonl(path, word_model, bos=False)


# --- the warning -------------------------------------------------------------------------------
def test_the_warning_names_the_pairs_and_the_fix(sink):
    clean, noise, answer, distractor = first_word_pairs(n=5)
    with pytest.warns(UserWarning) as caught:
        atpstar.PromptPairs.from_strings(sink, clean, noise, answer, distractor, bos=False)
    message = str(caught[0].message)
    assert message.startswith("5 of 5 prompt pairs differ in their first token (pair 0: ")
    assert "and 2 more" in message and "bos=True" in message and "many times their true effect" in message


def test_no_warning_when_the_first_tokens_agree(sink, recwarn):
    atpstar.PromptPairs.from_strings(sink, ["w3 w4 w5"], ["w3 w9 w5"], [7], [8], bos=False)
    atpstar.PromptPairs.from_strings(sink, ["w3 w4 w5"], ["w8 w9 w5"], [7], [8])
    assert not [w for w in recwarn if "first token" in str(w.message)]


def test_a_model_without_a_bos_token_is_told_to_start_both_prompts_alike():
    with pytest.warns(UserWarning, match=r"has no beginning-of-sequence .* start every clean and noise prompt"):
        atpstar.PromptPairs.from_strings(tiny_model("llama"), ["abc"], ["xbc"], [" "], ["a"])


# --- the command line --------------------------------------------------------------------------
def test_cli_no_bos_warns_and_the_run_records_the_first_token(tiny_dir, tmp_path, capsys):  # noqa: F811
    path = tmp_path / "p.jsonl"
    rows = [{"clean": f"{a} went home early because", "noise": f"{b} went home early because",
             "answer": " Mary", "distractor": " John"} for a, b in (("Mary", "John"), ("Anna", "Paul"))]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    for flag, differ in (([], 0), (["--no-bos"], 2)):
        out = tmp_path / f"run{len(flag)}"
        assert main(["run", "--task", str(path), "--model", tiny_dir, "--kinds", "head", "--verify-budget", "4",
                     "--out", str(out), "--quiet", *flag]) == 0
        warned = "atpstar: warning: 2 of 2 prompt pairs differ in their first token" in capsys.readouterr().err
        pairs = json.loads((out / "run.json").read_text())["stages"]["pairs"]
        assert warned is bool(differ) and pairs["first_token_differs"] == differ and pairs["bos"] is not bool(differ)
        assert pairs["tokens"][0] == ("[BOS]" if not differ else "Mary")
        report = (out / "report.html").read_text(encoding="utf-8")
        assert ("2 of 2 pairs differ in their first token" in report) is bool(differ)
        assert ("the beginning-of-sequence token)" in report) is not bool(differ)
