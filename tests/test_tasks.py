"""Tests for atpstar.tasks: builtin prompt-pair builders and user-file loaders."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import csv  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import atpstar  # noqa: E402
from atpstar import tasks  # noqa: E402
from atpstar.tasks import common  # noqa: E402
from atpstar.tasks.common import evaluate, load_data  # noqa: E402
from atpstar.tokens import word_ids  # noqa: E402

ioi_module = importlib.import_module("atpstar.tasks.ioi")  # the package attribute is the function


@pytest.fixture(scope="session")
def model():
    return atpstar.load_model("default")


def ids(pairs):
    return [(c.tolist(), x.tolist()) for c, x in zip(pairs.clean, pairs.noise)], pairs.answer.tolist()


# ----------------------------------------------------------------------------- builtin tasks


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_builders_are_deterministic_per_seed(model, name):
    build = tasks.TASKS[name]
    first, again, other = build(model, n=16, seed=0), build(model, n=16, seed=0), build(model, n=16, seed=1)
    assert len(first) == 16
    assert ids(first) == ids(again)
    assert ids(first) != ids(other)


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_pairs_have_equal_lengths_and_vocab_ids(model, name):
    pairs = tasks.TASKS[name](model, n=64)
    assert len(pairs) == 64 and len(pairs.texts) == 64
    assert all(len(c) == len(x) for c, x in zip(pairs.clean, pairs.noise))
    pairs.check_vocab(model.vocab_size)
    assert not any(torch.equal(c, x) for c, x in zip(pairs.clean, pairs.noise))


@pytest.mark.parametrize("name", ["ioi", "city"])
def test_text_answers_are_single_tokens_and_texts_match_ids(model, name):
    tok = model.tokenizer
    pairs = tasks.TASKS[name](model, n=32)
    for (clean, noise), c, x, a, d in zip(pairs.texts, pairs.clean, pairs.noise, pairs.answer, pairs.distractor):
        bos = [tok.bos_token_id]  # SmolLM2's tokenizer does not add it: the builders put it in front
        assert bos + word_ids(tok, clean) == c.tolist() and bos + word_ids(tok, noise) == x.tolist()
        for token in (int(a), int(d)):
            word = tok.decode([token])
            assert word.startswith(" ") and tok(word, add_special_tokens=False)["input_ids"] == [token]
        assert int(a) != int(d)


def test_ioi_pairs_swap_in_fresh_names(model):
    tok = model.tokenizer
    pairs = tasks.ioi(model, n=32)
    assert pairs.metric == "logit_diff"
    for (clean, noise), a, b in zip(pairs.texts, pairs.answer, pairs.distractor):
        io, s = tok.decode([int(a)]).strip(), tok.decode([int(b)]).strip()
        assert clean.count(s) == 2 and clean.count(io) == 1
        assert io not in noise and s not in noise
        assert clean.replace(io, "").replace(s, "") != noise  # template kept, names changed
    templates = load_data("ioi.json")["templates"]
    assert len(templates) >= 8 and any(t.index("{B}") < t.index("{A}") for t in templates)


def test_city_metric_option_and_data(model):
    assert len(load_data("cities.json")) >= 150
    assert tasks.city(model, n=4).metric == "logprob"
    assert tasks.city(model, n=4, metric="logit_diff").metric == "logit_diff"
    with pytest.raises(ValueError, match="unknown metric"):
        tasks.city(model, n=4, metric="accuracy")


def test_rand_answer_is_the_true_next_token(model):
    tok = model.tokenizer
    sentences = load_data("rand.txt")
    assert len(sentences) >= 300
    pairs = tasks.rand(model, n=32)
    assert pairs.metric == "logprob" and bool((pairs.distractor == -1).all())
    for c, a in zip(pairs.clean, pairs.answer):
        assert int(c[0]) == tok.bos_token_id
        text = tok.decode(c[1:].tolist() + [int(a)])
        assert any(s.startswith(text) for s in sentences)


@pytest.mark.parametrize("name, most", [("city", 265), ("rand", 324)])
def test_builders_warn_when_asked_for_more_than_possible(model, name, most):
    with pytest.warns(UserWarning, match=f"made {most} of the 1000 pairs"):
        assert len(tasks.TASKS[name](model, n=1000)) == most


def test_ioi_warns_or_raises_with_too_few_names(model, monkeypatch):
    data = {"names": ["Mary", "John", "Anna", "Paul"], "templates": ["When {A} and {B} met, {B} waved to"],
            "places": ["park"], "objects": ["ball"]}
    monkeypatch.setattr(ioi_module, "load_data", lambda name: data)
    with pytest.warns(UserWarning, match="made 12 of the 20 pairs"):  # 4 * 3 ordered (A, B)
        assert len(tasks.ioi(model, n=20)) == 12
    data["names"] = data["names"][:3]
    with pytest.raises(ValueError, match="4 are needed"):
        tasks.ioi(model)


def test_finish_never_returns_empty(model):
    with pytest.raises(ValueError, match="could not make any prompt pair"):
        common.finish(model, "x", [], 5, "no data", None, False, True)


# ----------------------------------------------------------------------------- user files

GOOD = {"clean": "When Mary and John went out, John thanked", "noise": "When Anna and Paul went out, Paul thanked",
        "answer": " Mary", "distractor": " John"}


def write_jsonl(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_from_jsonl_loads_good_rows(model, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD, "", {**GOOD, "distractor": None}])
    pairs = tasks.from_jsonl(path, model)
    assert len(pairs) == 2 and pairs.metric is None
    assert pairs.distractor.tolist()[1] == -1 and pairs.texts[0] == (GOOD["clean"], GOOD["noise"])
    path = write_jsonl(tmp_path / "q.jsonl", [{**GOOD, "metric": "logit_diff"}, {**GOOD, "distractor": None}])
    with pytest.raises(ValueError, match=r"logit_diff needs a distractor, missing on line\(s\) \[2\]"):
        tasks.from_jsonl(path, model)


BAD = [
    ('{"clean": "broken', "line 2: bad JSON"),
    ({"clean": GOOD["clean"], "answer": " Mary"}, "line 3: missing field(s) noise"),
    ({**GOOD, "noise": GOOD["noise"] + " all"}, "line 4: clean is 9 tokens but noise is 10"),
    ({**GOOD, "answer": " Mary Anne"}, "line 5: answer ' Mary Anne' is 2 tokens"),
    ({**GOOD, "clean": ""}, "line 6: empty field(s) clean"),
    ({**GOOD, "metric": "accuracy"}, "line 7: unknown metric"),
]


def test_from_jsonl_reports_every_bad_row_with_its_line(model, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD] + [line for line, _ in BAD])
    with pytest.raises(ValueError) as err:
        tasks.from_jsonl(path, model)
    assert "6 malformed row(s)" in str(err.value)
    for _, message in BAD:
        assert message in str(err.value)
    with pytest.warns(UserWarning, match="skipped 6 malformed row"):
        assert len(tasks.from_jsonl(path, model, skip_bad=True)) == 1


def test_from_jsonl_lists_first_errors_and_counts_the_rest(model, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", ["[1]"] * 25)
    with pytest.raises(ValueError, match=r"(?s)line 20: expected a JSON object.*and 5 more") as err:
        tasks.from_jsonl(path, model, skip_bad=False)
    assert "line 21" not in str(err.value)
    with pytest.raises(ValueError, match="every row is malformed"), pytest.warns(UserWarning):
        tasks.from_jsonl(path, model, skip_bad=True)


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["clean", "noise", "answer", "distractor", "metric"], *rows])
    return path


def test_from_csv_validates_rows_and_metric(model, tmp_path):
    row = [GOOD["clean"], GOOD["noise"], GOOD["answer"], GOOD["distractor"]]
    pairs = tasks.from_csv(write_csv(tmp_path / "good.csv", [row + ["logit_diff"], row + [""]]), model)
    assert len(pairs) == 2 and pairs.metric == "logit_diff"
    mixed = write_csv(tmp_path / "mixed.csv", [row + ["logit_diff"], row + ["logprob"]])
    with pytest.raises(ValueError, match="same metric on every row"):
        tasks.from_csv(mixed, model)
    bad = write_csv(tmp_path / "bad.csv", [row, [GOOD["clean"], "short", " Mary"], [GOOD["clean"]]])
    with pytest.raises(ValueError, match=r"(?s)line 3: clean is 9 tokens but noise is 1.*line 4: missing field"):
        tasks.from_csv(bad, model)
    with pytest.warns(UserWarning, match="skipped 2 malformed row"):
        assert len(tasks.from_csv(bad, model, skip_bad=True)) == 1


# ----------------------------------------------------------------------------- the model does the tasks


@pytest.mark.slow
def test_smollm2_does_ioi_on_most_pairs(model):
    result = evaluate(model, tasks.ioi(model, n=32))
    # measured on SmolLM2-135M-Instruct: 100% of 64 pairs, mean logit diff 4.8 (noise: 0.2)
    assert result["correct"].float().mean() >= 0.9
    assert result["clean"].mean() > 3.0 > result["noise"].mean()


@pytest.mark.slow
def test_only_correct_keeps_pairs_the_model_gets_right(model):
    with pytest.warns(UserWarning, match=r"only_correct=True dropped \d+ of 16 pairs"):
        pairs = tasks.rand(model, n=16, only_correct=True)
    assert 0 < len(pairs) < 16
    assert bool(evaluate(model, pairs)["correct"].all())
