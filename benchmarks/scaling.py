"""Growth curves: time and peak memory of AtP, AtP* and one plain forward+backward pass.

Sweeps (each table's ratios come from this one run):
- sequence length T (SmolLM2-135M, one pair, all node kinds),
- number of prompt pairs in one batch (SmolLM2),
- width and depth (random Llama configs, up to ~1B parameters with 4 layers),
- precision: bfloat16/float16 AtP* against float32 AtP* on SmolLM2 IOI (Spearman, top-k recall).

Every (model, T, pairs, method) runs in its own process (one torch thread): a *time* child with
glibc's default allocator (time, and peak RSS as a user sees it) and, for the T sweep, a *memory*
child with ``MALLOC_MMAP_THRESHOLD_=131072`` (every freed tensor of >= 128 KB goes back to the OS,
so peak RSS tracks the peak of live tensors: the number a GPU's ``max_memory_allocated`` gives).
Memory is the peak RSS above the process after a warm-up run of the same method on 8 tokens (weights
paged in, one-time initialisations done; :mod:`benchmarks.isolated` resets the peak there, on Linux).

    python -m benchmarks.scaling                 # ~10 min on 2 CPU cores; writes docs/scaling.md
    python -m benchmarks.scaling --max-len 512   # adds T = 512 (AtP* alone takes minutes there)
    python -m benchmarks.scaling --quick --out /tmp/s.md   # seconds: tiny config, in-process (tests)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path

import torch

import atpstar
from benchmarks.isolated import answer, best_of, peak_of, run_child

METHODS = {"fwd+bwd": None, "AtP": dict(qk_fix=False, graddrop=False), "AtP*": dict(qk_fix=True, graddrop=True)}
WIDTHS = [(512, 4), (1024, 4), (2048, 4), (4096, 4), (1024, 8)]
QUICK_WIDTHS = [(32, 2, 512), (64, 2, 512)]
DOC = Path(__file__).resolve().parents[1] / "docs" / "scaling.md"
BEGIN, END = "<!-- measured: begin (benchmarks/scaling.py) -->", "<!-- measured: end -->"


# ----------------------------------------------------------------------------- models and pairs


def llama(d_model: int, layers: int, vocab: int = 49152, seed: int = 0) -> atpstar.Model:
    """A random Llama of width ``d_model`` (heads of 64, 4 query heads per kv head, d_mlp = 8/3 d).
    Weights are a cheap deterministic fill, not a trained model: cost does not depend on values."""
    from transformers import AutoModelForCausalLM, LlamaConfig
    from transformers.initialization import no_init_weights

    heads = max(d_model // 64, 1)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=d_model, intermediate_size=(8 * d_model // 3 + 63) // 64 * 64,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(heads // 4, 1),
                      max_position_embeddings=2048, tie_word_embeddings=True)
    with no_init_weights():
        hf = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    pattern = torch.rand(1 << 20, generator=torch.Generator().manual_seed(seed)).sub_(0.5).mul_(0.07)
    with torch.no_grad():
        for p in hf.parameters():
            if p.ndim == 1:
                p.fill_(1.0)
                continue
            flat = p.view(-1)
            for lo in range(0, flat.numel(), pattern.numel()):
                chunk = flat[lo:lo + pattern.numel()]
                chunk.copy_(pattern[: chunk.numel()])
    return atpstar.load_model(hf, tokenizer=_NoTokenizer())


class _NoTokenizer:
    def __call__(self, text, add_special_tokens=True):
        raise RuntimeError("random benchmark models have no tokenizer")


def params(model) -> int:
    return sum(p.numel() for p in model.hf.parameters())


def make_pairs(model, n_tok: int, n_pairs: int, seed: int = 0) -> atpstar.PromptPairs:
    """``n_pairs`` pairs of exactly ``n_tok`` tokens. SmolLM2: IOI pairs behind a filler text, a
    different filler for clean and noise (every node differs: the worst case for memory). Random
    models: random ids, half the positions changed."""
    gen = torch.Generator().manual_seed(seed)
    if isinstance(model.tokenizer, _NoTokenizer):
        clean = torch.randint(0, model.vocab_size, (n_pairs, n_tok), generator=gen)
        noise = torch.where(torch.rand(n_pairs, n_tok, generator=gen) < 0.5, clean,
                            torch.randint(0, model.vocab_size, (n_pairs, n_tok), generator=gen))
        answer = torch.randint(0, model.vocab_size, (n_pairs,), generator=gen)
        return atpstar.PromptPairs.from_ids(clean, noise, answer.tolist(), ((answer + 1) % model.vocab_size).tolist())
    ioi = atpstar.tasks.ioi(model, n=n_pairs, seed=seed)
    text = (Path(atpstar.tasks.__file__).parent / "data" / "rand.txt").read_text()
    filler = torch.tensor(model.tokenizer(text, add_special_tokens=False)["input_ids"])
    clean, noise = [], []
    for i in range(n_pairs):
        need = n_tok - len(ioi.clean[i])
        if need < 0 or 2 * need + 64 * i > len(filler):
            raise ValueError(f"cannot build {n_tok}-token pairs: IOI prompts have {len(ioi.clean[i])} tokens")
        start = 64 * i
        clean.append(torch.cat([filler[start:start + need], ioi.clean[i]]))
        noise.append(torch.cat([filler[len(filler) - need - start:len(filler) - start], ioi.noise[i]]))
    return atpstar.PromptPairs(tuple(clean), tuple(noise), ioi.answer, ioi.distractor)


def warm_pairs(model) -> atpstar.PromptPairs:
    """One pair of 8 random tokens (any model) for a warm-up run."""
    ids = torch.randint(0, model.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    return atpstar.PromptPairs.from_ids(ids[:1], ids[1:], [1], [2])


# ----------------------------------------------------------------------------- one measurement


def run_method(model, pairs, method: str) -> None:
    if METHODS[method] is None:  # one plain forward + backward of the same batch
        from atpstar.substrate.capture import Intervention, run

        metric = atpstar.metrics.resolve(None, pairs)
        ids = torch.stack(list(pairs.clean))
        with torch.enable_grad():
            metric(run(model, ids, Intervention(model, grad=True)), pairs).sum().backward()
        return
    atpstar.atp(model, pairs, kinds="all", batch_size=len(pairs), progress=False, **METHODS[method])


def _trim() -> None:
    """Return the C heap's free pages to the OS (glibc), so the baseline RSS holds live memory only."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure(spec: dict, settle: bool = True) -> dict:
    """Time and peak memory of one method on one model/batch, in this process (``settle``: collect
    garbage and return free heap pages first, for a clean RSS baseline; skipped in quick mode)."""
    model = atpstar.load_model("default") if spec["model"] == "smollm" else llama(*spec["model"])
    pairs = make_pairs(model, spec["T"], spec["pairs"])
    run_method(model, warm_pairs(model), spec["method"])  # weights paged in, one-time initialisations done
    if settle:
        gc.collect()
        _trim()
    _, seconds, peak = peak_of(lambda: run_method(model, pairs, spec["method"]))
    if spec.get("repeat") and seconds < 5:  # short runs: take the better of two
        seconds = min(seconds, best_of(lambda: run_method(model, pairs, spec["method"]), 1))
    return {"seconds": seconds, "peak_mb": peak.growth_mb, "params": params(model)}


