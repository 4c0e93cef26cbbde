"""Generation on CPU against llama.cpp: prompt and generated tokens/s, ours vs ``llama-bench``, on the same
random-weight Hugging Face models at the mamba-130m shape (d_model 768, 24 layers, vocab 50,280; Mamba-2 with 24
heads of 64 and d_state 128), converted with llama.cpp's ``convert_hf_to_gguf.py`` (f32 and q8_0).

    python benchmarks/speed/llama_cpp.py --llama-cpp /path/to/llama.cpp --llama-bench /path/to/llama-bench \\
        [--converter-python /path/to/venv/bin/python] [--threads 1] [--reps 3] [--quick]

Paths may also come from $LLAMA_CPP_DIR (the source tree holding convert_hf_to_gguf.py), $LLAMA_BENCH and
$LLAMA_CPP_PYTHON (a Python with gguf-py's requirements, e.g. torch and numpy; default this one). Instead of
llama-bench (which needs llama.cpp's ``common`` library built too), ``--llama-build DIR`` ($LLAMA_CPP_BUILD) names a
build folder holding libllama: the script then compiles llama_decode.c (beside it; llama.h's C API, the same two
measurements) against it. Without either, or without the converter, the script says so and times ours alone.

Workload: batch 1, prompt 512, 128 new tokens (greedy). Ours: ``LanguageModel.from_pretrained`` of the same folder,
``generate`` with a streamer that stamps every token (prompt tok/s = 512 / time to the first new token; generated
tok/s = 127 / the time after it), for the float32 model and for ``quantize("int8")`` and ``quantize("bf16")``.
llama.cpp: ``llama-bench -p 512 -n 128 -r 1`` (its pp512 and tg128 rates; its tg starts from an empty context,
which for these constant-state models costs what decoding after the prompt costs). Every case runs in its own
process, the implementations interleaved within each repetition (ours f32, llama.cpp f32, ours int8, llama.cpp
q8_0, ours bf16), median over repetitions. Also: the bytes of weights one generated token reads, the GB/s that
reaches, and the machine's copy bandwidth (a 1 GiB tensor copy, read + write) measured in the same run.

Writes benchmarks/speed/results/llama_cpp.md (and .json). Figures taken while other work runs on the machine are
provisional: the table records the load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
RESULTS = Path(__file__).parent / "results"
RUN = {"prompt": 512, "new": 128}
QUICK_RUN = {"prompt": 32, "new": 8}
ARCHS = ("mamba", "mamba2")
OURS = ("f32", "int8", "bf16")
GGUF = {"f32": "f32", "int8": "q8_0"}  # our case -> the llama.cpp file it faces


def hf_config(arch: str, quick: bool) -> dict:
    """transformers config of the 130M shape (quick: tiny)."""
    d, layers, vocab = (64, 2, 512) if quick else (768, 24, 50280)
    # llama.cpp's converter pads Mamba-2's vocabulary to a multiple of 16 (and Mamba's to 8) in the file's metadata
    # but not the embedding: give the model the padded size (mamba2-130m's own 50,288).
    vocab = -(vocab // -16) * 16 if arch == "mamba2" else vocab
    if arch == "mamba":
        return dict(vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, state_size=16, expand=2, conv_kernel=4,
                    use_bias=False, use_conv_bias=True, tie_word_embeddings=True, architectures=["MambaForCausalLM"])
    return dict(vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, num_heads=2 * d // 64, head_dim=64,
                state_size=128 if not quick else 16, expand=2, n_groups=1, conv_kernel=4, use_bias=False,
                use_conv_bias=True, tie_word_embeddings=True, architectures=["Mamba2ForCausalLM"])


def make_checkpoint(arch: str, quick: bool, folder: Path) -> Path:
    """A random-weight Hugging Face checkpoint (seed 0), written once and reused."""
    path = folder / f"{arch}{'-quick' if quick else ''}-hf"
    if (path / "config.json").exists():
        return path
    import torch
    import transformers

    torch.manual_seed(0)
    cls = {"mamba": ("MambaConfig", "MambaForCausalLM"), "mamba2": ("Mamba2Config", "Mamba2ForCausalLM")}[arch]
    config = getattr(transformers, cls[0])(**hf_config(arch, quick))
    model = getattr(transformers, cls[1])(config).eval()
    with torch.no_grad():  # A_log, D, dt_bias and norms at non-trivial values, as a trained model's
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "norm_f.weight")):
                p.copy_(1 + 0.1 * torch.randn_like(p))
    tmp = Path(tempfile.mkdtemp(dir=folder))
    model.save_pretrained(tmp)
    tmp.rename(path)
    return path


def convert(checkpoint: Path, outtype: str, llama_cpp: Path, python: str) -> Path:
    out = checkpoint.with_name(f"{checkpoint.name}-{outtype}.gguf")
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        subprocess.run([python, str(llama_cpp / "convert_hf_to_gguf.py"), str(checkpoint), "--outtype", outtype,
                        "--outfile", str(tmp)], check=True, capture_output=True, text=True)
        tmp.rename(out)
    return out


class Stamps:
    """A streamer (put/end): the time of every put; the first put is the prompt, the second the first new token."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def weight_bytes(model) -> int:
    """Bytes of the weights one decoded token reads: every parameter and stored weight, the embedding only where
    the head is tied to it (else a token reads one row of it)."""
    emb = model.embedding.weight
    tied = getattr(model.lm_head, "weight", None) is emb
    seen, total = set() if tied else {emb.data_ptr()}, 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.numel() and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def ours_worker(checkpoint: str, case: str, quick: bool, threads: int) -> dict:
    import torch

    from ssmzoo.models.lm import LanguageModel

    torch.set_num_threads(threads)
    run = QUICK_RUN if quick else RUN
    model = LanguageModel.from_pretrained(checkpoint).eval()
    if case != "f32":
        model.quantize(case)
    ids = torch.randint(0, model.vocab_size, (1, run["prompt"]), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.generate(ids[:, :16], max_new_tokens=4)  # warm-up: kernels built and loaded
        stamps = Stamps()
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=run["new"], streamer=stamps)
        end = time.perf_counter()
    first = stamps.times[1]
    decode_s = end - first
    return {"prompt_tok_s": run["prompt"] / (first - start), "gen_tok_s": (run["new"] - 1) / decode_s,
            "bytes_per_token": weight_bytes(model), "tokens": out[0, run["prompt"]:].tolist()}


