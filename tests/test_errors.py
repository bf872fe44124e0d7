"""Bad input, as a new user would give it, to the API and the command line: each must fail with a clear
message that names the culprit and says what to do, never a raw library error or a silent wrong result.

The first block holds defects found by trying the package as a new user (each once gave a raw error or a
silently empty result);
then our own bad inputs to the API, the pipeline and the CLI (exit status 2, no traceback)."""

import json

import pytest
import torch
from conftest import StubTokenizer, random_pairs, tiny_model
from tinydir import tiny_dir  # noqa: F401 - fixture

import atpstar
from atpstar.run.cli import main
from atpstar.run.pipeline import RunConfig, prepare, resume, run

PAIR = {"clean": "When Mary and John went to the store", "noise": "When Anna and Paul went to the store",
        "answer": " Mary", "distractor": " John"}


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def word_model(tiny_dir):  # noqa: F811
    return atpstar.load_model(tiny_dir)


def _cli_error(capsys, argv, status=2) -> str:
    """Run the CLI, expect ``status`` and a short error on stderr without a traceback; return stderr."""
    assert main(argv) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err and "atpstar: error:" in err, err
    return err


# --- unclear answers found by a review ------------------------------------------------------------
def test_a_plain_list_instead_of_prompt_pairs_says_how_to_build_them(tiny):
    for call in (lambda: atpstar.atp(tiny, ["a", "b"], progress=False),
                 lambda: atpstar.acp(tiny, ["a", "b"], kinds="head", progress=False),
                 lambda: atpstar.verify(tiny, ("a", "b"), ["L0.head.H0@0"], progress=False),
                 lambda: atpstar.diagnose(tiny, ["a"], ["L0.head.H0@0"], progress=False),
                 lambda: atpstar.JointPatcher(tiny, "pairs.jsonl")):
        with pytest.raises(TypeError, match=r"pairs must be atpstar.PromptPairs, got (list|tuple|str) .*"
                                            r"atpstar.tasks.ioi\(model.*PromptPairs.from_strings"):
            call()


