"""MIB / EAP-IG export on real edge scores: Gemma 3's whole-layer attention writer and a key-value head
shared by 4 query heads, split over EAP-IG's per-head edges and added back; MIB's folder names; and a run
folder exported from the command line with its verified edges' exact effects."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import random_pairs, tiny_model
from tinydir import tiny_dir  # noqa: F401 - fixture

from atpstar.edges import atp, eap_config, eap_graph_of, from_eap_graph, mib_folder_name, tl_hook
from atpstar.run.cli import main
from atpstar.run.folder import load_run
from atpstar.run.pipeline import RunConfig, run

pytest.importorskip("transformers")


def test_gemma3_whole_layer_attention_and_shared_kv_heads_split_and_add_back():
    model = tiny_model("gemma3")  # 4 query heads sharing 1 key-value head; the attention write is one per layer
    scores = atp(model, random_pairs())
    g = scores.graph
    assert not g.per_head and model.n_heads == 4 and model.n_kv_heads == 1
    cfg = eap_config(model)
    graph = eap_graph_of(scores, model.d_model, circuit=["L0.attn -> L1.k.G0"])
    assert graph["cfg"] == {k: cfg[k] for k in ("n_layers", "n_heads", "parallel_attn_mlp", "d_model")} | {
        "n_key_value_heads": 1, "per_head_writers": False}
    summed = lambda w, r: float(scores.effect[g.writer_index([w])[0], g.reader_index([r])[0]].nansum())  # noqa: E731
    e = graph["edges"]
    # L0.attn -> L0.mlp is every head's write: split over the 4 heads, MIB's sign
    assert [e[f"a0.h{h}->m0"]["score"] for h in range(4)] == pytest.approx([-summed("L0.attn", "L0.mlp") / 4] * 4)
    # L0.attn -> L1.k.G0: 4 writers x 4 query heads' key inputs, all in the circuit
    parts = [f"a0.h{h}->a1.h{q}<k>" for h in range(4) for q in range(4)]
    assert [e[n]["score"] for n in parts] == pytest.approx([-summed("L0.attn", "L1.k.G0") / 16] * 16)
    assert {n for n, v in e.items() if v["in_graph"]} == set(parts)
    assert e["input->a2.h3<q>"]["score"] == pytest.approx(-summed("embed", "L2.q.H3"))
    assert sum(v["score"] for v in e.values()) == pytest.approx(-float(scores.effect.double().nansum()), rel=1e-9)
    back = from_eap_graph(graph).set_index("name")
    assert back.loc["L0.attn -> L1.k.G0", "effect"] == pytest.approx(summed("L0.attn", "L1.k.G0"))
    assert back.loc["L0.attn -> L1.k.G0", "in_graph"] and back["in_graph"].sum() == 1
    assert set(back["writer"]) == set(g.writer_names)  # embed, L{l}.attn, L{l}.mlp: the heads folded back
    assert len(back) == int(g.valid.sum())
    assert tl_hook("L1.attn@3", role="writer") == ("blocks.1.hook_attn_out", None, 3)


@pytest.mark.parametrize("task, model, name", [
    ("ioi", "gpt2", "ioi_gpt2"),
    ("arithmetic_addition", "meta-llama/Llama-3.1-8B", "arithmetic-addition_llama3"),
    ("mcqa", "google/gemma-2-2b", "mcqa_gemma2"),
    ("ioi", "HuggingFaceTB/SmolLM2-135M-Instruct", "ioi_smollm2-135m-instruct"),
    ("data/my_pairs.jsonl", "/tmp/tiny_model/", "my-pairs_tiny-model"),
])
def test_mib_folder_names(task, model, name):
    assert mib_folder_name(task, model) == name


def test_run_folder_exports_verified_exact_effects_and_a_mib_folder(tiny_dir, tmp_path, capsys):  # noqa: F811
    """A real edge run on the tiny model (AtP*, 6 edges verified by exact patching): each verified edge's
    exact effect replaces its estimate at its position in the JSON; MIB's folder holds the same graph."""
    out = tmp_path / "run"
    folder = run(RunConfig(model=tiny_dir, pairs=2, level="edges", verify_budget="6edges"), out, progress=False)
    verified, scores = folder.verified_edges, folder.edge_scores
    assert len(verified) == 6 and verified["effect_exact"].notna().all()
    assert main(["export", str(out), "--circuit", "all", "--out", str(tmp_path / "g.json")]) == 0
    back = from_eap_graph(tmp_path / "g.json").set_index("name")
    g = scores.graph
    exact = dict(zip(verified["name"], verified["effect_exact"]))
    for name in verified["name"]:
        w, r = (s.split("@")[0] for s in name.split(" -> "))
        wi, ri = g.writer_index([w])[0], g.reader_index([r])[0]
        per_pos = scores.effect[wi, ri].double().clone()
        for t in range(scores.n_pos):
            per_pos[t] = exact.get(f"{w}@{t} -> {r}@{t}", per_pos[t])
        expected = float(per_pos.nansum())
        assert back.loc[f"{w} -> {r}", "effect"] == pytest.approx(expected, rel=1e-6, abs=1e-9)
        estimate = float(scores.effect[wi, ri].nansum())
        assert expected != pytest.approx(estimate, rel=1e-3, abs=1e-6)  # the export did not write the estimate
    # --score ranking: the ranking score (AtP*: GradDrop's), signed by the estimate, exact where verified
    assert main(["export", str(out), "--circuit", "all", "--score", "ranking", "--out", str(tmp_path / "r.json")]) == 0
    ranked = json.loads((tmp_path / "r.json").read_text())
    same = eap_graph_of(scores, folder.meta["stages"]["edges"]["d_model"], None, verified=verified, score="ranking")
    assert ranked["edges"] == same["edges"] and ranked["edges"] != json.loads((tmp_path / "g.json").read_text())["edges"]
    assert main(["export", str(out), "--mib", str(tmp_path / "sub")]) == 0
    meta = json.loads((out / "run.json").read_text())
    sub = tmp_path / "sub" / mib_folder_name(meta["config"]["task"], meta["config"]["model"]) / "importances.json"
    assert sub.is_file() and "MIB submission folder" in capsys.readouterr().out
    mib = from_eap_graph(sub).set_index("name")
    pd.testing.assert_series_equal(mib["effect"], back["effect"])
    assert sub.parent.name.startswith("ioi_") and load_run(out).verified_edges is not None
    np.testing.assert_array_equal(torch.isfinite(scores.effect).any(-1).sum().item(), len(back))
