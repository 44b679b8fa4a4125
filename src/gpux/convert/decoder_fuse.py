"""A fast path for LLaMA-style decoders: each layer's attention as onnxruntime's fused kernels, same interface.

What the exporter writes for one attention layer is ~90 small nodes (reshapes, rotate_half, repeat_kv,
mask arithmetic, shape bookkeeping); on SmolLM2-135M they cost two thirds of a decode step (profile in
docs/generate.md). This pass rewrites, per layer, everything between the q/k/v projections and ``o_proj``
into::

    MatMul(x, [Wq|Wk|Wv]) -> Split -> RotaryEmbedding(q), RotaryEmbedding(k)     (com.microsoft)
    GroupQueryAttention(q, k, v, past_k, past_v, seqlens_k, total_len, attention_bias=<exporter's 4D mask>)

and fuses residual Add + RMSNorm (onnxruntime's transformer optimizer). The graph keeps its interface
(gpux.convert.decoder): the same inputs and outputs, ``present = concat(past, new)``, rotary positions from
the graph's own ``position_ids``, and the exporter's causal + padding mask as the attention bias, so
left-padded batches behave as transformers does. The rotary tables come from the graph's own ``inv_freq``
(scaled RoPE variants included) and attention scaling constant.

It matches a pattern, not a family name: layers named ``/model/model/layers.{i}/self_attn/{q,k,v,o}_proj``
by the TorchScript export of gpux's wrapper, one Softmax per layer, one rotary ``Cos``. A graph it does not
match is left as it is (:class:`NoMatch`, with why), and a graph it rewrites must pass the same parity
check against PyTorch as the plain one, or the plain one is kept: a family whose attention differs (q/k
norms, other scaling) loses the fast path, never correctness.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import Any

import numpy as np


class NoMatch(Exception):
    """The graph is not the pattern this pass rewrites; the message says which part was missing."""


def _const_value(g: Any, name: str, producers: dict[str, Any]) -> np.ndarray:
    from onnx import numpy_helper

    for init in g.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    n = producers.get(name)
    if n is not None and n.op_type == "Constant":
        return numpy_helper.to_array(n.attribute[0].t)
    raise KeyError(name)


def fuse(in_path: str, out_path: str, num_heads: int, kv_heads: int, head_dim: int, hidden_size: int,
         max_positions: int = 8192, fuse_norms: bool = True, pack_qkv: bool = True,
         rotary_in_gqa: bool = False) -> dict[str, Any]:
    """Rewrite ``in_path`` into ``out_path`` (see the module docstring); :class:`NoMatch` if it is not the pattern.

    ``rotary_in_gqa`` lets GroupQueryAttention apply RoPE itself; on CPU it then derives positions from
    ``seqlens_k`` and ignores ``position_ids``, so left-padded rows get wrong positions: off (it measured
    no faster either).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    t0 = time.time()
    model = onnx.load(in_path)
    g = model.graph
    producers = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    nodes_before = len(g.node)

    # --- RoPE tables from the exporter's rotary_emb: Cos(Concat(Mul(pos, inv_freq))) * scaling
    cos_node = next((n for n in g.node if n.op_type == "Cos"), None)
    if cos_node is None:
        raise NoMatch("no rotary position embedding (Cos node)")
    concat = producers[cos_node.input[0]]
    mul = producers[concat.input[0]]
    inv_freq = None
    for x in mul.input:
        try:
            inv_freq = _const_value(g, x, producers).astype(np.float64).reshape(-1)
        except KeyError:
            pass
    if inv_freq is None or inv_freq.size != head_dim // 2:
        raise NoMatch("rotary inv_freq not found (or not head_dim / 2 wide)")
    scaling = 1.0
    cmul = [c for c in consumers.get(cos_node.output[0], []) if c.op_type == "Mul"]
    if cmul:
        for x in cmul[0].input:
            try:
                scaling = float(_const_value(g, x, producers).reshape(-1)[0])
            except KeyError:
                pass
    freqs = np.arange(max_positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    g.initializer.extend([
        numpy_helper.from_array((np.cos(freqs) * scaling).astype(np.float32), "gqa_cos_cache"),
        numpy_helper.from_array((np.sin(freqs) * scaling).astype(np.float32), "gqa_sin_cache"),
    ])

    # --- shared: seqlens_k = total_len - 1 (int32 [batch]), total_len (int32 scalar)
    new_nodes = [
        helper.make_node("Shape", ["attention_mask"], ["gqa_mask_shape"], name="gqa/Shape"),
        helper.make_node("Constant", [], ["gqa_c1"], value=numpy_helper.from_array(np.array(1, np.int64)), name="gqa/c1"),
        helper.make_node("Constant", [], ["gqa_c0"], value=numpy_helper.from_array(np.array([0], np.int64)), name="gqa/c0"),
        helper.make_node("Gather", ["gqa_mask_shape", "gqa_c1"], ["gqa_total64"], axis=0, name="gqa/total"),
        helper.make_node("Gather", ["gqa_mask_shape", "gqa_c0"], ["gqa_batch"], axis=0, name="gqa/batch"),
        helper.make_node("Cast", ["gqa_total64"], ["gqa_total_len"], to=TensorProto.INT32, name="gqa/total32"),
        helper.make_node("Sub", ["gqa_total64", "gqa_c1"], ["gqa_last64"], name="gqa/last"),
        helper.make_node("Expand", ["gqa_last64", "gqa_batch"], ["gqa_last_b"], name="gqa/expand"),
        helper.make_node("Cast", ["gqa_last_b"], ["gqa_seqlens_k"], to=TensorProto.INT32, name="gqa/seqlens"),
    ]
    g.initializer.append(numpy_helper.from_array(
        np.array([num_heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], np.int64), "gqa_qkv_split"))

    layers = sorted({int(n.name.split("/layers.")[1].split("/")[0]) for n in g.node if "/layers." in n.name})
    if not layers:
        raise NoMatch("no /model/model/layers.{i} nodes")
    by_name = {n.name: n for n in g.node}
    for i in layers:
        pre = f"/model/model/layers.{i}/self_attn/"
        try:
            q, k, v, o = (by_name[pre + f"{p}_proj/MatMul"] for p in "qkvo")
        except KeyError as exc:
            raise NoMatch(f"layer {i} has no {exc.args[0]}") from None
        sm = next((n for n in g.node if n.op_type == "Softmax" and n.name.startswith(pre)), None)
        if sm is None or producers.get(sm.input[0]) is None or producers[sm.input[0]].op_type != "Add":
            raise NoMatch(f"layer {i}: no Softmax over masked scores")
        add = producers[sm.input[0]]
        mask = next(x for x in add.input if producers.get(x) is None or producers[x].op_type != "Mul")
        pk, pv = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        prk, prv = f"present.{i}.key", f"present.{i}.value"
        for name in (prk, prv):  # detach the exporter's producers of the present values
            old = producers[name]
            new = name + "__unused"
            old.output[list(old.output).index(name)] = new
            for c in consumers.get(name, []):
                c.input[:] = [new if x == name else x for x in c.input]
        qo, ko, vo = q.output[0], k.output[0], v.output[0]
        if pack_qkv:  # one [hidden, (H+2*KVH)*D] MatMul instead of three
            w = np.concatenate([_const_value(g, n.input[1], producers) for n in (q, k, v)], axis=1)
            g.initializer.append(numpy_helper.from_array(w, pre + "qkv_weight"))
            for n in (q, k, v):
                n.output[0] = n.output[0] + "__unused"
            new_nodes.append(helper.make_node("MatMul", [q.input[0], pre + "qkv_weight"], [pre + "qkv"],
                                              name=pre + "qkv_proj/MatMul"))
            if rotary_in_gqa:
                qo, ko, vo = pre + "qkv", "", ""
            else:
                new_nodes.append(helper.make_node("Split", [pre + "qkv", "gqa_qkv_split"], [qo, ko, vo], axis=-1,
                                                  name=pre + "qkv_split"))
        if rotary_in_gqa:
            gqa_in = [qo, ko, vo, pk, pv, "gqa_seqlens_k", "gqa_total_len", "gqa_cos_cache", "gqa_sin_cache",
                      "position_ids", mask]
        else:
            new_nodes += [
                helper.make_node("RotaryEmbedding", [qo, "position_ids", "gqa_cos_cache", "gqa_sin_cache"],
                                 [pre + "q_rot"], domain="com.microsoft", num_heads=num_heads, interleaved=0,
                                 name=pre + "RotaryQ"),
                helper.make_node("RotaryEmbedding", [ko, "position_ids", "gqa_cos_cache", "gqa_sin_cache"],
                                 [pre + "k_rot"], domain="com.microsoft", num_heads=kv_heads, interleaved=0,
                                 name=pre + "RotaryK")]
            gqa_in = [pre + "q_rot", pre + "k_rot", vo, pk, pv, "gqa_seqlens_k", "gqa_total_len", "", "", "", mask]
        new_nodes.append(helper.make_node("GroupQueryAttention", gqa_in, [pre + "gqa_out", prk, prv],
                                          domain="com.microsoft", num_heads=num_heads, kv_num_heads=kv_heads,
                                          do_rotary=int(rotary_in_gqa), rotary_interleaved=0,
                                          name=pre + "GroupQueryAttention"))
        o.input[0] = pre + "gqa_out"

    g.node.extend(new_nodes)
    # --- dead-node elimination + topological sort
    producers = {o: n for n in g.node for o in n.output}
    live, stack = set(), [o.name for o in g.output]
    keep_ids = set()
    while stack:
        t = stack.pop()
        if t in live or t not in producers:
            live.add(t)
            continue
        live.add(t)
        n = producers[t]
        if id(n) not in keep_ids:
            keep_ids.add(id(n))
            stack.extend(x for x in n.input if x)
    kept = [n for n in g.node if id(n) in keep_ids]
    order, avail = [], {i.name for i in g.input} | {x.name for x in g.initializer} | {""}
    pending = kept
    while pending:
        rest = []
        for n in pending:
            if all(x in avail for x in n.input):
                order.append(n)
                avail.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise NoMatch("the rewritten graph has a cycle")
        pending = rest
    del g.node[:]
    g.node.extend(order)
    used = {x for n in g.node for x in n.input}
    inits = [x for x in g.initializer if x.name in used]
    del g.initializer[:]
    g.initializer.extend(inits)
    del g.value_info[:]
    if not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))

    tmp = out_path + ".gqa.onnx" if fuse_norms else out_path
    big = model.ByteSize() > 1_900_000_000
    onnx.save(model, tmp, save_as_external_data=big, location=os.path.basename(tmp) + ".data" if big else None)
    if fuse_norms:
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model
        opts = FusionOptions("gpt2")
        opts.enable_attention = False
        opts.enable_rotary_embeddings = False
        m = optimize_model(tmp, model_type="gpt2", num_heads=num_heads, hidden_size=hidden_size, opt_level=0,
                           optimization_options=opts)
        m.save_model_to_file(out_path, use_external_data_format=big)
        os.remove(tmp)
        model = onnx.load(out_path, load_external_data=False)
    ops = Counter(n.op_type for n in model.graph.node)
    return {"nodes_before": nodes_before, "nodes_after": len(model.graph.node), "layers": len(layers),
            "ops": dict(ops.most_common()), "seconds": round(time.time() - t0, 1)}