def build_harness(build: Path, source: Path, cache: Path) -> str | None:
    """llama_decode.c compiled against the libllama of a llama.cpp build folder (headers from its source tree)."""
    libs = sorted({p.parent for p in build.rglob("libllama.so*")})
    if not libs:
        print(f"llama.cpp skipped: no libllama.so under {build}")
        return None
    out = cache / "llama_decode"
    cmd = ["cc", "-O2", str(Path(__file__).with_name("llama_decode.c")), f"-I{source / 'include'}",
           f"-I{source / 'ggml' / 'include'}", f"-L{libs[0]}", "-lllama", "-lggml", "-lggml-base",
           f"-Wl,-rpath,{libs[0]}", "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        print(f"llama.cpp skipped: llama_decode.c did not build: {proc.stderr.strip()[-300:]}")
        return None
    return str(out)


def llama_bench(binary: str, gguf: Path, quick: bool, threads: int) -> dict:
    run = QUICK_RUN if quick else RUN
    if Path(binary).name == "llama_decode":  # our harness: MODEL PROMPT NEW THREADS
        cmd = [binary, str(gguf), str(run["prompt"]), str(run["new"]), str(threads)]
    else:
        cmd = [binary, "-m", str(gguf), "-p", str(run["prompt"]), "-n", str(run["new"]), "-t", str(threads), "-r", "1",
               "-o", "json"]
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
    rows = json.loads(proc.stdout)
    rate = {("prompt" if r["n_prompt"] else "gen"): r["avg_ts"] for r in rows}
    return {"prompt_tok_s": rate["prompt"], "gen_tok_s": rate["gen"], "bytes_per_token": gguf.stat().st_size}


def copy_bandwidth(threads: int) -> float:
    """GB/s of a 1 GiB float32 copy (bytes read + bytes written), the best of 5."""
    import torch

    torch.set_num_threads(threads)
    a = torch.ones(2 ** 28)
    b = torch.empty_like(a)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        b.copy_(a)
        best = min(best, time.perf_counter() - start)
    return 2 * a.numel() * 4 / best / 1e9


def _subprocess(args: list[str], threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if proc.returncode:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-cpp", default=os.environ.get("LLAMA_CPP_DIR"))
    parser.add_argument("--llama-bench", default=os.environ.get("LLAMA_BENCH"))
    parser.add_argument("--llama-build", default=os.environ.get("LLAMA_CPP_BUILD"))
    parser.add_argument("--converter-python", default=os.environ.get("LLAMA_CPP_PYTHON", sys.executable))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "ssmzoo" / "llama_cpp_bench"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("CHECKPOINT", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(ours_worker(args.worker[0], args.worker[1], args.quick, args.threads)))
        return
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    bench = args.llama_bench if args.llama_bench and Path(args.llama_bench).is_file() else shutil.which("llama-bench")
    converter = Path(args.llama_cpp) if args.llama_cpp and (Path(args.llama_cpp) / "convert_hf_to_gguf.py").is_file() \
        else None
    if bench is None and args.llama_build and converter is not None:
        bench = build_harness(Path(args.llama_build), converter, cache)
    if bench is None or converter is None:
        print(f"llama.cpp skipped: {'no llama-bench (--llama-bench / $LLAMA_BENCH)' if bench is None else ''}"
              f"{' ' if bench is None and converter is None else ''}"
              f"{'no convert_hf_to_gguf.py (--llama-cpp / $LLAMA_CPP_DIR)' if converter is None else ''}")
    load_before = _load()
    bandwidth = copy_bandwidth(args.threads)
    samples: dict[tuple[str, str], list[dict]] = {}
    files: dict[tuple[str, str], Path] = {}
    for arch in args.archs:
        checkpoint = make_checkpoint(arch, args.quick, cache)
        if bench and converter:
            for case, outtype in GGUF.items():
                try:
                    files[arch, case] = convert(checkpoint, outtype, converter, args.converter_python)
                except subprocess.CalledProcessError as e:
                    print(f"{arch} {outtype}: conversion failed: {(e.stderr or '').strip().splitlines()[-1:]}")
        for _ in range(args.reps):
            for case in OURS:
                samples.setdefault((arch, f"ours {case}"), []).append(
                    _subprocess(["--worker", str(checkpoint), case, "--threads", str(args.threads)]
                                + (["--quick"] if args.quick else []), args.threads))
                if (arch, case) in files:
                    try:
                        result = llama_bench(bench, files[arch, case], args.quick, args.threads)
                    except (subprocess.CalledProcessError, ValueError, KeyError) as e:
                        result = {"error": str(e)[-200:]}
                    samples.setdefault((arch, f"llama.cpp {GGUF[case]}"), []).append(result)
    load_after = _load()
    rows = []
    for (arch, impl), runs in samples.items():
        ok = [r for r in runs if "error" not in r]
        row = {"arch": arch, "impl": impl, "runs": len(runs)}
        if not ok:
            row["error"] = runs[0]["error"]
        else:
            for key in ("prompt_tok_s", "gen_tok_s"):
                row[key] = statistics.median(r[key] for r in ok)
                row[key + "_spread"] = max(r[key] for r in ok) / min(r[key] for r in ok)
            row["bytes_per_token"] = ok[0]["bytes_per_token"]
            row["gb_s"] = row["gen_tok_s"] * row["bytes_per_token"] / 1e9
        rows.append(row)
    text = table(rows, bandwidth, load_before, load_after, args)
    print(text)
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "llama_cpp.md").write_text(text)
        (RESULTS / "llama_cpp.json").write_text(json.dumps({"rows": rows, "copy_gb_s": bandwidth, "load": [load_before,
                                                            load_after], "threads": args.threads}, indent=1))


def table(rows: list[dict], bandwidth: float, load_before: str, load_after: str, args) -> str:
    run = QUICK_RUN if args.quick else RUN
    by = {(r["arch"], r["impl"]): r for r in rows}
    lines = [f"# Generation vs llama.cpp (CPU, {args.threads} thread{'s' if args.threads > 1 else ''}, batch 1, "
             f"prompt {run['prompt']}, {run['new']} new tokens{', QUICK' if args.quick else ''})", "",
             f"Load average before / after: {load_before} / {load_after}. Copy bandwidth (read + write): "
             f"{bandwidth:.1f} GB/s. Median of {args.reps} interleaved repetitions (spread max/min in brackets).", "",
             "| model | implementation | prompt tok/s | generated tok/s | vs llama.cpp (prompt / gen) | weight MB read per token | GB/s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['arch']} | {r['impl']} | error: {r['error']} | | | | |")
            continue
        peer_name = {"ours f32": "llama.cpp f32", "ours int8": "llama.cpp q8_0", "ours bf16": "llama.cpp f32"}.get(r["impl"])
        peer = by.get((r["arch"], peer_name)) if peer_name else None
        ratio = ""
        if peer and "error" not in peer:
            ratio = (f"{r['prompt_tok_s'] / peer['prompt_tok_s']:.2f}x / {r['gen_tok_s'] / peer['gen_tok_s']:.2f}x "
                     f"(vs {peer_name.split()[1]})")
        lines.append(f"| {r['arch']} | {r['impl']} | {r['prompt_tok_s']:.1f} ({r['prompt_tok_s_spread']:.2f}) | "
                     f"{r['gen_tok_s']:.1f} ({r['gen_tok_s_spread']:.2f}) | {ratio} | {r['bytes_per_token'] / 1e6:.0f} | "
                     f"{r['gb_s']:.1f} |")
    lines += ["", "llama.cpp's bytes per token are its GGUF file's size (the tied embedding is its head); ours count "
              "every weight the model holds, the embedding only as a tied head. GB/s = generated tok/s x those bytes."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