def child(spec: dict, live_memory: bool, threads: int) -> dict:
    """:func:`measure` in a fresh process (``live_memory``: freed tensors go back to the OS at once)."""
    env = {"MALLOC_MMAP_THRESHOLD_": "131072"} if live_memory else {}
    return run_child("benchmarks.scaling", ["--child", json.dumps(spec), "--threads", threads], threads, env)


# ----------------------------------------------------------------------------- sweeps


def secs(x: float) -> str:
    return f"{x:.2f} s" if x < 10 else f"{x:.1f} s"


class Sweep:
    def __init__(self, args):
        self.args, self.lines = args, []

    def get(self, spec: dict, live: bool = False) -> dict:
        if self.args.quick:
            return measure(spec, settle=False)
        return child({**spec, "repeat": not live}, live, self.args.threads)

    def both(self, spec: dict, methods) -> tuple[dict, dict]:
        """{method: time measurement}, {method: live-memory measurement} (see the module docstring)."""
        return ({m: self.get({**spec, "method": m}) for m in methods},
                {m: self.get({**spec, "method": m}, live=True) for m in methods})

    def emit(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def lengths(self, model: str, lengths: list[int]) -> None:
        self.emit("### Sequence length (one pair, all node kinds)\n")
        self.emit("| T | fwd+bwd | AtP | AtP* | AtP* / token | fwd+bwd peak | AtP peak | AtP* peak | "
                  "AtP* peak, default malloc |\n|---|---|---|---|---|---|---|---|---|")
        for n_tok in lengths:
            t, live = self.both({"model": model, "T": n_tok, "pairs": 1}, METHODS)
            fb, fb_mem, fb_rss = t["fwd+bwd"]["seconds"], live["fwd+bwd"]["peak_mb"], t["fwd+bwd"]["peak_mb"]
            self.emit(f"| {n_tok} | {fb:.2f} s | {t['AtP']['seconds']:.2f} s ({t['AtP']['seconds'] / fb:.1f}x) | "
                      f"{secs(t['AtP*']['seconds'])} ({t['AtP*']['seconds'] / fb:.1f}x) | "
                      f"{1000 * t['AtP*']['seconds'] / n_tok:.0f} ms | {fb_mem:.0f} MB | "
                      f"{live['AtP']['peak_mb']:.0f} MB ({live['AtP']['peak_mb'] / max(fb_mem, 1e-3):.2f}x) | "
                      f"**{live['AtP*']['peak_mb']:.0f} MB ({live['AtP*']['peak_mb'] / max(fb_mem, 1e-3):.2f}x)** | "
                      f"{t['AtP*']['peak_mb']:.0f} MB ({t['AtP*']['peak_mb'] / max(fb_rss, 1):.2f}x fwd+bwd's {fb_rss:.0f}) |")

    def pairs(self, model: str, n_tok: int, counts: list[int]) -> None:
        self.emit(f"\n### Prompt pairs in one batch (T = {n_tok}, all node kinds)\n")
        self.emit("| pairs | fwd+bwd | AtP* | AtP* per pair | fwd+bwd peak | AtP* peak |\n|---|---|---|---|---|---|")
        for n in counts:
            t, live = self.both({"model": model, "T": n_tok, "pairs": n}, ("fwd+bwd", "AtP*"))
            fb, star = t["fwd+bwd"], t["AtP*"]
            fb_mem, star_mem = live["fwd+bwd"]["peak_mb"], live["AtP*"]["peak_mb"]
            self.emit(f"| {n} | {fb['seconds']:.2f} s | {secs(star['seconds'])} ({star['seconds'] / fb['seconds']:.1f}x) | "
                      f"{secs(star['seconds'] / n)} | {fb_mem:.0f} MB | {star_mem:.0f} MB ({star_mem / max(fb_mem, 1e-3):.2f}x) |")

    def widths(self, shapes: list, n_tok: int) -> None:
        self.emit(f"\n### Width and depth (random Llama, T = {n_tok}, one pair, all node kinds)\n")
        self.emit("| d_model x layers | parameters | nodes | fwd+bwd | AtP | AtP* | AtP* per layer | fwd+bwd peak | "
                  "AtP* peak |\n|---|---|---|---|---|---|---|---|---|")
        for d, layers, *vocab in shapes:
            spec = {"model": [d, layers, *vocab], "T": n_tok, "pairs": 1}
            t = {m: self.get({**spec, "method": m}) for m in METHODS}
            live = {m: self.get({**spec, "method": m}, live=True) for m in ("fwd+bwd", "AtP*")}
            fb, atp, star = t["fwd+bwd"], t["AtP"], t["AtP*"]
            fb_mem, star_mem = live["fwd+bwd"]["peak_mb"], live["AtP*"]["peak_mb"]
            d_mlp, heads = (8 * d // 3 + 63) // 64 * 64, max(d // 64, 1)
            nodes = layers * n_tok * (2 * heads + 2 * max(heads // 4, 1) + d_mlp)
            self.emit(f"| {d} x {layers} | {fb['params'] / 1e6:.0f}M | {nodes / 1e6:.2f}M | {fb['seconds']:.2f} s | "
                      f"{secs(atp['seconds'])} ({atp['seconds'] / fb['seconds']:.1f}x) | {secs(star['seconds'])} "
                      f"({star['seconds'] / fb['seconds']:.1f}x) | {star['seconds'] / layers:.2f} s | "
                      f"{fb_mem:.0f} MB | {star_mem:.0f} MB ({star_mem / max(fb_mem, 1e-3):.2f}x) |")

    def precision(self, model_spec, n_pairs: int) -> None:
        from scipy.stats import spearmanr

        self.emit(f"\n### Half precision (AtP* on {n_pairs} IOI pairs, all node kinds, against float32 AtP*)\n")
        self.emit("| dtype | time / pair | Spearman (all nodes) | Spearman (attention) | recall@20 | recall@100 | "
                  "recall@1000 |\n|---|---|---|---|---|---|---|")
        frames = {}
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            model = self._precision_model(model_spec, dtype)
            pairs = atpstar.tasks.ioi(model, n=n_pairs, seed=0) if model_spec == "smollm" else make_pairs(model, 12, n_pairs)
            start = time.perf_counter()
            frame = atpstar.atp(model, pairs, kinds="all", progress=False).to_frame()
            seconds = (time.perf_counter() - start) / n_pairs
            frames[dtype] = frame.set_index("name")
            ref = frames[torch.float32]
            both = ref[["score", "kind"]].join(frames[dtype]["score"].rename("score_half"))
            attn = both[both["kind"] != "neuron"]
            recall = [len(set(ref.index[:k]) & set(frames[dtype].index[:k])) / k for k in (20, 100, 1000)]
            self.emit(f"| {str(dtype).removeprefix('torch.')} | {seconds:.2f} s | "
                      f"{spearmanr(both['score'], both['score_half']).statistic:.4f} | "
                      f"{spearmanr(attn['score'], attn['score_half']).statistic:.4f} | " + " | ".join(f"{r:.2f}" for r in recall) + " |")

    @staticmethod
    def _precision_model(spec, dtype):
        if spec == "smollm":
            return atpstar.load_model("default", dtype=dtype)
        model = llama(*spec)
        model.hf.to(dtype)
        return model


def write_doc(path: Path, lines: list[str], header: str) -> None:
    body = "\n".join([BEGIN, header, "", *lines, END])
    text = path.read_text() if path.exists() else f"# Scaling\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    path.write_text(head + body + rest.split(END, 1)[1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny random config, in-process, seconds")
    parser.add_argument("--max-len", type=int, default=256, help="longest T of the SmolLM2 sweep (16 ... max-len)")
    parser.add_argument("--lengths", default="", help="comma-separated T values replacing 16 ... max-len")
    parser.add_argument("--out", type=Path, default=DOC, help="markdown file to update (between the markers)")
    parser.add_argument("--skip", default="", help="comma-separated sweeps to skip: lengths,pairs,widths,precision")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        answer(measure(json.loads(args.child)))
        return
    sweep, skip = Sweep(args), set(args.skip.split(","))
    model = [48, 2, 512] if args.quick else "smollm"
    start = time.perf_counter()
    if "lengths" not in skip:
        top = 16 if args.quick else args.max_len
        lengths = [t for t in (8, 16, 32, 64, 128, 256, 512, 1024) if (16 if not args.quick else 8) <= t <= top]
        sweep.lengths(model, [int(t) for t in args.lengths.split(",")] if args.lengths else lengths)
    if "pairs" not in skip:
        sweep.pairs(model, 8 if args.quick else 32, [1, 2] if args.quick else [1, 2, 4, 8])
    if "widths" not in skip:
        sweep.widths(QUICK_WIDTHS if args.quick else WIDTHS, 8 if args.quick else 32)
    if "precision" not in skip:
        sweep.precision(model, 2 if args.quick else 3)
    header = (f"Measured by `python -m benchmarks.scaling` on {os.cpu_count()} CPU cores, torch {torch.__version__}, "
              f"{args.threads} torch thread(s), in {time.perf_counter() - start:.0f} s.")
    sweep.emit(f"\n{header}")
    write_doc(args.out, sweep.lines[:-1], header)


if __name__ == "__main__":
    main()
