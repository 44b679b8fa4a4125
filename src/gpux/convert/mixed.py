"""``--quantize int8-mixed``: dynamic int8 with the few nodes this CPU's int8 kernels hurt most kept in fp32.

Kept apart from :mod:`gpux.convert.optimize` (which calls :func:`int8_mixed` as one of its steps) because the
search has its own machinery: :class:`_Mixer` splices graphs in which only chosen nodes are int8, and
:func:`_sensitivities` ranks nodes by what each costs end to end on this CPU.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from gpux.convert.optimize import CALIBRATION, cosines, int8_dynamic, parity
from gpux.errors import ConvertError
from gpux.store.bundle import Bundle

#: int8-mixed refuses rather than keep more than this share of the quantisable nodes in fp32: past it the
#: variant is mostly fp32 and its speed gain mostly gone.
MIXED_MAX_FP32_SHARE = 0.5


class _Mixer:
    """Graphs in which only chosen nodes are int8, spliced from the fp32 graph and the all-int8 one.

    quantize_dynamic spends about 1.5 s per call on MiniLM re-loading, shape-inferring and saving the whole
    model; the sensitivity pass needs one graph per quantisable node, so it splices instead: for each node
    that quantize_dynamic changed, the int8 nodes (and initializers) that now produce its output are found by
    walking back from that output to tensors the fp32 graph already has, and put in place of the fp32 node.
    The result runs the same onnxruntime int8 kernels as the real variant, with the same inferred shapes.
    The stored variant itself is made by quantize_dynamic with ``nodes_to_exclude`` and parity-checked again.
    """

    def __init__(self, fp32_path: Path, int8_path: Path, work: Path) -> None:
        import onnx

        fp32 = onnx.load(str(fp32_path))
        int8 = onnx.load(str(int8_path))
        known = {i.name for i in fp32.graph.input} | {o for n in fp32.graph.node for o in n.output}
        producer = {o: n for n in int8.graph.node for o in n.output}
        inits = {t.name: t for t in int8.graph.initializer}
        same = {n.SerializeToString() for n in fp32.graph.node}
        #: fp32 node name -> the int8 nodes replacing it, in graph order
        self.parts: dict[str, list[Any]] = {}
        self.op_type: dict[str, str] = {}
        order = {id(n): i for i, n in enumerate(int8.graph.node)}
        # quantize_dynamic's output carries inferred shapes, and onnxruntime picks some int8 fusions by them
        # (without them MiniLM's all-int8 graph measured cosine 0.97695 instead of 0.97775): splices keep them.
        self.value_info = list(int8.graph.value_info)
        self.opsets, self.ir_version = list(int8.opset_import), int8.ir_version  # int8 ops may need com.microsoft
        extra: dict[str, Any] = {}
        for node in fp32.graph.node:
            first = producer.get(node.output[0])
            if first is None or first.SerializeToString() in same:
                continue  # left as it was: not quantisable here
            nodes: dict[int, Any] = {}
            todo = [first]
            while todo:
                n = todo.pop()
                if id(n) in nodes:
                    continue
                nodes[id(n)] = n
                for t in n.input:
                    if t in inits:
                        extra[t] = inits[t]
                    elif t and t not in known and t in producer:
                        todo.append(producer[t])
            self.parts[node.name] = sorted(nodes.values(), key=lambda n: order[id(n)])
            self.op_type[node.name] = node.op_type
        # Every weight, fp32 and int8, written once to one file; each spliced graph only points into it, so
        # making one costs a few kB of protobuf instead of copying and serializing the whole model.
        have = {t.name for t in fp32.graph.initializer}
        fp32.graph.initializer.extend(t for name, t in extra.items() if name not in have)
        self.work = work
        onnx.save_model(fp32, str(work / "mixed-weights.onnx"), save_as_external_data=True,
                        all_tensors_to_one_file=True, location="mixed-weights.bin", size_threshold=0)
        self.fp32 = onnx.load(str(work / "mixed-weights.onnx"), load_external_data=False)
        self.inits = {t.name: t for t in self.fp32.graph.initializer}

    def build(self, int8: set[str]) -> Path:
        """The fp32 graph with the nodes in ``int8`` replaced by their int8 parts, written next to the weights."""
        import onnx

        graph = self.fp32.graph
        nodes: list[Any] = []
        added: set[str] = set()
        for n in graph.node:
            if n.name not in int8:
                nodes.append(n)
                continue
            for part in self.parts[n.name]:
                if part.output[0] not in added:  # Q, K and V share their input's DynamicQuantizeLinear
                    added.add(part.output[0])
                    nodes.append(part)
        used = {t for n in nodes for t in n.input}
        made = {o for n in nodes for o in n.output}
        model = onnx.helper.make_model(
            onnx.helper.make_graph(nodes, graph.name, list(graph.input), list(graph.output),
                                   # quantize_dynamic may turn a weight into a DequantizeLinear's output of
                                   # the same name (a Gemm bias shared with another node): that one wins
                                   [t for name, t in self.inits.items() if name in used and name not in made],
                                   value_info=[v for v in self.value_info if v.name in made]),
            opset_imports=self.opsets, ir_version=self.ir_version)
        path = self.work / "mixed.onnx"
        path.write_bytes(model.SerializeToString())
        return path


def _user_view(out: np.ndarray, feed: dict[str, np.ndarray], mode: str) -> np.ndarray:
    """What users get from a graph output: pooled sentence embeddings from token states, else as is."""
    from gpux.tasks.embeddings import pool

    return pool(out, feed["attention_mask"], mode) if out.ndim == 3 else out


def _sensitivities(src: Path, mixer: _Mixer, base: Bundle) -> dict[str, float]:
    """Each quantisable node's end-to-end cost: mean (1 - cosine) against fp32, over the CALIBRATION sentences,
    of the user-visible output of the graph in which only that node is int8 (this CPU's kernels)."""
    import onnxruntime as ort

    from gpux.tasks.text import TextEncoder

    encode = TextEncoder(base)
    mode = encode.config.get("pooling", "mean")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # unused fp32 weights of int8 nodes are dropped with a warning each
    # Batches of 8 sentences of similar length: 8 runs per node instead of 64 (the pass is most of the time),
    # with little padding in the activation ranges; same top-ranked nodes on MiniLM as one at a time.
    by_length = sorted(CALIBRATION, key=lambda text: len(encode([text])["input_ids"][0]))
    feeds = [encode(by_length[i:i + 8]) for i in range(0, len(by_length), 8)]
    ref_sess = ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    ref = [_user_view(ref_sess.run(None, f)[0].astype(np.float32), f, mode) for f in feeds]
    del ref_sess

    def one(name: str) -> float:
        sess = ort.InferenceSession(str(mixer.build({name})), opts, providers=["CPUExecutionProvider"])
        errs = [1.0 - cosines(r, _user_view(sess.run(None, f)[0].astype(np.float32), f, mode))
                for f, r in zip(feeds, ref)]
        return float(np.concatenate(errs).mean())

    return {name: one(name) for name in mixer.parts}


def int8_mixed(src: Path, dst: Path, base: Bundle, is_classifier: bool, cos_floor: float,
                agree_floor: float) -> dict[str, Any]:
    """Dynamic int8 with the fewest most-sensitive nodes kept fp32 that bring parity over the floors.

    Why: int8 kernels differ by ISA, and on AVX-512 VNNI MiniLM's dynamic int8 lands at cosine 0.978 where
    an AVX2 CPU gave 0.979; a fixed recipe cannot promise a floor on every CPU, a search on the CPU at
    hand can. Steps: (1) every quantisable node int8 (per-channel weights), stored as is if that passes;
    (2) else each node's sensitivity (_sensitivities: end to end, with this CPU's kernels; ranking by each
    node's own output error instead did not predict what helps); (3) nodes ranked by it, the fewest
    top-ranked ones kept fp32 that bring parity on SENTENCES (held apart from CALIBRATION) over the floors,
    found by bisection (parity rose with every 2 more nodes on MiniLM); at most MIXED_MAX_FP32_SHARE of the
    nodes, else refused with the numbers. Returns what the manifest records.
    """
    start = time.perf_counter()
    all_int8 = dst.with_name(f"{dst.stem}-all.onnx")
    int8_dynamic(src, all_int8)
    mixer = _Mixer(src, all_int8, dst.parent)
    names = list(mixer.parts)
    if not names:
        raise ConvertError("int8-mixed found nothing to quantise in this graph",
                           hint="the graph has no weight MatMul/Gemm/Gather nodes quantize_dynamic handles")
    tried: dict[int, dict[str, Any]] = {}
    ranked: list[str] = names  # until ranked by sensitivity: only ranked[k:] with k == 0 is built before that

    def check(k: int) -> bool:
        if k not in tried:
            tried[k] = parity(base, mixer.build(set(ranked[k:])), is_classifier)
        r = tried[k]
        return bool(r["cosine_min"] >= cos_floor and r.get("argmax_agreement", 1.0) >= agree_floor)

    scores: dict[str, float] = {}
    ranking_s = 0.0
    most = max(1, int(len(names) * MIXED_MAX_FP32_SHARE))
    if check(0):  # all int8 already holds (DistilBERT here): no sensitivity pass needed
        k = 0
    else:
        scores = _sensitivities(src, mixer, base)
        ranked = sorted(names, key=lambda n: -scores[n])
        ranking_s = time.perf_counter() - start
        if not check(most):
            top = tried[most]
            raise ConvertError(
                f"the int8-mixed variant cannot reach cosine {cos_floor}"
                + (f" / argmax agreement {agree_floor:.0%}" if is_classifier else "")
                + f": all {len(names)} quantisable nodes int8 gave cosine {tried[0]['cosine_min']:.5f}, and with "
                f"the {most} most sensitive kept fp32 (the most allowed) cosine {top['cosine_min']:.5f}, max-abs "
                f"{top['max_abs']:.3g}" + (f", argmax agreement {top['argmax_agreement']:.1%}" if is_classifier else ""),
                hint="nothing was stored; lower --min-cosine/--min-agreement, or keep this model fp32/fp16")
        lo, hi = 0, most  # lo fails, hi passes
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if check(mid) else (mid, hi)
        k = hi
    if k == 0:
        all_int8.replace(dst)
    else:
        int8_dynamic(src, dst, tuple(ranked[:k]))
        all_int8.unlink(missing_ok=True)
    counts: dict[str, list[int]] = {}
    for n in names:
        counts.setdefault(mixer.op_type[n], [0, 0])[1] += 1
        if n not in ranked[:k]:
            counts[mixer.op_type[n]][0] += 1
    return {
        "fp32_nodes": [{"name": n, "op_type": mixer.op_type[n], "sensitivity": scores[n]} for n in ranked[:k]],
        "int8_nodes": len(names) - k, "quantisable_nodes": len(names),
        "int8_of_quantisable_by_op": {op: f"{a}/{b}" for op, (a, b) in sorted(counts.items())},
        "sensitivity": "mean (1 - cosine) vs fp32 over the CALIBRATION sentences of the output with only that "
                       "node int8",
        "search": [{"fp32_nodes": kk, "cosine_min": r["cosine_min"],
                    **({"argmax_agreement": r["argmax_agreement"]} if "argmax_agreement" in r else {})}
                   for kk, r in sorted(tried.items())],
        "ranking_seconds": round(ranking_s, 3), "max_fp32_share": MIXED_MAX_FP32_SHARE,
    }