def test_one_node_name_where_a_node_set_is_expected_says_wrap_it_in_a_list(tiny):
    pairs = random_pairs()
    with pytest.raises(TypeError, match=r"single node 'L1.head.H0@0': wrap it in a list, e.g. \['L1.head.H0@0'\]"):
        atpstar.diagnose(tiny, pairs, "L1.head.H0@0", samples=50, bound="normal", progress=False)
    with pytest.raises(TypeError, match="single node"):
        atpstar.acp(tiny, pairs, nodes="L1.head.H0@0", progress=False)
    one = atpstar.acp(tiny, pairs, nodes=["L1.head.H0@0"], progress=False)  # the list form works
    every = atpstar.acp(tiny, pairs, kinds="head", progress=False)
    torch.testing.assert_close(one.effect["head"][1, 0, 0], every.effect["head"][1, 0, 0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_verification_or_diagnostic_checkpoint_via_the_python_api(tiny, tmp_path, damage):
    pairs = random_pairs()
    scores = atpstar.atp(tiny, pairs, kinds="head", progress=False)
    for what, call in (("verify", lambda path: atpstar.verify(tiny, pairs, scores, budget=atpstar.Budget(nodes=3),
                                                              checkpoint=path, progress=False)),
                       ("diagnose", lambda path: atpstar.diagnose(tiny, pairs, ["L0.head.H0@0"], samples=40,
                                                                  bound="normal", checkpoint=path, progress=False))):
        path = tmp_path / f"{what}.ckpt"
        call(path)
        data = path.read_bytes()
        path.write_bytes({"garbage": b"not a checkpoint" * 10, "truncated": data[: len(data) // 2]}[damage])
        with pytest.raises(ValueError, match=f"{path}.* not a valid atpstar checkpoint.*delete it to start over"):
            call(path)


# --- defects found by a new user ------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, -1, 2.5])
def test_acp_refuses_a_batch_size_below_one(tiny, size):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        atpstar.acp(tiny, random_pairs(), kinds="head", batch_size=size, progress=False)


def test_answer_equal_to_distractor_is_refused(word_model, tmp_path):
    with pytest.raises(ValueError, match=r"pair\(s\) \[1\].*same token.*identically 0"):
        atpstar.PromptPairs.from_ids([[1, 2], [1, 2]], [[1, 3], [1, 3]], [5, 7], [6, 7])
    with pytest.raises(ValueError, match="same token"):
        atpstar.PromptPairs.from_strings(word_model, [PAIR["clean"]], [PAIR["noise"]], [" Mary"], [" Mary"])
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(PAIR) + "\n" + json.dumps({**PAIR, "distractor": " Mary"}) + "\n")
    with pytest.raises(ValueError, match="line 2: answer and distractor are the same token"):
        atpstar.tasks.from_jsonl(path, word_model)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_damaged_checkpoint_says_so_and_how_to_start_over(tiny, tmp_path, damage):
    pairs, path = random_pairs(), tmp_path / "run.ckpt"
    atpstar.acp(tiny, pairs, kinds="head", checkpoint=path, progress=False)
    data = path.read_bytes()
    path.write_bytes({"garbage": b"not a checkpoint at all" * 10, "truncated": data[: len(data) // 2], "empty": b""}[damage])
    with pytest.raises(ValueError, match="not a valid atpstar checkpoint.*delete it to start over"):
        atpstar.acp(tiny, pairs, kinds="head", checkpoint=path, progress=False)


def test_binary_and_non_utf8_pairs_files_name_the_file_and_line(word_model, tmp_path):
    binary = tmp_path / "pairs.jsonl"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(ValueError, match=r"pairs\.jsonl: line 1 is not UTF-8 text \(byte 0x89 at column 1\)"):
        atpstar.tasks.from_jsonl(binary, word_model)
    latin = tmp_path / "pairs.csv"
    latin.write_bytes("clean,noise,answer\nWhen Mary went,When John went, Mary\nCaf\xe9 Mary,Caf\xe9 John, Mary\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"pairs\.csv: line 3 is not UTF-8 text \(byte 0xe9 at column 4\).*UTF-8"):
        atpstar.tasks.from_csv(latin, word_model)


def test_load_model_of_a_missing_directory_says_no_such_directory():
    for spec in ("/no/such/dir", "./no-such-model", "~/no/such/model", "no/such/dir/deeper"):
        with pytest.raises(FileNotFoundError, match="no such directory"):
            atpstar.load_model(spec)


def test_non_string_prompt_and_bare_string_answer_are_explained(word_model):
    with pytest.raises(ValueError, match="pair 0: the clean prompt must be a string, got int 123"):
        atpstar.PromptPairs.from_strings(word_model, [123], ["When John went"], [" Mary"])
    with pytest.raises(ValueError, match=r"answer must be a list with one entry per pair, got the single value ' Mary'.*\[' Mary'\]"):
        atpstar.PromptPairs.from_strings(word_model, ["When Mary went"], ["When John went"], " Mary")


# --- our own bad inputs: the API ------------------------------------------------------------------
def test_bad_prompt_and_answer_shapes(word_model):
    ok = dict(clean=["When Mary went"], noise=["When John went"], answer=[" Mary"])
    cases = [
        ({"clean": "When Mary went"}, "clean must be a list of prompts.*single string"),
        ({"distractor": " John"}, "distractor must be a list with one entry per pair"),
        ({"answer": [1.5]}, "pair 0: answer must be a string .* or a token id, got float"),
        ({"noise": [None]}, "pair 0: the noise prompt must be a string, got NoneType"),
        ({"answer": [" Mary", " John"]}, "must have one entry per pair"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            atpstar.PromptPairs.from_strings(word_model, **{**ok, **change})


def test_token_ids_must_be_integers_in_the_vocabulary(tiny):
    with pytest.raises(ValueError, match="answer token ids must be integers, got 1.5"):
        atpstar.PromptPairs.from_ids([[1, 2]], [[1, 3]], [1.5])
    with pytest.raises(ValueError, match="answer token ids must be integers, got True"):
        atpstar.PromptPairs.from_ids([[1, 2]], [[1, 3]], [True])
    negative = atpstar.PromptPairs.from_ids([[1, 2]], [[1, 3]], [-1], metric="logprob")
    with pytest.raises(ValueError, match=r"answer token ids must be in 0\.\.96, got \[-1\]"):
        atpstar.acp(tiny, negative, kinds="head", progress=False)


def test_model_paths_that_are_not_model_directories(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="is a file, not a model directory"):
        atpstar.load_model(str(tmp_path / "notes.txt"))
    with pytest.raises(ValueError, match="not a model directory \\(no config.json"):
        atpstar.load_model(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        atpstar.load_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(ValueError, match="needs tokenizer"):
        atpstar.load_model(tiny_model("gpt2").hf)


def test_pairs_files_that_are_missing_or_directories(word_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="pairs file not found"):
        atpstar.tasks.from_jsonl(tmp_path / "missing.jsonl", word_model)
    with pytest.raises(IsADirectoryError, match="is a directory, not a pairs file"):
        atpstar.tasks.from_csv(tmp_path, word_model)


def test_a_utf8_byte_order_mark_is_accepted(word_model, tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(("clean,noise,answer,distractor\n" + ",".join(PAIR.values()) + "\n").encode("utf-8-sig"))
    assert len(atpstar.tasks.from_csv(path, word_model)) == 1


BAD_CONFIGS = [
    ({"pairs": 0}, "pairs must be an integer >= 1"),
    ({"methods": ["magic"]}, "unknown method 'magic'"),
    ({"methods": []}, "no method given"),
    ({"kinds": "heads"}, "unknown node kind 'heads'"),
    ({"verify_budget": "-5"}, "cannot read the verification budget"),
    ({"verify_budget": "lots"}, "cannot read the verification budget"),
    ({"verify_budget": "1.5nodes"}, "whole number"),
    ({"verify_budget": "2"}, "cannot pay for the clean and noise runs"),
    ({"stop": "sometimes"}, "unknown stop rule 'sometimes'"),
    ({"stop": "small-effects:window=0"}, "window must be a positive integer"),
    ({"stop": "small-effects:size=3"}, "use window=..., threshold=..., relative=..."),
    ({"stop": "small-effects:relative=x"}, "'x' is not a number"),
    ({"delta": 1.5}, "delta .* must be in \\(0, 1\\)"),
    ({"samples": 1}, "samples must be an integer >= 2"),
    ({"p": 0.0}, "p .* must be in \\(0, 1\\)"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"dtype": "float16"}, "unknown dtype 'float16'"),
    ({"seed": -1}, "seed must be an integer >= 0"),
    ({"task": "nosuchtask"}, "unknown task 'nosuchtask'.*ioi"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"bos": "no"}, "bos must be True or False .*beginning-of-sequence token"),
    ({"checkpoint_every": -1}, "checkpoint_every must be seconds >= 0"),
    ({"model": ""}, "--model must be"),
    ({"diagnose": True, "verify_budget": "0"}, "--diagnose .* needs verification"),
]


@pytest.mark.parametrize("change,message", BAD_CONFIGS, ids=[str(c) for c, _ in BAD_CONFIGS])
def test_bad_run_options_fail_before_any_work(change, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**change).validate()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_says_use_cpu():
    with pytest.raises(ValueError, match="no CUDA GPU is available here; use --device cpu"):
        RunConfig(device="cuda").validate()


def test_run_folders_are_never_silently_overwritten(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        prepare(tmp_path / "file")
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_text("meow")
    for force in (False, True):
        with pytest.raises(FileExistsError, match="not an atpstar run folder"):
            prepare(other, force=force)
    assert (other / "cat.jpg").read_text() == "meow"
    with pytest.raises(PermissionError, match="cannot write the run folder"):
        prepare(tmp_path / "file" / "run")


def test_resume_and_report_of_folders_that_are_not_runs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        resume(tmp_path / "missing")
    with pytest.raises(ValueError, match="not an atpstar run folder"):
        resume(tmp_path)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(ValueError, match="run.json is damaged"):
        resume(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"config": {}, "stages": {}, "status": "new"}))
    from atpstar.run.report import write_report

    with pytest.raises(ValueError, match="no node or edge table yet.*atpstar resume"):
        write_report(tmp_path)


def test_damaged_stage_files_and_changed_models_are_refused(tiny_dir, tmp_path):  # noqa: F811
    cfg = RunConfig(model=tiny_dir, task="ioi", pairs=2, kinds="head", verify_budget="5nodes")
    run(cfg, tmp_path / "run", progress=False)
    scores = tmp_path / "run" / "stages" / "scores-atpstar.pt"
    scores.write_bytes(scores.read_bytes()[:100])
    with pytest.raises(ValueError, match="scores-atpstar.pt is damaged.*delete it"):
        resume(tmp_path / "run", progress=False)
    scores.unlink()  # as the message says: the stage is recomputed
    assert resume(tmp_path / "run", progress=False).finished
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    meta["model"]["weights_sha256"] = "0" * 64
    (tmp_path / "run" / "run.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="weights .* differ from those this run started with"):
        resume(tmp_path / "run", progress=False)


def test_a_damaged_verification_checkpoint_is_explained(tiny_dir, tmp_path):  # noqa: F811
    cfg = RunConfig(model=tiny_dir, task="ioi", pairs=2, kinds="head", verify_budget="5nodes")
    run(cfg, tmp_path / "run", progress=False)
    (tmp_path / "run" / "stages" / "verified.parquet").unlink()
    (tmp_path / "run" / "checkpoints" / "verify.ckpt").write_bytes(b"\x00" * 40)
    with pytest.raises(ValueError, match="verify.ckpt is not a valid atpstar checkpoint.*delete it to start over"):
        resume(tmp_path / "run", progress=False)


# --- our own bad inputs: the command line -----------------------------------------------------------
def test_cli_argument_errors_exit_2(capsys, tmp_path):
    for argv in (["frobnicate"], ["run", "--task", "ioi"], ["run", "--pairs", "abc", "--out", str(tmp_path / "r")],
                 ["run", "--device", "tpu", "--out", str(tmp_path / "r")], ["report"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert "error:" in capsys.readouterr().err


def test_cli_bos_is_a_switch_without_a_value(capsys, tmp_path):
    for flag in ("--bos", "--no-bos"):
        with pytest.raises(SystemExit) as exit_info:
            main(["run", f"{flag}=no", "--out", str(tmp_path / "r")])
        assert exit_info.value.code == 2
        assert "argument --bos/--no-bos: ignored explicit argument 'no'" in capsys.readouterr().err


def test_cli_bad_values_give_one_line_errors(capsys, tmp_path, tiny_dir):  # noqa: F811
    out = str(tmp_path / "run")
    base = ["run", "--model", tiny_dir, "--out", out, "--quiet"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(PAIR) + "\n{oops\n")
    cases = [
        (["--method", "bogus"], "unknown method 'bogus'"),
        (["--kinds", "heads"], "unknown node kind 'heads'"),
        (["--task", "nosuchtask"], "unknown task 'nosuchtask'"),
        (["--task", str(tmp_path / "missing.jsonl")], "pairs file not found"),
        (["--task", str(bad)], "line 2: bad JSON"),
        (["--verify-budget", "-1"], "verification budget"),
        (["--stop", "never"], "unknown stop rule"),
        (["--delta", "2"], "delta"),
    ]
    for extra, message in cases:
        err = _cli_error(capsys, base + extra)
        assert message in err, (extra, err)
    err = _cli_error(capsys, ["run", "--model", "/no/such/dir", "--out", out, "--quiet"])
    assert "no such directory: /no/such/dir" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # bad options are caught before the folder is made


def test_cli_unwritable_out_and_existing_folders(capsys, tmp_path, tiny_dir):  # noqa: F811
    (tmp_path / "file").write_text("x")
    err = _cli_error(capsys, ["run", "--model", tiny_dir, "--out", str(tmp_path / "file" / "run"), "--quiet"])
    assert "cannot write the run folder" in err
    out = str(tmp_path / "run")
    args = ["run", "--model", tiny_dir, "--pairs", "2", "--kinds", "head", "--verify-budget", "3nodes", "--out", out, "--quiet"]
    assert main(args) == 0
    capsys.readouterr()
    before = (tmp_path / "run" / "run.json").read_text()
    err = _cli_error(capsys, args)
    assert "already holds a run: continue it with `atpstar resume" in err and "--force" in err
    assert (tmp_path / "run" / "run.json").read_text() == before
    assert main(args + ["--force", "--seed", "1"]) == 0
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["seed"] == 1


def test_cli_out_of_memory_gives_advice(capsys, tmp_path, tiny_dir, monkeypatch):  # noqa: F811
    from atpstar.run import stages

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(stages, "run_method", oom)
    out = str(tmp_path / "run")
    err = _cli_error(capsys, ["run", "--model", tiny_dir, "--kinds", "head", "--out", out, "--quiet"], status=3)
    assert "out of memory" in err and "--batch-size" in err and "bfloat16" in err and f"atpstar resume {out}" in err
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"


def test_cli_internal_errors_are_one_line_with_a_hint(capsys, tmp_path, tiny_dir, monkeypatch):  # noqa: F811
    from atpstar.run import stages

    monkeypatch.setattr(stages, "run_method", lambda *a, **k: 1 / 0)
    assert main(["run", "--model", tiny_dir, "--kinds", "head", "--out", str(tmp_path / "r"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "internal error: ZeroDivisionError" in err and "ATPSTAR_DEBUG=1" in err and "Traceback" not in err
    monkeypatch.setenv("ATPSTAR_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(["run", "--model", tiny_dir, "--kinds", "head", "--out", str(tmp_path / "r2"), "--quiet"])


def test_cli_report_and_resume_of_non_runs(capsys, tmp_path):
    assert "not an atpstar run folder" in _cli_error(capsys, ["report", str(tmp_path)])
    assert "no such run folder" in _cli_error(capsys, ["resume", str(tmp_path / "nothing")])


def test_stub_tokenizer_models_cannot_run_builtin_tasks_without_words():
    # a model whose tokenizer has no single-token names cannot build IOI: the error says why
    with pytest.raises(ValueError, match="ioi: only .* single tokens"):
        atpstar.tasks.ioi(atpstar.load_model(tiny_model("llama").hf, tokenizer=_NoNames()), n=2)


class _NoNames(StubTokenizer):
    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) % 97 for c in text] + [0]}
