#!/usr/bin/env python3
"""Golden fixtures: reefknot recipes next to mergekit's output for the same merge.

What it does
------------
1. Builds three small, deterministic synthetic Llama families with its own numpy
   generator (no mergekit or transformers involved):

   * ``llama_f32``  -- float32, one ``model.safetensors`` per model, 3 layers,
     hidden 32, intermediate 64, vocab 96, 4 heads / 2 kv heads, untied lm_head.
   * ``llama_bf16`` -- bfloat16, sharded (3 shards + ``model.safetensors.index.json``),
     2 layers, hidden 32, intermediate 96, vocab 128; larger task vectors (20% of a
     weight's scale instead of 5%) so that bf16 quantisation leaves fewer equal
     magnitudes at the trim threshold.
   * ``llama_deep`` -- bfloat16, 2 shards, 40 layers, hidden 16, intermediate 32,
     vocab 64, 2 heads / 1 kv head, task vectors 20%: deep enough for mergekit's
     44-layer frankenmerge example, small enough to commit.

   Each family is ``base/`` plus three fine-tunes ``task_0..task_2``.  Task vectors
   are heavy tailed (Student t, 3 degrees of freedom), share a component whose sign
   each task flips on about a third of the entries (sign conflicts), leave ~8% of
   entries exactly unchanged (exact zeros in the task vector), and plant a few
   positions where task_0 and task_1 move by exactly opposite amounts and task_2 not
   at all (the elected sign's sum is exactly 0 there: mergekit elects +).

   Next to them, ``llama_lora/adapter_0``, ``adapter_1``: PEFT LoRA adapters for
   ``llama_f32``'s models (``adapter_config.json`` + ``adapter_model.safetensors``,
   the factors only), numpy-made like the families (fixed seeds, non-zero B, updates
   of the task vectors' size); see ``ADAPTERS``.

2. For each case of ``CASES`` (ties_norm, ties_sum, ties_weights, task_arithmetic,
   linear, ties_gradient_mlp, ties_gradient_all, ties_bf16, dare_ties_d1, breadcrumbs,
   ..., and the layer-stack cases of mergekit's ``slices:``: frankenmerge_44,
   frankenmerge_scaled, frankenmerge_empty_last, slices_merged, slices_offset, and
   slices_varied_ties, slices_varied_base, slices_varied_linear (slices over other
   models, bases and values); the LoRA cases lora_linear, lora_ties, lora_passthrough; tests/fixtures/golden/README.md tabulates
   every case, recipe <-> mergekit config) writes ``tests/fixtures/golden/<case>/``:

   * ``recipe.yaml``   -- the reefknot recipe (paths relative to the case folder);
   * ``mergekit.yml``  -- the equivalent mergekit configuration (same relative paths);
   * ``expected.safetensors`` -- the tensors mergekit wrote (names, dtypes, values);
   * ``golden.json``   -- what the Rust test needs besides the tensors: the input
     folders and, for sparsifying cases, each model's resolved density and cut ranks
     for each tensor (so that the test can find the positions where mergekit's
     unstable sort may legitimately pick other entries among equal magnitudes);
     for the ``slices:`` cases, ``renamed``: each output tensor whose name is not
     that of the input tensor it reads (renumbered layers), with that input name,
     and, where a merged slice's models take other layers than its base
     (``slices_offset``), ``renamed_models``: each model's input name.

   mergekit runs through its ``mergekit-yaml`` command line on the CPU, with the case
   folder as the working directory (with ``--lora-merge-cache``, an empty temporary
   folder, for a case with LoRA adapters: mergekit merges each ``model+lora`` there
   with PEFT's ``merge_and_unload`` first).

3. Self-check: an independent numpy implementation of the operators of
   ``shared/design/operators.md`` (not mergekit's code) recomputes every case and is
   compared with mergekit's output under the same tolerance as ``tests/golden.rs``.
   A case that disagrees makes the script exit non-zero (the files stay written, for
   inspection), so committed fixtures are ones two independent implementations agree on.
   A LoRA case's models are first ``W + scaling * B @ A`` (float64, rounded once to
   float32) where their adapter has factors (``apply_lora``).
   For the ``slices:`` cases mergekit's output config.json must also give the stack's
   ``num_hidden_layers``.

Rerun
-----
    python3 scripts/golden/make_golden.py            # rewrite tests/fixtures/golden
    python3 scripts/golden/make_golden.py --check    # regenerate in a temp dir and
                                                     # compare with the committed files

Needs python3 with numpy, and mergekit (which brings torch, transformers and peft)
on PATH as ``mergekit-yaml``.  The committed fixtures were made with mergekit 0.1.5
(torch 2.x, CPU; the LoRA cases with transformers 5.25.0 and peft 0.21.2).  The
inputs are bit-for-bit deterministic (numpy PCG64 with fixed seeds, the LoRA adapters
too); mergekit's output is deterministic for every case here (no random operator:
``dare_ties`` runs at density 1, where mergekit skips the random mask).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "tests" / "fixtures" / "golden"

# Tolerances, identical to tests/golden.rs (see tests/fixtures/golden/README.md).
# float32: |actual - expected| <= F32_RTOL * max(|expected|, s) element by element,
# s = the largest |value| that element has in the base or any fine-tune (the scale of
# the operands every f32 formula combines there).
F32_RTOL = 1e-6
BF16_MAX_ULP = 1

N_TASKS = 3


# --------------------------------------------------------------------------
# safetensors and bfloat16 in plain numpy
# --------------------------------------------------------------------------

def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (round to nearest, ties to even); returns uint16."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    if np.isnan(x).any():
        raise ValueError("NaN in generated data")
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def bf16_bits_to_f32(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


@dataclass
class Tensor:
    dtype: str  # "F32" or "BF16"
    shape: Tuple[int, ...]
    raw: np.ndarray  # float32 array or uint16 bf16 bits, flat

    def f32(self) -> np.ndarray:
        if self.dtype == "F32":
            return self.raw.astype(np.float32).reshape(self.shape)
        if self.dtype == "BF16":
            return bf16_bits_to_f32(self.raw).reshape(self.shape)
        raise ValueError(self.dtype)

    @staticmethod
    def from_f32(x: np.ndarray, dtype: str) -> "Tensor":
        x = np.asarray(x, dtype=np.float32)
        if dtype == "F32":
            return Tensor("F32", tuple(x.shape), x.reshape(-1).copy())
        if dtype == "BF16":
            return Tensor("BF16", tuple(x.shape), f32_to_bf16_bits(x.reshape(-1)))
        raise ValueError(dtype)


def write_safetensors(path: Path, tensors: Dict[str, Tensor], metadata: Dict[str, str]) -> int:
    header: Dict[str, object] = {"__metadata__": dict(metadata)}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype == "F32":
            data = t.raw.astype("<f4").tobytes()
        else:
            data = t.raw.astype("<u2").tobytes()
        header[name] = {
            "dtype": t.dtype,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * ((8 - len(hjson) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)
    return offset


def read_safetensors(path: Path) -> Dict[str, Tensor]:
    buf = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8 : 8 + n])
    body = buf[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        shape = tuple(info["shape"])
        if info["dtype"] == "F32":
            raw = np.frombuffer(body[a:b], dtype="<f4").astype(np.float32)
        elif info["dtype"] == "BF16":
            raw = np.frombuffer(body[a:b], dtype="<u2").astype(np.uint16)
        else:
            raise ValueError(f"{path}: {name}: unsupported dtype {info['dtype']}")
        out[name] = Tensor(info["dtype"], shape, raw)
    return out


def read_model_dir(path: Path) -> Dict[str, Tensor]:
    """Every tensor of every *.safetensors file in a model folder."""
    out: Dict[str, Tensor] = {}
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors in {path}")
    for f in files:
        for name, t in read_safetensors(f).items():
            if name in out:
                raise ValueError(f"{name} appears twice in {path}")
            out[name] = t
    return out


# --------------------------------------------------------------------------
# synthetic Llama families
# --------------------------------------------------------------------------

@dataclass
class Family:
    name: str
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    dtype: str  # "F32" / "BF16"
    shards: int  # 1 = single model.safetensors
    seed: int
    task_scale: float  # typical |task vector| / std of a weight matrix

    @property
    def torch_dtype(self) -> str:
        return {"F32": "float32", "BF16": "bfloat16"}[self.dtype]

    def tensor_specs(self) -> List[Tuple[str, Tuple[int, ...]]]:
        h, i, v = self.hidden, self.intermediate, self.vocab
        kv = self.kv_heads * (h // self.heads)
        specs = [("model.embed_tokens.weight", (v, h))]
        for l in range(self.layers):
            p = f"model.layers.{l}."
            specs += [
                (p + "input_layernorm.weight", (h,)),
                (p + "self_attn.q_proj.weight", (h, h)),
                (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)),
                (p + "self_attn.o_proj.weight", (h, h)),
                (p + "post_attention_layernorm.weight", (h,)),
                (p + "mlp.gate_proj.weight", (i, h)),
                (p + "mlp.up_proj.weight", (i, h)),
                (p + "mlp.down_proj.weight", (h, i)),
            ]
        specs += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
        return specs

    def config(self) -> dict:
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
            "head_dim": self.hidden // self.heads,
            "hidden_act": "silu",
            "hidden_size": self.hidden,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate,
            "max_position_embeddings": 128,
            "mlp_bias": False,
            "num_attention_heads": self.heads,
            "num_hidden_layers": self.layers,
            "num_key_value_heads": self.kv_heads,
            "pretraining_tp": 1,
            "rms_norm_eps": 1e-05,
            "rope_scaling": None,
            "rope_theta": 10000.0,
            "tie_word_embeddings": False,
            "torch_dtype": self.torch_dtype,
            "use_cache": True,
            "vocab_size": self.vocab,
        }


FAMILIES = {
    f.name: f
    for f in [
        Family("llama_f32", layers=3, hidden=32, intermediate=64, vocab=96,
               heads=4, kv_heads=2, dtype="F32", shards=1, seed=20240611,
               task_scale=0.05),
        Family("llama_bf16", layers=2, hidden=32, intermediate=96, vocab=128,
               heads=4, kv_heads=2, dtype="BF16", shards=3, seed=20240612,
               task_scale=0.2),
        # many layers, tiny ones: the frankenmerge (`slices:`) cases stack 44 of them
        Family("llama_deep", layers=40, hidden=16, intermediate=32, vocab=64,
               heads=2, kv_heads=1, dtype="BF16", shards=2, seed=20240613,
               task_scale=0.2),
    ]
}


def quantize(x64: np.ndarray, dtype: str) -> np.ndarray:
    """float64 -> the family's storage dtype, returned as float32 values."""
    x32 = x64.astype(np.float32)
    if dtype == "F32":
        return x32
    return bf16_bits_to_f32(f32_to_bf16_bits(x32.reshape(-1))).reshape(x32.shape)


def make_family_tensors(fam: Family) -> List[Dict[str, np.ndarray]]:
    """[base, task_0, .., task_{T-1}], each {name: float32 values in storage precision}."""
    rng = np.random.default_rng(fam.seed)
    models: List[Dict[str, np.ndarray]] = [dict() for _ in range(N_TASKS + 1)]
    for name, shape in fam.tensor_specs():
        n = int(np.prod(shape))
        if len(shape) == 1:  # RMSNorm gains around 1
            base = 1.0 + 0.1 * rng.standard_normal(n)
            scale = 0.02
        else:
            std = 1.0 / math.sqrt(shape[1])
            base = std * rng.standard_normal(n)
            scale = fam.task_scale * std
        base_q = quantize(base, fam.dtype)
        models[0][name] = base_q.reshape(shape)
        shared = rng.standard_t(3, n)
        for t in range(N_TASKS):
            flip = rng.random(n) < 0.35
            own = rng.standard_t(3, n)
            delta = scale * (0.7 * np.where(flip, -shared, shared) + own)
            theta = quantize(base_q.astype(np.float64) + delta, fam.dtype)
            unchanged = rng.random(n) < 0.08
            theta[unchanged] = base_q[unchanged]
            models[t + 1][name] = theta
        # exactly opposite moves of task_0 and task_1 (task_2 unchanged): the sum
        # of the task vectors is exactly 0 there, a large magnitude survives trim.
        planted = rng.choice(n, size=min(3, n), replace=False)
        for j in planted:
            b = np.float32(base_q[j])
            step = np.float32(8.0 * scale)
            up = quantize(np.array([float(b) + float(step)]), fam.dtype)[0]
            d = np.float32(up - b)
            down = np.float32(b - d)
            if fam.dtype == "BF16":
                if quantize(np.array([float(down)]), fam.dtype)[0] != down:
                    continue
            if np.float32(up - b) != -np.float32(down - b):
                continue
            models[1][name][j] = up
            models[2][name][j] = down
            models[3][name][j] = b
        for m in models[1:]:
            m[name] = m[name].reshape(shape)
    return models


def write_model(folder: Path, fam: Family, tensors: Dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(fam.config(), indent=2) + "\n")
    meta = {"format": "pt"}
    specs = [name for name, _ in fam.tensor_specs()]
    if fam.shards == 1:
        write_safetensors(folder / "model.safetensors",
                          {n: Tensor.from_f32(tensors[n], fam.dtype) for n in specs}, meta)
        return
    # contiguous groups of tensors in model order, one group per shard
    groups = [list(g) for g in np.array_split(np.array(specs, dtype=object), fam.shards)]
    weight_map = {}
    total = 0
    for k, group in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{fam.shards:05d}.safetensors"
        total += write_safetensors(
            folder / fname, {n: Tensor.from_f32(tensors[n], fam.dtype) for n in group}, meta)
        for n in group:
            weight_map[n] = fname
    index = {"metadata": {"total_size": total},
             "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


# --------------------------------------------------------------------------
# PEFT LoRA adapters (tests/fixtures/golden/llama_lora/)
# --------------------------------------------------------------------------

# The folder of the adapters: a family of its own for the layout, but no models, only
# adapter folders (adapter_config.json + adapter_model.safetensors) for a family's
# models.  Paths in the cases: {adapter_0}, {adapter_1}, .. (see paths_for).
LORA_FOLDER = "llama_lora"
# PEFT names every module of the model it wraps with this prefix.
PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class Adapter:
    """A PEFT LoRA adapter for the models of ``family``, as ``save_pretrained`` writes
    one: factors ``lora_A`` (r x in) and ``lora_B`` (out x r) per targeted linear
    layer, ``lora_embedding_A`` (r x vocab) and ``lora_embedding_B`` (hidden x r) for
    an embedding.  PEFT's ``merge_and_unload`` adds ``scaling * B @ A`` to a linear
    weight and ``scaling * (B @ A).T`` to an embedding, ``scaling = alpha / r``
    (``alpha / sqrt(r)`` with ``use_rslora``), r and alpha per module from
    ``rank_pattern`` / ``alpha_pattern`` (see ``pattern_value``)."""

    name: str  # folder under llama_lora/
    family: str
    seed: int
    r: int
    alpha: int  # PEFT's lora_alpha (an int in its configs)
    target_modules: Tuple[str, ...]
    use_rslora: bool = False
    rank_pattern: Tuple[Tuple[str, int], ...] = ()
    alpha_pattern: Tuple[Tuple[str, int], ...] = ()


ADAPTERS = {
    a.name: a
    for a in [
        # plain LoRA on attention and one MLP projection: scaling 8/4 = 2
        Adapter("adapter_0", family="llama_f32", seed=20240614, r=4, alpha=8,
                target_modules=("q_proj", "v_proj", "down_proj")),
        # rsLoRA (scaling alpha/sqrt(r): 4/sqrt(2) everywhere else), an embedding LoRA,
        # and patterns: every up_proj rank 4 and alpha 2 (scaling 1), but layer 2's
        # up_proj alpha 6 (scaling 3).  The more specific key sorts first, so PEFT's
        # first match in file order (written sorted, as PEFT does) and a reader that
        # sorts the keys (serde_json's default map) give the same answer.
        Adapter("adapter_1", family="llama_f32", seed=20240615, r=2, alpha=4,
                target_modules=("o_proj", "up_proj", "gate_proj", "embed_tokens"),
                use_rslora=True, rank_pattern=(("up_proj", 4),),
                alpha_pattern=(("layers.2.mlp.up_proj", 6), ("up_proj", 2))),
    ]
}


def pattern_value(pattern: Sequence[Tuple[str, object]], module: str, default):
    """PEFT 0.21's ``get_pattern_key``: the first key (in the order of
    adapter_config.json, which PEFT writes with sorted keys) for which
    ``re.match(rf"(.*\\.)?({key})$", module)`` holds, else the default."""
    for key, value in sorted(pattern):
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def adapter_modules(adapter: Adapter, fam: Family) -> List[Tuple[str, Tuple[int, ...]]]:
    """The modules of ``fam`` the adapter targets, with their weight shapes, in model
    order.  PEFT targets a module whose name is a target or ends in ``.target``."""
    out = []
    for name, shape in fam.tensor_specs():
        if not name.endswith(".weight") or len(shape) != 2:
            continue
        module = name[: -len(".weight")]
        if any(module == t or module.endswith("." + t) for t in adapter.target_modules):
            out.append((module, shape))
    return out


def adapter_rank_scaling(adapter: Adapter, module: str) -> Tuple[int, float]:
    r = int(pattern_value(adapter.rank_pattern, module, adapter.r))
    alpha = float(pattern_value(adapter.alpha_pattern, module, adapter.alpha))
    return r, (alpha / math.sqrt(r) if adapter.use_rslora else alpha / r)


def is_embedding(module: str) -> bool:
    return module.endswith("embed_tokens")


def make_adapter_factors(adapter: Adapter, fam: Family) -> Dict[str, np.ndarray]:
    """{tensor name in adapter_model.safetensors: float32 factor}.

    Non-zero B (a trained adapter, not PEFT's initialisation) sized so that the update
    ``scaling * B @ A`` has an RMS of ``task_scale`` times the weight's scale, like the
    family's task vectors (whose RMS is about twice that: Student t): A ~ N(0, 1/k)
    over its k columns, then B's standard deviation follows from the rank and
    scaling."""
    rng = np.random.default_rng(adapter.seed)
    out = {}
    for module, (rows, cols) in adapter_modules(adapter, fam):
        r, scaling = adapter_rank_scaling(adapter, module)
        target_rms = fam.task_scale / math.sqrt(cols)  # the weight's std is 1/sqrt(cols)
        if is_embedding(module):
            # the weight is (vocab, hidden); PEFT's factors are A (r, vocab), B (hidden, r)
            a_shape, b_shape = (r, rows), (cols, r)
        else:
            a_shape, b_shape = (r, cols), (rows, r)
        sigma_a = 1.0 / math.sqrt(a_shape[1])
        sigma_b = target_rms / (scaling * math.sqrt(r) * sigma_a)
        a = (sigma_a * rng.standard_normal(a_shape)).astype(np.float32)
        b = (sigma_b * rng.standard_normal(b_shape)).astype(np.float32)
        key = PEFT_PREFIX + module
        if is_embedding(module):
            out[key + ".lora_embedding_A"] = a
            out[key + ".lora_embedding_B"] = b
        else:
            out[key + ".lora_A.weight"] = a
            out[key + ".lora_B.weight"] = b
    return out


def adapter_config(adapter: Adapter) -> dict:
    """adapter_config.json: the fields PEFT 0.21.2's ``save_pretrained`` writes for a
    LoRA (values as it writes them for this adapter)."""
    return {
        "alora_invocation_tokens": None,
        "alpha_pattern": {k: v for k, v in adapter.alpha_pattern},
        "arrow_config": None,
        "auto_mapping": None,
        # where the adapter was trained from, relative to its folder (informational:
        # PEFT and mergekit apply it to the model they are given)
        "base_model_name_or_path": f"../../{adapter.family}/base",
        "bias": "none",
        "corda_config": None,
        "ensure_weight_tying": False,
        "eva_config": None,
        "exclude_modules": None,
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "kasa_config": None,
        "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": None,
        "loftq_config": {},
        "lora_alpha": adapter.alpha,
        "lora_bias": False,
        "lora_dropout": 0.0,
        "lora_ga_config": None,
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": None,
        "monteclora_config": None,
        "peft_type": "LORA",
        "peft_version": "0.21.2",
        "qalora_group_size": 16,
        "r": adapter.r,
        "rank_pattern": {k: v for k, v in adapter.rank_pattern},
        "revision": None,
        "target_modules": sorted(adapter.target_modules),
        "target_parameters": None,
        "task_type": "CAUSAL_LM",
        "trainable_token_indices": None,
        "use_bdlora": None,
        "use_dora": False,
        "use_qalora": False,
        "use_rslora": adapter.use_rslora,
        "velora_config": None,
    }


def write_adapter(folder: Path, adapter: Adapter, factors: Dict[str, np.ndarray]) -> None:
    """The adapter folder.  Only the factors: PEFT's own save of an adapter that targets
    embed_tokens also writes the whole embedding (``embed_tokens.base_layer.weight``,
    its ``save_embedding_layers="auto"``), which PEFT's load then puts in place of the
    model's own embedding; these files are what ``save_embedding_layers=False`` (or a
    trainer that saves the factors only) writes, so the embedding is the model's own
    plus the update."""
    folder.mkdir(parents=True, exist_ok=True)
    # sorted keys, as PEFT writes them (the order rank_pattern/alpha_pattern are read in)
    (folder / "adapter_config.json").write_text(
        json.dumps(adapter_config(adapter), indent=2, sort_keys=True) + "\n")
    write_safetensors(folder / "adapter_model.safetensors",
                      {n: Tensor.from_f32(x, "F32") for n, x in factors.items()},
                      {"format": "pt"})


def lora_updates(adapter: Adapter, fam: Family,
                 factors: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """{weight name: scaling * B @ A (transposed for an embedding)}, in float64."""
    out = {}
    for module, shape in adapter_modules(adapter, fam):
        _, scaling = adapter_rank_scaling(adapter, module)
        key = PEFT_PREFIX + module
        if is_embedding(module):
            a = factors[key + ".lora_embedding_A"].astype(np.float64)
            b = factors[key + ".lora_embedding_B"].astype(np.float64)
            delta = (b @ a).T
        else:
            a = factors[key + ".lora_A.weight"].astype(np.float64)
            b = factors[key + ".lora_B.weight"].astype(np.float64)
            delta = b @ a
        assert delta.shape == shape, (module, delta.shape, shape)
        out[module + ".weight"] = scaling * delta
    return out


def apply_lora(fam: Family, model: Dict[str, np.ndarray],
               updates: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The model with the adapter merged: ``W + update`` in float64, rounded once to the
    family's dtype (PEFT adds a float32 update to the float32 weight: a few ulps of the
    result away).  Tensors the adapter does not update are the model's own arrays."""
    out = dict(model)
    for name, delta in updates.items():
        out[name] = quantize(model[name].astype(np.float64) + delta, fam.dtype)
    return out


# --------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    family: str
    description: str
    recipe: str  # YAML text; {base} and {m0}.. are replaced by relative paths
    mergekit: str  # YAML text, same placeholders
    # Independent model of the merge for the self-check:
    # sparsifier: None | "trim" | "breadcrumbs" (per-model density, see below)
    sparsify: Optional[str]
    # how the (weighted) task vectors become one delta:
    # "disjoint" (elect + disjoint mean) | "disjoint_sum" | "sum" | "mean"
    combine: str
    gamma: float = 0.01  # breadcrumbs
    weights: Sequence[object] = (1.0, 1.0, 1.0)  # per model: number or gradient list
    # density per model: number or gradient list; callable overrides by tensor name
    density: Optional[Sequence[object]] = None
    density_override: Optional[Tuple[str, object]] = None  # (substring, value)
    scale: float = 1.0
    out_dtype: Optional[str] = None  # None = family dtype
    n_models: int = N_TASKS  # the case merges task_0 .. task_{n_models-1}
    t: object = None  # slerp / nearswap: number or gradient list
    rescale: bool = False  # L1 rescale after the sparsifier
    params: Optional[Dict[str, float]] = None  # method parameters the reference reads
    # arcee_fusion: positions whose importance lies within this relative distance of the
    # threshold are borderline (mergekit's float32 KL is that noisy); see golden.json
    band: Optional[float] = None
    # a random method at density < 1: compared by statistics (kept fraction, L1 ratio,
    # keep rate by magnitude), not element by element
    statistics: Optional[Dict[str, float]] = None
    # mergekit's `slices:` (reefknot's `slices:` recipe key): the output layer stack,
    # slice after slice; the reference then follows `reference_slices`
    slices: Optional[Sequence["Slice"]] = None
    # golden.json's inputs when they are not base + task_0..: the recipe's `base:` and
    # `models:` as paths_for keys ("base", "m0", ..)
    inputs: Optional[Tuple[str, Tuple[str, ...]]] = None
    # LoRA adapters (ADAPTERS names), one per model of golden_inputs (None: the model
    # as it is): mergekit's `model+lora`, the recipe's `lora:`; the reference merges
    # each into its model first (apply_lora), as PEFT does into mergekit's
    # --lora-merge-cache
    lora: Optional[Tuple[Optional[str], ...]] = None


@dataclass(frozen=True)
class Cond:
    """mergekit's ``[{filter, value}, ...]``: the first entry whose filter is a
    substring of the tensor name (``None`` matches every name) gives the value."""

    entries: Tuple[Tuple[Optional[str], object], ...]


@dataclass(frozen=True)
class Slice:
    """One output slice: the layers ``[start, end)`` of each of ``sources`` (paths_for
    keys, in mergekit's order: a slerp's base first), renumbered after the previous
    slices' layers.  ``scale`` (passthrough: a number or a Cond on the input tensor's
    name; None = 1, an exact copy) and ``t`` (slerp: a number or a gradient over the
    slice's own layers) are the slice's parameters.  ``layers_of``: the sources that
    take other layers than ``[start, end)`` (mergekit's per-source ``layer_range``, the
    recipe's ``layers_of:``), as (paths_for key, start, end) of the same length; output
    layer i of the slice then reads their layer start + i."""

    start: int
    end: int
    sources: Tuple[str, ...]
    scale: object = None
    t: object = None
    layers_of: Tuple[Tuple[str, int, int], ...] = ()
    # a stack whose slices merge other models or bases with their own values
    # (reference_varied_slices): the slice's base_model (None: golden_inputs' base),
    # and, for its other sources in order, their weights and densities (None: the
    # case's), with the slice's lambda (None: the case's scale)
    base: Optional[str] = None
    # the sources merged against the base (None: every source but the base; a method
    # without a base_model merges every source, the first lending its names)
    members: Optional[Tuple[str, ...]] = None
    weights: Optional[Tuple[float, ...]] = None
    density: Optional[Tuple[float, ...]] = None
    lam: Optional[float] = None

    def varied(self) -> bool:
        return (self.base is not None or self.members is not None or self.weights is not None
                or self.density is not None or self.lam is not None)


# mergekit's examples/gradient-slerp.yml parameters, written over whole models
# (`slerp_filters`) and as one slice (`slerp_slices`).
SLERP_FILTERS_RECIPE = """\
base: {base}
models:
  - path: {m0}
params:
  t:
    - {{ match: "*self_attn*", value: [0, 0.5, 0.3, 0.7, 1] }}
    - {{ match: "*mlp*", value: [1, 0.5, 0.7, 0.3, 0] }}
    - {{ value: 0.5 }}
merge: slerp($t)
"""
SLERP_FILTERS_PARAMETERS = """\
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: float32
"""
SLERP_FILTERS_T = Cond((("self_attn", [0, 0.5, 0.3, 0.7, 1]), ("mlp", [1, 0.5, 0.7, 0.3, 0]),
                        (None, 0.5)))


def paths_for(fam: str) -> Dict[str, str]:
    d = {"base": f"../{fam}/base"}
    for t in range(N_TASKS):
        d[f"m{t}"] = f"../{fam}/task_{t}"
    for a in ADAPTERS.values():  # {adapter_0}, ..: the adapters for this family's models
        if a.family == fam:
            d[a.name] = f"../{LORA_FOLDER}/{a.name}"
    return d


CASES = [
    Case(
        name="ties_norm",
        family="llama_f32",
        description="TIES, density 0.2, normalize true (mergekit's default), float32",
        recipe="""\
base: {base}
models:
  - path: {m0}
  - path: {m1}
  - path: {m2}
merge: ties(trim(0.2), elect, disjoint)
""",
        mergekit="""\
merge_method: ties
base_model: {base}
models:
  - model: {m0}
  - model: {m1}
  - model: {m2}
parameters:
  density: 0.2
  weight: 1.0
  normalize: true
dtype: float32
""",
        sparsify="trim",
        combine="disjoint",
        density=(0.2, 0.2, 0.2),
    ),
    Case(
        name="ties_sum",
        family="llama_f32",
        description="TIES, density 0.2, normalize false (sum of the agreeing entries)",
        recipe="""\
base: {base}
models:
  - path: {m0}
  - path: {m1}
  - path: {m2}
merge: trim(0.2) |> elect |> disjoint(sum)
""",
        mergekit="""\
merge_method: ties
base_model: {base}
models:
  - model: {m0}
  - model: {m1}
  - model: {m2}
parameters:
  density: 0.2
  weight: 1.0
  normalize: false
dtype: float32
""",
        sparsify="trim",
        combine="disjoint_sum",
        density=(0.2, 0.2, 0.2),
    ),
    Case(
        name="ties_weights",
        family="llama_f32",
        description="TIES with per-model weights 1.0/0.5/0.8 and densities 0.1/0.3/0.5",
        recipe="""\
base: {base}
models:
  - path: {m0}
    weight: 1.0
    params: {{ density: 0.1 }}
  - path: {m1}
    weight: 0.5
    params: {{ density: 0.3 }}
  - path: {m2}
    weight: 0.8
    params: {{ density: 0.5 }}
merge: trim($density) |> elect |> disjoint
dtype: float32
""",
        mergekit="""\
merge_method: ties
base_model: {base}
models:
  - model: {m0}
    parameters: {{ weight: 1.0, density: 0.1 }}
  - model: {m1}
    parameters: {{ weight: 0.5, density: 0.3 }}
  - model: {m2}
    parameters: {{ weight: 0.8, density: 0.5 }}
parameters:
  normalize: true
dtype: float32
""",
        sparsify="trim",
        combine="disjoint",
        weights=(1.0, 0.5, 0.8),
        density=(0.1, 0.3, 0.5),
    ),
    Case(
        name="task_arithmetic",
        family="llama_f32",
        description="task arithmetic, weights 0.9/0.6/0.3, lambda 0.7",
        recipe="""\
base: {base}
models:
  - path: {m0}
    weight: 0.9
  - path: {m1}
    weight: 0.6
  - path: {m2}
    weight: 0.3
merge: sum |> scale(0.7)
""",
        mergekit="""\
merge_method: task_arithmetic
base_model: {base}
models:
  - model: {m0}
    parameters: {{ weight: 0.9 }}
  - model: {m1}
    parameters: {{ weight: 0.6 }}
  - model: {m2}
    parameters: {{ weight: 0.3 }}
parameters:
  lambda: 0.7
dtype: float32
""",
        sparsify=None,
        combine="sum",
        weights=(0.9, 0.6, 0.3),
        scale=0.7,
    ),
    Case(
        name="linear",
        family="llama_f32",
        description=("linear (weighted average of the fine-tunes, weights 1.0/0.5/0.8, "
                     "normalize true); mergekit has no base_model here"),
        recipe="""\
base: {base}
models:
  - path: {m0}
    weight: 1.0
  - path: {m1}
    weight: 0.5
  - path: {m2}
    weight: 0.8
merge: mean
""",
        # No base_model: with one, mergekit adds the base as a fourth input of the
        # average (and then asks for its weight). reefknot's `mean` over task vectors
        # is the weighted average of the fine-tunes themselves.
        mergekit="""\
merge_method: linear
models:
  - model: {m0}
    parameters: {{ weight: 1.0 }}
  - model: {m1}
    parameters: {{ weight: 0.5 }}
  - model: {m2}
    parameters: {{ weight: 0.8 }}
parameters:
  normalize: true
dtype: float32
""",
        sparsify=None,
        combine="mean",
        weights=(1.0, 0.5, 0.8),
    ),
    Case(
        name="ties_gradient_mlp",
        family="llama_f32",
        description=("TIES; mlp tensors get a density gradient 0.1 -> 0.5 over the 3 "
                     "layers (0.1, 0.3, 0.5), every other tensor density 0.2"),
        recipe="""\
base: {base}
models:
  - path: {m0}
  - path: {m1}
  - path: {m2}
params: {{ density: 0.2 }}
merge: ties(trim($density), elect, disjoint)
overrides:
  - match: "*mlp*"
    params: {{ density: [0.1, 0.5] }}
""",
        mergekit="""\
merge_method: ties
base_model: {base}
models:
  - model: {m0}
  - model: {m1}
  - model: {m2}
parameters:
  weight: 1.0
  normalize: true
  density:
    - filter: mlp
      value: [0.1, 0.5]
    - value: 0.2
dtype: float32
""",
        sparsify="trim",
        combine="disjoint",
        density=(0.2, 0.2, 0.2),
        density_override=("mlp", [0.1, 0.5]),
    ),
    Case(
        name="ties_gradient_all",
        family="llama_f32",
        description=("TIES; a 4-point density gradient [0.1, 0.5, 0.3, 0.4] on every "
                     "tensor (embeddings, final norm and lm_head take t = 0) and a weight "
                     "gradient [1.0, 0.4] on task_1"),
        recipe="""\
base: {base}
models:
  - path: {m0}
  - path: {m1}
    weight: [1.0, 0.4]
  - path: {m2}
params: {{ density: [0.1, 0.5, 0.3, 0.4] }}
merge: ties(trim($density), elect, disjoint)
""",
        mergekit="""\
merge_method: ties
base_model: {base}
models:
  - model: {m0}
    parameters: {{ weight: 1.0 }}
  - model: {m1}
    parameters: {{ weight: [1.0, 0.4] }}
  - model: {m2}
    parameters: {{ weight: 1.0 }}
parameters:
  normalize: true
  density: [0.1, 0.5, 0.3, 0.4]
dtype: float32
""",
        sparsify="trim",
        combine="disjoint",
        weights=(1.0, [1.0, 0.4], 1.0),
        density=([0.1, 0.5, 0.3, 0.4],) * 3,
    ),
    Case(
        name="ties_bf16",
        family="llama_bf16",
        description=("TIES density 0.2 on bfloat16 sharded inputs, computed in float32, "
                     "written as bfloat16"),
        recipe="""\
base: {base}
models:
  - path: {m0}
  - path: {m1}
  - path: {m2}
merge: ties(trim(0.2), elect, disjoint)
dtype: bfloat16
""",
        mergekit="""\
merge_method: ties
base_model: {base}
models:
  - model: {m0}
  - model: {m1}
  - model: {m2}
parameters:
  density: 0.2
  weight: 1.0
  normalize: true
dtype: float32
out_dtype: bfloat16
""",
        sparsify="trim",
        combine="disjoint",
        density=(0.2, 0.2, 0.2),
        out_dtype="BF16",
    ),
    Case(
        name="dare_ties_d1",
        family="llama_f32",
        description=("DARE-TIES at density 1 with rescale (mergekit's deterministic "
                     "path), weights 1.0/0.5/0.8, normalize true"),
        recipe="""\
base: {base}
models:
  - path: {m0}
    weight: 1.0
  - path: {m1}
    weight: 0.5
  - path: {m2}
    weight: 0.8
merge: dare(p=0, rescale=l1) |> elect |> disjoint
seed: 0
""",
        # dare_ties defaults to normalize: false in mergekit 0.1.5; `disjoint` is the
        # normalized (mean) form, so it is set explicitly.
        mergekit="""\
merge_method: dare_ties
base_model: {base}
models:
  - model: {m0}
    parameters: {{ weight: 1.0 }}
  - model: {m1}
    parameters: {{ weight: 0.5 }}
  - model: {m2}
    parameters: {{ weight: 0.8 }}
parameters:
  density: 1.0
  rescale: true
  normalize: true
dtype: float32
""",
        sparsify=None,  # dare(p=0): keeps all; the l1 ratio of equal norms is 1
        combine="disjoint",
        weights=(1.0, 0.5, 0.8),
    ),
    Case(
        name="breadcrumbs",
        family="llama_f32",
        description=("Model Breadcrumbs, density 0.3, gamma 0.01, weights 1.0/0.5/0.8, "
                     "summed; the 32-element norms have floor(0.01*32) = 0 outliers"),
        recipe="""\
base: {base}
models:
  - path: {m0}
    weight: 1.0
  - path: {m1}
    weight: 0.5
  - path: {m2}
    weight: 0.8
merge: breadcrumbs(0.3, gamma=0.01) |> sum
""",
        mergekit="""\
merge_method: breadcrumbs
base_model: {base}
models:
  - model: {m0}
    parameters: {{ weight: 1.0 }}
  - model: {m1}
    parameters: {{ weight: 0.5 }}
  - model: {m2}
    parameters: {{ weight: 0.8 }}
parameters:
  density: 0.3
  gamma: 0.01
dtype: float32
""",
        sparsify="breadcrumbs",
        combine="sum",
        weights=(1.0, 0.5, 0.8),
        density=(0.3, 0.3, 0.3),
        gamma=0.01,
    ),
    Case(
        name="breadcrumbs_ties",
        family="llama_f32",
        description=("breadcrumbs_ties: density 0.3, gamma 0.05 (one outlier in the "
                     "32-element norms), weights 1.0/0.5/0.8, elected sign, normalize "
                     "false (mergekit's default)"),
        recipe="""\
base: {base}
models:
  - path: {m0}
    weight: 1.0
  - path: {m1}
    weight: 0.5
  - path: {m2}
    weight: 0.8
merge: breadcrumbs(0.3, gamma=0.05) |> elect |> disjoint(sum)
""",
        mergekit="""\
merge_method: breadcrumbs_ties
base_model: {base}
models:
  - model: {m0}
    parameters: {{ weight: 1.0 }}
  - model: {m1}
    parameters: {{ weight: 0.5 }}
  - model: {m2}
    parameters: {{ weight: 0.8 }}
parameters:
  density: 0.3
  gamma: 0.05
dtype: float32
""",
        sparsify="breadcrumbs",
        combine="disjoint_sum",
        weights=(1.0, 0.5, 0.8),
        density=(0.3, 0.3, 0.3),
        gamma=0.05,
    ),
    Case(
        name="ties_rescale",
        family="llama_f32",
        description=("TIES with rescale true: each trimmed task vector scaled back to "
                     "its L1 norm, densities 0.1/0.3/0.5"),
        recipe="""\
base: {base}
models:
  - path: {m0}
    params: {{ density: 0.1 }}
  - path: {m1}
    params: {{ density: 0.3 }}
  - path: {m2}
    params: {{ density: 0.5 }}
merge: trim($density, rescale=l1) |> elect |> disjoint
""",
        mergekit="""\
merge_method: ties
base_model: {base}
models:
  - model: {m0}
    parameters: {{ weight: 1.0, density: 0.1 }}
  - model: {m1}
    parameters: {{ weight: 1.0, density: 0.3 }}
  - model: {m2}
    parameters: {{ weight: 1.0, density: 0.5 }}
parameters:
  normalize: true
  rescale: true
dtype: float32
""",
        sparsify="trim",
        combine="disjoint",
        density=(0.1, 0.3, 0.5),
        rescale=True,
    ),
    Case(
        name="slerp",
        family="llama_f32",
        description="SLERP between the base and task_0, t = 0.4",
        recipe="""\
base: {base}
models:
  - path: {m0}
merge: slerp(0.4)
""",
        mergekit="""\
merge_method: slerp
base_model: {base}
models:
  - model: {base}
  - model: {m0}
parameters:
  t: 0.4
dtype: float32
""",
        sparsify=None,
        combine="slerp",
        n_models=1,
        t=0.4,
    ),
    Case(
        name="slerp_bf16",
        family="llama_bf16",
        description=("SLERP on bfloat16 sharded inputs with a t gradient [0.2, 0.8] "
                     "(embeddings, final norm and lm_head take t = 0.2), written as "
                     "bfloat16"),
        recipe="""\
base: {base}
models:
  - path: {m0}
params: {{ t: [0.2, 0.8] }}
merge: slerp($t)
dtype: bfloat16
""",
        mergekit="""\
merge_method: slerp
base_model: {base}
models:
  - model: {base}
  - model: {m0}
parameters:
  t: [0.2, 0.8]
dtype: float32
out_dtype: bfloat16
""",
        sparsify=None,
        combine="slerp",
        n_models=1,
        t=[0.2, 0.8],
        out_dtype="BF16",
    ),
    Case(
        name="nearswap",
        family="llama_f32",
        description="NearSwap between the base and task_0, t = 0.004",
        recipe="""\
base: {base}
models:
  - path: {m0}
merge: nearswap(0.004)
""",
        mergekit="""\
merge_method: nearswap
base_model: {base}
models:
  - model: {base}
  - model: {m0}
parameters:
  t: 0.004
dtype: float32
""",
        sparsify=None,
        combine="nearswap",
        n_models=1,
        t=0.004,
    ),
    Case(
        name="model_stock",
        family="llama_f32",
        description="Model Stock over the three fine-tunes, one ratio per tensor",
        recipe="""\
base: {base}
models:
  - path: {m0}
  - path: {m1}
  - path: {m2}
merge: model_stock
""",
        mergekit="""\
merge_method: model_stock
base_model: {base}
models:
  - model: {m0}
  - model: {m1}
  - model: {m2}
dtype: float32
""",
        sparsify=None,
        combine="model_stock",
    ),
    Case(
        name="model_stock_rows_bf16",
        family="llama_bf16",
        description=("Model Stock with filter_wise (one ratio per row) on bfloat16 "
                     "sharded inputs, written as bfloat16"),
        recipe="""\
base: {base}
models:
  - path: {m0}
  - path: {m1}
  - path: {m2}
merge: model_stock(filter_wise=true)
dtype: bfloat16
""",
        mergekit="""\
merge_method: model_stock
base_model: {base}
models:
  - model: {m0}
  - model: {m1}
  - model: {m2}
parameters:
  filter_wise: true
dtype: float32
out_dtype: bfloat16
""",
        sparsify=None,
        combine="model_stock_rows",
        out_dtype="BF16",
    ),
    Case(
        name="della_d1_bf16",
        family="llama_bf16",
        description=("DELLA at density 1 (mergekit's deterministic path: no drop, no "
                     "rescale), elected sign, normalize true (della's default), bfloat16"),
        recipe="""\
base: {base}
models:
  - path: {m0}
    weight: 1.0
  - path: {m1}
    weight: 0.5
  - path: {m2}
    weight: 0.8
merge: della(1, eps=0.1) |> elect |> disjoint
dtype: bfloat16
seed: 0
""",
        mergekit="""\
merge_method: della
base_model: {base}
models:
  - model: {m0}
    parameters: {{ weight: 1.0 }}
  - model: {m1}
    parameters: {{ weight: 0.5 }}
  - model: {m2}
    parameters: {{ weight: 0.8 }}
parameters:
  density: 1.0
  epsilon: 0.1
dtype: float32
out_dtype: bfloat16
""",
        sparsify=None,
        combine="disjoint",
        weights=(1.0, 0.5, 0.8),
        out_dtype="BF16",
    ),
    Case(
        name="linear_base_sum",
        family="llama_f32",
        description=("linear with normalize false and the base listed among the models "
                     "with weight 0.3 (a weighted sum of whole models)"),
        recipe="""\
base: {base}
models:
  - path: {m0}
    weight: 0.4
  - path: {m1}
    weight: 0.2
  - path: {m2}
    weight: 0.3
merge: linear(normalize=false, base_weight=0.3)
""",
        mergekit="""\
merge_method: linear
models:
  - model: {base}
    parameters: {{ weight: 0.3 }}
  - model: {m0}
    parameters: {{ weight: 0.4 }}
  - model: {m1}
    parameters: {{ weight: 0.2 }}
  - model: {m2}
    parameters: {{ weight: 0.3 }}
parameters:
  normalize: false
dtype: float32
""",
        sparsify=None,
        combine="linear",
        weights=(0.4, 0.2, 0.3),
        params={"base_weight": 0.3, "normalize": False},
    ),
    Case(
        name="passthrough",
        family="llama_f32",
        description="passthrough of task_0 scaled by 0.5 (mergekit's per-model scale)",
        recipe="""\
base: {base}
models:
  - path: {m0}
merge: passthrough(0.5)
""",
        mergekit="""\
merge_method: passthrough
models:
  - model: {m0}
    parameters: {{ scale: 0.5 }}
dtype: float32
""",
        sparsify=None,
        combine="passthrough",
        n_models=1,
        params={"scale": 0.5},
    ),
    Case(
        name="ram",
        family="llama_f32",
        description=("RAM: entries one model changed are kept, entries several changed "
                     "are averaged (epsilon 1e-5; ~8% of each task vector is exactly 0)"),
        recipe="""\
base: {base}
models:
  - path: {m0}
  - path: {m1}
  - path: {m2}
merge: ram
""",
        mergekit="""\
merge_method: ram
base_model: {base}
models:
  - model: {m0}
  - model: {m1}
  - model: {m2}
dtype: float32
""",
        sparsify=None,
        combine="ram",
        params={"epsilon": 1e-5},
    ),
    Case(
        name="ramplus_tl_bf16",
        family="llama_bf16",
        description=("RAM+ tensor-local, r 0.3, alpha 0.5, epsilon 1e-3 (so that many "
                     "entries count as unchanged), bfloat16 sharded inputs and output"),
        recipe="""\
base: {base}
models:
  - path: {m0}
  - path: {m1}
  - path: {m2}
merge: ramplus_tl(r=0.3, alpha=0.5, epsilon=0.001)
dtype: bfloat16
""",
        mergekit="""\
merge_method: ramplus_tl
base_model: {base}
models:
  - model: {m0}
  - model: {m1}
  - model: {m2}
parameters:
  r: 0.3
  alpha: 0.5
  epsilon: 0.001
dtype: float32
out_dtype: bfloat16
""",
        sparsify=None,
        combine="ramplus",
        out_dtype="BF16",
        params={"r": 0.3, "alpha": 0.5, "epsilon": 1e-3},
    ),
    Case(
        name="nuslerp",
        family="llama_f32",
        description=("NuSLERP of task_0 and task_1 about the base, weights 0.3/0.7 "
                     "(t = 0.7), one angle per tensor"),
        recipe="""\
base: {base}
models:
  - path: {m0}
    weight: 0.3
  - path: {m1}
    weight: 0.7
merge: nuslerp
""",
        mergekit="""\
merge_method: nuslerp
base_model: {base}
models:
  - model: {m0}
    parameters: {{ weight: 0.3 }}
  - model: {m1}
    parameters: {{ weight: 0.7 }}
dtype: float32
""",
        sparsify=None,
        combine="nuslerp",
        n_models=2,
        weights=(0.3, 0.7, 1.0),
        params={"centered": True},
    ),
    Case(
        name="nuslerp_rows",
        family="llama_f32",
        description=("NuSLERP of task_0 and task_1 themselves (mergekit without a "
                     "base_model), weights 1.0/0.5, one angle per row"),
        recipe="""\
base: {base}
models:
  - path: {m0}
    weight: 1.0
  - path: {m1}
    weight: 0.5
merge: nuslerp(flatten=false, centered=false)
""",
        mergekit="""\
merge_method: nuslerp
models:
  - model: {m0}
    parameters: {{ weight: 1.0 }}
  - model: {m1}
    parameters: {{ weight: 0.5 }}
parameters:
  nuslerp_flatten: false
dtype: float32
""",
        sparsify=None,
        combine="nuslerp_rows",
        n_models=2,
        weights=(1.0, 0.5, 1.0),
        params={"centered": False},
    ),
    Case(
        name="nuslerp_columns_bf16",
        family="llama_bf16",
        description=("NuSLERP about the base with nuslerp_row_wise (one angle per "
                     "vector along the first dimension), weights 0.6/0.4, bfloat16"),
        recipe="""\
base: {base}
models:
  - path: {m0}
    weight: 0.6
  - path: {m1}
    weight: 0.4
merge: nuslerp(flatten=false, row_wise=true)
dtype: bfloat16
""",
        mergekit="""\
merge_method: nuslerp
base_model: {base}
models:
  - model: {m0}
    parameters: {{ weight: 0.6 }}
  - model: {m1}
    parameters: {{ weight: 0.4 }}
parameters:
  nuslerp_flatten: false
  nuslerp_row_wise: true
dtype: float32
out_dtype: bfloat16
""",
        sparsify=None,
        combine="nuslerp_columns",
        n_models=2,
        weights=(0.6, 0.4, 1.0),
        out_dtype="BF16",
        params={"centered": True},
    ),
    Case(
        name="multislerp",
        family="llama_f32",
        description="Multi-SLERP of the three task vectors about the base, weights 1.0/0.5/0.8",
        recipe="""\
base: {base}
models:
  - path: {m0}
    weight: 1.0
  - path: {m1}
    weight: 0.5
  - path: {m2}
    weight: 0.8
merge: multislerp
""",
        mergekit="""\
merge_method: multislerp
base_model: {base}
models:
  - model: {m0}
    parameters: {{ weight: 1.0 }}
  - model: {m1}
    parameters: {{ weight: 0.5 }}
  - model: {m2}
    parameters: {{ weight: 0.8 }}
dtype: float32
""",
        sparsify=None,
        combine="multislerp",
        weights=(1.0, 0.5, 0.8),
    ),
    Case(
        name="karcher",
        family="llama_f32",
        description="Karcher mean of the three fine-tunes (mergekit without a base_model)",
        recipe="""\
base: {base}
models:
  - path: {m0}
  - path: {m1}
  - path: {m2}
merge: karcher
""",
        mergekit="""\
merge_method: karcher
models:
  - model: {m0}
  - model: {m1}
  - model: {m2}
dtype: float32
""",
        sparsify=None,
        combine="karcher",
        params={"with_base": False},
    ),
    Case(
        name="karcher_with_base_bf16",
        family="llama_bf16",
        description=("Karcher mean with a base_model, which mergekit averages too, "
                     "max_iter 20, bfloat16"),
        recipe="""\
base: {base}
models:
  - path: {m0}
  - path: {m1}
  - path: {m2}
merge: karcher(max_iter=20, with_base=true)
dtype: bfloat16
""",
        mergekit="""\
merge_method: karcher
base_model: {base}
models:
  - model: {m0}
  - model: {m1}
  - model: {m2}
parameters:
  max_iter: 20
dtype: float32
out_dtype: bfloat16
""",
        sparsify=None,
        combine="karcher",
        out_dtype="BF16",
        params={"with_base": True},
    ),
    Case(
        name="sce",
        family="llama_f32",
        description=("SCE with select_topk 0.5: the half of the elements of largest "
                     "variance across the task vectors, energy weights, sign erase"),
        recipe="""\
base: {base}
models:
  - path: {m0}
  - path: {m1}
  - path: {m2}
merge: sce(0.5)
""",
        mergekit="""\
merge_method: sce
base_model: {base}
models:
  - model: {m0}
  - model: {m1}
  - model: {m2}
parameters:
  select_topk: 0.5
dtype: float32
""",
        sparsify=None,
        combine="sce",
        params={"select_topk": 0.5},
    ),
    Case(
        name="sce_all_bf16",
        family="llama_bf16",
        description="SCE with select_topk 1 (no selection), bfloat16 sharded inputs and output",
        recipe="""\
base: {base}
models:
  - path: {m0}
  - path: {m1}
  - path: {m2}
merge: sce
dtype: bfloat16
""",
        mergekit="""\
merge_method: sce
base_model: {base}
models:
  - model: {m0}
  - model: {m1}
  - model: {m2}
dtype: float32
out_dtype: bfloat16
""",
        sparsify=None,
        combine="sce",
        out_dtype="BF16",
        params={"select_topk": 1.0},
    ),
    Case(
        name="arcee_fusion",
        family="llama_f32",
        description=("Arcee Fusion of the base and task_0: changes whose importance "
                     "(|delta| times the row's KL divergence) is an outlier"),
        recipe="""\
base: {base}
models:
  - path: {m0}
merge: arcee_fusion
""",
        mergekit="""\
merge_method: arcee_fusion
base_model: {base}
models:
  - model: {base}
  - model: {m0}
dtype: float32
""",
        sparsify=None,
        combine="arcee_fusion",
        n_models=1,
        band=2e-3,
    ),
    Case(
        name="dare_linear_stats",
        family="llama_f32",
        description=("dare_linear of task_0 alone at density 0.3 with rescale: random, so "
                     "compared by statistics (kept fraction, L1 norm restored)"),
        recipe="""\
base: {base}
models:
  - path: {m0}
merge: dare(0.7, rescale=l1) |> sum
seed: 0
""",
        mergekit="""\
merge_method: dare_linear
base_model: {base}
models:
  - model: {m0}
    parameters: {{ weight: 1.0, density: 0.3 }}
dtype: float32
""",
        sparsify=None,
        combine="sum",
        n_models=1,
        statistics={"density": 0.3, "epsilon": 0.0},
    ),
    Case(
        name="della_linear_stats",
        family="llama_f32",
        description=("della_linear of task_0 alone at density 0.4, epsilon 0.2: random, "
                     "compared by statistics (kept fraction, keep rate of the smaller and "
                     "the larger half of each row, L1 norm restored)"),
        recipe="""\
base: {base}
models:
  - path: {m0}
merge: della(0.4, eps=0.2) |> sum
seed: 0
""",
        mergekit="""\
merge_method: della_linear
base_model: {base}
models:
  - model: {m0}
    parameters: {{ weight: 1.0, density: 0.4, epsilon: 0.2 }}
dtype: float32
""",
        sparsify=None,
        combine="sum",
        n_models=1,
        statistics={"density": 0.4, "epsilon": 0.2},
    ),
    # ---- mergekit's example shapes (the mergekit front-end's corpus) ----------
    Case(
        name="ties_example",
        family="llama_f32",
        description=("mergekit's examples/ties.yml: per-model densities (one a gradient), "
                     "weights as a number, a gradient and {filter, value} conditions, "
                     "normalize and int8_mask true"),
        recipe="""\
base: {base}
models:
  - path: {m0}
    params: {{ density: [1, 0.7, 0.1] }}
  - path: {m1}
    weight: [0, 0.3, 0.7, 1]
    params: {{ density: 0.5 }}
  - path: {m2}
    weight: [{{ match: "*mlp*", value: 0.5 }}, {{ value: 0 }}]
    params: {{ density: 0.33 }}
merge: trim($density) |> elect |> disjoint
""",
        mergekit="""\
merge_method: ties
base_model: {base}
models:
  - model: {m0}
    parameters:
      density: [1, 0.7, 0.1]
      weight: 1.0
  - model: {m1}
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1]
  - model: {m2}
    parameters:
      density: 0.33
      weight:
        - filter: mlp
          value: 0.5
        - value: 0
parameters:
  normalize: true
  int8_mask: true
dtype: float32
""",
        sparsify="trim",
        combine="disjoint",
        density=([1, 0.7, 0.1], 0.5, 0.33),
        weights=(1.0, [0, 0.3, 0.7, 1], Cond((("mlp", 0.5), (None, 0.0)))),
    ),
    Case(
        name="slerp_filters",
        family="llama_f32",
        description=("mergekit's examples/gradient-slerp.yml over whole models: t a "
                     "gradient for self_attn, the reverse for mlp, 0.5 elsewhere"),
        recipe=SLERP_FILTERS_RECIPE,
        mergekit="""\
merge_method: slerp
base_model: {base}
models:
  - model: {base}
  - model: {m0}
""" + SLERP_FILTERS_PARAMETERS,
        sparsify=None,
        combine="slerp",
        n_models=1,
        t=SLERP_FILTERS_T,
    ),
    Case(
        name="slerp_slices",
        family="llama_f32",
        description=("mergekit's examples/gradient-slerp.yml as written: `slices:` with one "
                     "slice over every layer of both models, t conditions with gradients"),
        recipe=SLERP_FILTERS_RECIPE,
        mergekit="""\
slices:
  - sources:
      - model: {base}
        layer_range: [0, 3]
      - model: {m0}
        layer_range: [0, 3]
merge_method: slerp
base_model: {base}
""" + SLERP_FILTERS_PARAMETERS,
        sparsify=None,
        combine="slerp",
        n_models=1,
        t=SLERP_FILTERS_T,
    ),
    Case(
        name="task_arithmetic_negation",
        family="llama_f32",
        description=("task arithmetic with a negative weight (forgetting a task), "
                     "lambda 0.6, normalize false"),
        recipe="""\
base: {base}
models:
  - path: {m0}
  - path: {m1}
    weight: -0.5
  - path: {m2}
    weight: 0.7
merge: sum |> scale(0.6)
""",
        mergekit="""\
merge_method: task_arithmetic
base_model: {base}
models:
  - model: {m0}
    parameters: {{ weight: 1.0 }}
  - model: {m1}
    parameters: {{ weight: -0.5 }}
  - model: {m2}
    parameters: {{ weight: 0.7 }}
parameters:
  lambda: 0.6
  normalize: false
dtype: float32
""",
        sparsify=None,
        combine="sum",
        weights=(1.0, -0.5, 0.7),
        scale=0.6,
    ),
    Case(
        name="breadcrumbs_ties_global",
        family="llama_f32",
        description=("breadcrumbs_ties with weight, density and gamma given once at the "
                     "top level for every model (the mergekit-multi docs' shape), "
                     "normalize true"),
        recipe="""\
base: {base}
models:
  - path: {m0}
    weight: 0.7
  - path: {m1}
    weight: 0.7
  - path: {m2}
    weight: 0.7
merge: breadcrumbs(0.5, gamma=0.02) |> elect |> disjoint
""",
        mergekit="""\
merge_method: breadcrumbs_ties
base_model: {base}
models:
  - model: {m0}
  - model: {m1}
  - model: {m2}
parameters:
  weight: 0.7
  density: 0.5
  gamma: 0.02
  normalize: true
dtype: float32
""",
        sparsify="breadcrumbs",
        combine="disjoint",
        gamma=0.02,
        weights=(0.7, 0.7, 0.7),
        density=(0.5, 0.5, 0.5),
    ),
    Case(
        name="ties_fallthrough",
        family="llama_f32",
        description=("a model's {filter, value} density falls through to the top-level "
                     "gradient where its filter does not match (mergekit's precedence)"),
        recipe="""\
base: {base}
models:
  - path: {m0}
    params:
      density: [{{ match: "*mlp*", value: 0.6 }}]
  - path: {m1}
  - path: {m2}
params:
  density: [0.2, 0.4]
merge: trim($density) |> elect |> disjoint
""",
        mergekit="""\
merge_method: ties
base_model: {base}
models:
  - model: {m0}
    parameters:
      density:
        - filter: mlp
          value: 0.6
  - model: {m1}
  - model: {m2}
parameters:
  weight: 1.0
  density: [0.2, 0.4]
dtype: float32
""",
        sparsify="trim",
        combine="disjoint",
        density=(Cond((("mlp", 0.6), (None, [0.2, 0.4]))), [0.2, 0.4], [0.2, 0.4]),
    ),
    Case(
        name="linear_base_listed",
        family="llama_f32",
        description=("linear with a base_model listed among the models with its own "
                     "weight (averaged in), normalize true"),
        recipe="""\
base: {base}
models:
  - path: {m0}
    weight: 0.5
  - path: {m1}
    weight: 0.3
  - path: {m2}
    weight: 0.4
merge: linear(base_weight=0.2)
""",
        mergekit="""\
merge_method: linear
base_model: {base}
models:
  - model: {base}
    parameters: {{ weight: 0.2 }}
  - model: {m0}
    parameters: {{ weight: 0.5 }}
  - model: {m1}
    parameters: {{ weight: 0.3 }}
  - model: {m2}
    parameters: {{ weight: 0.4 }}
dtype: float32
""",
        sparsify=None,
        combine="linear",
        weights=(0.5, 0.3, 0.4),
        params={"base_weight": 0.2, "normalize": True},
    ),
    # ---- `slices:` (layer stacks; the output layers are renumbered) ------------
    Case(
        name="frankenmerge_44",
        family="llama_deep",
        description=("mergekit's examples/orcamini-platy-44layer.yml shape: passthrough "
                     "of task_0's layers 0..24 then task_1's layers 20..40 (44 layers); "
                     "embeddings from task_0, final norm and lm_head from task_1, bfloat16 "
                     "copies"),
        recipe="""\
base: {m0}
models:
  - path: {m1}
merge: passthrough
slices:
  - from: base
    layers: 0..24
  - from: {m1}
    layers: 20..40
""",
        mergekit="""\
slices:
  - sources:
      - model: {m0}
        layer_range: [0, 24]
  - sources:
      - model: {m1}
        layer_range: [20, 40]
merge_method: passthrough
dtype: bfloat16
""",
        sparsify=None,
        combine="passthrough",
        n_models=1,
        slices=(Slice(0, 24, ("m0",)), Slice(20, 40, ("m1",))),
        inputs=("m0", ("m1",)),
    ),
    Case(
        name="frankenmerge_scaled",
        family="llama_f32",
        description=("passthrough frankenmerge, task_0's layers 0..2 then task_1's 1..3 "
                     "(4 layers) with scale conditions on the second slice: o_proj 0, "
                     "down_proj 0.5, everything else 0.9 (its final norm and lm_head too)"),
        recipe="""\
base: {m0}
models:
  - path: {m1}
merge: passthrough
slices:
  - from: base
    layers: 0..2
  - from: {m1}
    layers: 1..3
    scale:
      - {{ match: "*o_proj*", value: 0.0 }}
      - {{ match: "*down_proj*", value: 0.5 }}
      - {{ value: 0.9 }}
""",
        mergekit="""\
slices:
  - sources:
      - model: {m0}
        layer_range: [0, 2]
  - sources:
      - model: {m1}
        layer_range: [1, 3]
        parameters:
          scale:
            - filter: o_proj
              value: 0.0
            - filter: down_proj
              value: 0.5
            - value: 0.9
merge_method: passthrough
dtype: float32
""",
        sparsify=None,
        combine="passthrough",
        n_models=1,
        slices=(Slice(0, 2, ("m0",)),
                Slice(1, 3, ("m1",),
                      scale=Cond((("o_proj", 0.0), ("down_proj", 0.5), (None, 0.9))))),
        inputs=("m0", ("m1",)),
    ),
    Case(
        name="frankenmerge_empty_last",
        family="llama_f32",
        description=("mergekit issue #308's trick: passthrough frankenmerge, task_0's "
                     "layers 0..2 then task_1's 1..3 (4 layers), ended by an empty slice "
                     "of task_2 (layers 3..3) that adds no layer but, as the last slice, "
                     "gives the final norm and lm_head; embeddings from task_0"),
        recipe="""\
base: {m0}
models:
  - path: {m1}
  - path: {m2}
merge: passthrough
slices:
  - from: base
    layers: 0..2
  - from: {m1}
    layers: 1..3
  - from: {m2}
    layers: 3..3
dtype: float32
""",
        mergekit="""\
slices:
  - sources:
      - model: {m0}
        layer_range: [0, 2]
  - sources:
      - model: {m1}
        layer_range: [1, 3]
  - sources:
      - model: {m2}
        layer_range: [3, 3]
merge_method: passthrough
dtype: float32
""",
        sparsify=None,
        combine="passthrough",
        n_models=1,
        slices=(Slice(0, 2, ("m0",)), Slice(1, 3, ("m1",)), Slice(3, 3, ("m2",))),
        inputs=("m0", ("m1", "m2")),
    ),
    Case(
        name="slices_merged",
        family="llama_f32",
        description=("SLERP of the base and task_0 over two slices (layers 0..2, then "
                     "1..3: 4 layers) with per-slice t: a gradient [0, 1] within the first "
                     "(embeddings t = 0), 0.3 in the second (final norm and lm_head too)"),
        recipe="""\
base: {base}
models:
  - path: {m0}
params:
  t: 0.5
merge: slerp($t)
slices:
  - layers: 0..2
    params:
      t: [0, 1]
  - layers: 1..3
    params:
      t: 0.3
""",
        mergekit="""\
slices:
  - sources:
      - model: {base}
        layer_range: [0, 2]
      - model: {m0}
        layer_range: [0, 2]
    parameters:
      t: [0, 1]
  - sources:
      - model: {base}
        layer_range: [1, 3]
      - model: {m0}
        layer_range: [1, 3]
    parameters:
      t: 0.3
merge_method: slerp
base_model: {base}
parameters:
  t: 0.5
dtype: float32
""",
        sparsify=None,
        combine="slerp",
        n_models=1,
        slices=(Slice(0, 2, ("base", "m0"), t=[0, 1]), Slice(1, 3, ("base", "m0"), t=0.3)),
    ),
    Case(
        name="slices_offset",
        family="llama_f32",
        description=("TIES density 0.5 of task_0 and task_1 over one merged slice whose "
                     "sources take different layers: output layers 0, 1 merge the base's "
                     "and task_0's layers 0, 1 with task_1's 1, 2 (2 layers); embeddings, "
                     "final norm and lm_head merged from all three"),
        recipe="""\
base: {base}
models:
  - path: {m0}
  - path: {m1}
merge: ties(trim(0.5), elect, disjoint)
slices:
  - layers: 0..2
    layers_of: {{ {m1}: 1..3 }}
dtype: float32
""",
        mergekit="""\
slices:
  - sources:
      - model: {base}
        layer_range: [0, 2]
      - model: {m0}
        layer_range: [0, 2]
      - model: {m1}
        layer_range: [1, 3]
merge_method: ties
base_model: {base}
parameters:
  density: 0.5
  weight: 1.0
  normalize: true
dtype: float32
""",
        sparsify="trim",
        combine="disjoint",
        n_models=2,
        weights=(1.0, 1.0),
        density=(0.5, 0.5),
        slices=(Slice(0, 2, ("base", "m0", "m1"), layers_of=(("m1", 1, 3),)),),
    ),
    # ---- stacks whose slices merge other models, bases or values ---------------
    Case(
        name="slices_varied_ties",
        family="llama_f32",
        description=("TIES over two slices of other models and values: output layers 0, "
                     "1 merge task_0 (density 0.3, weight 0.8) and task_1 (0.5) into the "
                     "base's layers 0, 1 (embeddings too); layer 2 merges task_1 (weight "
                     "0.6) and task_2 at the slice's density 0.7 and lambda 0.9 (final "
                     "norm and lm_head too)"),
        recipe="""\
base: {base}
models:
  - path: {m0}
  - path: {m1}
  - path: {m2}
params:
  density: 0.5
  lambda: 1
merge: trim($density) |> elect |> disjoint |> scale($lambda)
slices:
  - layers: 0..2
    models:
      - path: {m0}
        weight: 0.8
        params: {{ density: 0.3 }}
      - {m1}
  - layers: 2..3
    models:
      - path: {m1}
        weight: 0.6
      - {m2}
    params:
      density: 0.7
      lambda: 0.9
dtype: float32
""",
        mergekit="""\
merge_method: ties
base_model: {base}
parameters:
  density: 0.5
  weight: 1.0
slices:
  - sources:
      - model: {base}
        layer_range: [0, 2]
      - model: {m0}
        layer_range: [0, 2]
        parameters: {{ density: 0.3, weight: 0.8 }}
      - model: {m1}
        layer_range: [0, 2]
  - sources:
      - model: {base}
        layer_range: [2, 3]
      - model: {m1}
        layer_range: [2, 3]
        parameters: {{ weight: 0.6 }}
      - model: {m2}
        layer_range: [2, 3]
    parameters:
      density: 0.7
      lambda: 0.9
dtype: float32
""",
        sparsify="trim",
        combine="disjoint",
        n_models=3,
        density=(0.5, 0.5, 0.5),
        slices=(Slice(0, 2, ("base", "m0", "m1"), weights=(0.8, 1.0), density=(0.3, 0.5)),
                Slice(2, 3, ("base", "m1", "m2"), weights=(0.6, 1.0), density=(0.7, 0.7),
                      lam=0.9)),
        inputs=("base", ("m0", "m1", "m2")),
    ),
    Case(
        name="slices_varied_base",
        family="llama_f32",
        description=("SLERP with a base per slice: output layers 0, 1 interpolate the "
                     "base and task_0 at t = 0.3 (embeddings too); layers 2, 3 interpolate "
                     "task_0, the second slice's base_model, and task_1 over layers 1, 2 "
                     "at t = 0.6 (final norm and lm_head too)"),
        recipe="""\
base: {base}
models:
  - path: {m0}
  - path: {m1}
merge: slerp($t)
slices:
  - layers: 0..2
    models: [{m0}]
    params: {{ t: 0.3 }}
  - layers: 1..3
    base: {m0}
    models: [{m1}]
    params: {{ t: 0.6 }}
""",
        mergekit="""\
merge_method: slerp
base_model: {base}
slices:
  - sources:
      - model: {base}
        layer_range: [0, 2]
      - model: {m0}
        layer_range: [0, 2]
    parameters:
      t: 0.3
  - base_model: {m0}
    sources:
      - model: {m0}
        layer_range: [1, 3]
      - model: {m1}
        layer_range: [1, 3]
    parameters:
      t: 0.6
dtype: float32
""",
        sparsify=None,
        combine="slerp",
        n_models=1,
        slices=(Slice(0, 2, ("base", "m0"), t=0.3), Slice(1, 3, ("m0", "m1"), t=0.6)),
        inputs=("base", ("m0", "m1")),
    ),
    Case(
        name="slices_varied_linear",
        family="llama_bf16",
        description=("linear without a base_model over two slices of other models: "
                     "output layer 0 averages task_0 and task_1 (weights 0.6, 0.4) over "
                     "layer 0 (embeddings too), layer 1 task_1 and task_2 (0.5, 0.5) over "
                     "layer 1 (final norm and lm_head too); bfloat16"),
        recipe="""\
base: {m0}
models:
  - path: {m0}
  - path: {m1}
  - path: {m2}
merge: linear
slices:
  - layers: 0..1
    models:
      - path: {m0}
        weight: 0.6
      - path: {m1}
        weight: 0.4
  - layers: 1..2
    base: {m1}
    models:
      - path: {m1}
        weight: 0.5
      - path: {m2}
        weight: 0.5
dtype: bfloat16
""",
        mergekit="""\
merge_method: linear
slices:
  - sources:
      - model: {m0}
        layer_range: [0, 1]
        parameters: {{ weight: 0.6 }}
      - model: {m1}
        layer_range: [0, 1]
        parameters: {{ weight: 0.4 }}
  - sources:
      - model: {m1}
        layer_range: [1, 2]
        parameters: {{ weight: 0.5 }}
      - model: {m2}
        layer_range: [1, 2]
        parameters: {{ weight: 0.5 }}
dtype: float32
out_dtype: bfloat16
""",
        sparsify=None,
        combine="mean",
        n_models=2,
        slices=(Slice(0, 1, ("m0", "m1"), base="m0", members=("m0", "m1"), weights=(0.6, 0.4)),
                Slice(1, 2, ("m1", "m2"), base="m1", members=("m1", "m2"),
                      weights=(0.5, 0.5))),
        inputs=("m0", ("m0", "m1", "m2")),
    ),
    # ---- LoRA adapters as inputs (llama_lora/) ---------------------------------
    # mergekit merges each `model+lora` with PEFT's merge_and_unload into
    # --lora-merge-cache (a full model copy) and merges the copies; reefknot applies the
    # adapter as the tensors are read.
    Case(
        name="lora_linear",
        family="llama_f32",
        description=("linear of task_0 with adapter_0 merged in (mergekit's string form "
                     "model+lora) and task_1 as it is, weights 0.6/0.4, normalize true"),
        recipe="""\
base: {base}
models:
  - path: {m0}
    lora: {adapter_0}
    weight: 0.6
  - path: {m1}
    weight: 0.4
merge: mean
""",
        mergekit="""\
merge_method: linear
models:
  - model: {m0}+{adapter_0}
    parameters: {{ weight: 0.6 }}
  - model: {m1}
    parameters: {{ weight: 0.4 }}
parameters:
  normalize: true
dtype: float32
""",
        sparsify=None,
        combine="mean",
        n_models=2,
        weights=(0.6, 0.4),
        lora=("adapter_0", None),
    ),
    Case(
        name="lora_ties",
        family="llama_f32",
        description=("TIES density 0.5 of task_0 with adapter_1 (rsLoRA, an embedding "
                     "LoRA, rank/alpha patterns; mergekit's dict form {model, lora}) and "
                     "task_1 with adapter_0 (string form)"),
        recipe="""\
base: {base}
models:
  - path: {m0}
    lora: {adapter_1}
  - path: {m1}
    lora: {adapter_0}
merge: ties(trim(0.5), elect, disjoint)
""",
        mergekit="""\
merge_method: ties
base_model: {base}
models:
  - model:
      model: {m0}
      lora: {adapter_1}
  - model: {m1}+{adapter_0}
parameters:
  density: 0.5
  weight: 1.0
  normalize: true
dtype: float32
""",
        sparsify="trim",
        combine="disjoint",
        n_models=2,
        weights=(1.0, 1.0),
        density=(0.5, 0.5),
        lora=("adapter_1", "adapter_0"),
    ),
    Case(
        name="lora_passthrough",
        family="llama_f32",
        description=("passthrough of task_2 with adapter_1 merged in: the model and its "
                     "adapter as one model (mergekit without a base_model)"),
        recipe="""\
base: {base}
models:
  - path: {m2}
    lora: {adapter_1}
merge: passthrough
""",
        mergekit="""\
merge_method: passthrough
models:
  - model: {m2}+{adapter_1}
dtype: float32
""",
        sparsify=None,
        combine="passthrough",
        n_models=1,
        params={"scale": 1.0},
        inputs=("base", ("m2",)),
        lora=("adapter_1",),
    ),
]


# --------------------------------------------------------------------------
# independent model of operators.md (float32 numpy), for the self-check
# --------------------------------------------------------------------------

LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def depth_t(name: str, n_layers: int) -> float:
    m = LAYER_RE.search(name)
    if not m:
        return 0.0
    if n_layers == 1:
        return 1.0
    return int(m.group(1)) / (n_layers - 1)


def value_at(v, name: str, t: float) -> float:
    """A parameter value (number, gradient or Cond) on tensor ``name`` at depth t."""
    if isinstance(v, Cond):
        for f, value in v.entries:
            if f is None or f in name:
                return gradient_value(value, t)
        raise ValueError(f"no condition of {v} matches {name}")
    return gradient_value(v, t)


def gradient_value(v, t: float) -> float:
    if not isinstance(v, (list, tuple)):
        return float(v)
    k = len(v)
    s = t * (k - 1)
    i0 = math.floor(s)
    i1 = min(k - 1, i0 + 1)
    f = s - i0
    return (1 - f) * float(v[i0]) + f * float(v[i1])


def case_density(case: Case, name: str, n_layers: int) -> Optional[List[float]]:
    if case.density is None:
        return None
    t = depth_t(name, n_layers)
    out = []
    for d in case.density:
        if case.density_override and case.density_override[0] in name:
            d = case.density_override[1]
        out.append(value_at(d, name, t))
    return out


def keep_count(density: float, n: int) -> int:
    if density <= 0:
        return 0
    if density >= 1:
        return n
    return max(1, int(math.floor(density * n)))


def kept_ranks(case: Case, density: float, n: int) -> Tuple[int, int]:
    """The sparsifier keeps ranks [lo, hi) in order of decreasing |delta|."""
    if case.sparsify == "trim":
        return 0, keep_count(density, n)
    if case.sparsify == "breadcrumbs":
        if density >= 1:
            return 0, n
        top = int(math.floor(case.gamma * n))
        keep = min(n, int(math.floor(density * n)))
        lo = min(top, n - keep)  # fewer outliers when top + keep > n (mergekit)
        return lo, lo + keep
    raise ValueError(case.sparsify)


def cuts(case: Case, density: float, n: int) -> List[int]:
    """Ranks (in order of decreasing |delta|) where kept and dropped entries meet."""
    lo, hi = kept_ranks(case, density, n)
    return [c for c in sorted({lo, hi}) if 0 < c < n and lo < hi]


def sparsify_stable(case: Case, delta: np.ndarray, density: float) -> np.ndarray:
    """operators.md's sparsifier; ties broken towards the lower flat index."""
    flat = delta.reshape(-1)
    lo, hi = kept_ranks(case, density, flat.size)
    out = np.zeros_like(flat)
    order = np.argsort(-np.abs(flat), kind="stable")[lo:hi]
    out[order] = flat[order]
    return out.reshape(delta.shape)


def ambiguous_ties(delta: np.ndarray, cut_ranks: Sequence[int]) -> np.ndarray:
    """Positions an unstable sort may keep or drop: |delta| equal across a cut."""
    a = np.abs(delta.reshape(-1))
    desc = np.sort(a)[::-1]
    mask = np.zeros(a.size, dtype=bool)
    for c in cut_ranks:
        if desc[c - 1] == desc[c] and desc[c] != 0:  # a kept zero adds nothing
            mask |= a == desc[c]
    return mask


def l1_rescaled(original: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """mergekit's L1 rescale: kept * |original|_1 / |kept|_1 unless a norm < 1e-7."""
    before = float(np.abs(original.astype(np.float64)).sum())
    after = float(np.abs(kept.astype(np.float64)).sum())
    if before < 1e-7 or after < 1e-7:
        return kept
    return (kept * np.float32(before / after)).astype(np.float32)


def slerp_reference(t: float, v0: np.ndarray, v1: np.ndarray) -> np.ndarray:
    a = v0.astype(np.float64).reshape(-1)
    b = v1.astype(np.float64).reshape(-1)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    na = na if na > 1e-8 else 1.0
    nb = nb if nb > 1e-8 else 1.0
    d = float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))
    if abs(d) > 0.9995:
        ca, cb = 1.0 - t, t
    else:
        om = math.acos(d)
        ca, cb = math.sin((1 - t) * om) / math.sin(om), math.sin(t * om) / math.sin(om)
    return (np.float32(ca) * v0 + np.float32(cb) * v1).astype(np.float32)


def nuslerp_reference(t: float, v0: np.ndarray, v1: np.ndarray, layout: str) -> np.ndarray:
    """mergekit's nuslerp on float64 copies; layout: whole | rows | columns."""
    shape = v0.shape
    a = v0.astype(np.float64)
    b = v1.astype(np.float64)
    if layout == "whole":
        a, b = a.reshape(1, -1), b.reshape(1, -1)
    elif layout == "rows":
        a, b = a.reshape(-1, shape[-1]), b.reshape(-1, shape[-1])
    else:  # vectors along the first dimension
        a, b = a.reshape(shape[0], -1).T, b.reshape(shape[0], -1).T
    na = np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-7)
    nb = np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-7)
    cos = np.clip(((a / na) * (b / nb)).sum(axis=1, keepdims=True), -1, 1)
    colinear = (1 - cos ** 2) <= 1e-16
    theta = np.arccos(np.where(colinear, 0, cos))
    with np.errstate(divide="ignore", invalid="ignore"):
        res = (np.sin((1 - t) * theta) * a + np.sin(t * theta) * b) / np.sin(theta)
    res = np.where(colinear, (1 - t) * a + t * b, res)
    if layout == "columns":
        res = res.T
    return res.reshape(shape).astype(np.float32)


def multislerp_reference(vs: List[np.ndarray], w: Sequence[float], eps: float = 1e-8):
    x = np.stack([v.astype(np.float64).reshape(-1) for v in vs])
    w = np.asarray(w, dtype=np.float64)
    w = w / w.sum()
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    u = x / (norms + eps)
    mean = (u * w[:, None]).sum(0)
    mean = mean / np.linalg.norm(mean)
    dots = (u * mean).sum(-1, keepdims=True)
    tangent = ((u - dots * mean) * w[:, None]).sum(0)
    tn = np.linalg.norm(tangent) + eps
    res = mean * np.cos(tn) + tangent * (np.sin(tn) / tn)
    res = res * (norms[:, 0] * w).sum()
    return res.reshape(vs[0].shape).astype(np.float32)


def karcher_reference(vs: List[np.ndarray], max_iter: int = 10, tol: float = 1e-5):
    x = [v.astype(np.float64).reshape(-1) for v in vs]
    n = len(x)
    alphas = [1.0 / n] * n
    norms = [float(np.linalg.norm(v)) for v in x]
    units = [v / nv if nv > 0 else np.zeros_like(v) for v, nv in zip(x, norms)]
    valid = [i for i in range(n) if norms[i] > tol]
    va = [alphas[i] for i in valid]
    va = [a / sum(va) for a in va]
    vu = [units[i] for i in valid]
    mean = sum(a * u for a, u in zip(va, vu))
    mn = np.linalg.norm(mean)
    mean = vu[0].copy() if mn < tol else mean / mn
    for _ in range(max_iter):
        tangent = np.zeros_like(mean)
        for a, u in zip(va, vu):
            dot = float(np.clip(np.dot(mean, u), -1, 1))
            theta = math.acos(dot)
            if theta < tol:
                continue
            tangent += a * (theta / math.sin(theta)) * (u - dot * mean)
        tn = np.linalg.norm(tangent)
        if tn < tol:
            break
        mean = math.cos(tn) * mean + math.sin(tn) * (tangent / tn)
        un = np.linalg.norm(mean)
        if un > tol:
            mean = mean / un
    scale = sum(a * nv for a, nv in zip(alphas, norms))
    return (scale * mean).reshape(vs[0].shape).astype(np.float32)


def model_stock_ratio(deltas: List[np.ndarray]) -> float:
    n = len(deltas)
    cos = []
    for i in range(n):
        for j in range(i + 1, n):
            a, b = deltas[i].astype(np.float64), deltas[j].astype(np.float64)
            norms = max(np.linalg.norm(a) * np.linalg.norm(b), 1e-6)
            cos.append(float(np.clip(np.dot(a, b) / norms, -1.0, 1.0)))
    c = sum(cos) / len(cos)
    den = 1 + (n - 1) * c
    return 0.0 if abs(den) < 1e-6 else n * c / den


def in_order_sum(xs: Sequence):
    """x_0 + x_1 + .. left to right in float32 (no leading 0, which would turn -0.0
    into +0.0), for any number of models."""
    total = xs[0]
    for x in xs[1:]:
        total = total + x
    return total


def reference_merge(case: Case, fam: Family, models: List[Dict[str, np.ndarray]]):
    """``models``: [base, model_1, ..] as the case reads them (case_models)."""
    out = {}
    ties_mask = {}
    f32 = np.float32
    n_models = case.n_models
    for name, shape in fam.tensor_specs():
        base = models[0][name].astype(f32)
        deltas = [models[i + 1][name].astype(f32) - base for i in range(n_models)]
        t = depth_t(name, fam.layers)
        w = [f32(value_at(x, name, t)) for x in case.weights[:n_models]]
        dens = case_density(case, name, fam.layers)
        amb = np.zeros(base.size, dtype=bool)
        if case.sparsify:
            for i in range(n_models):
                amb |= ambiguous_ties(deltas[i], cuts(case, dens[i], base.size))
            cut = [sparsify_stable(case, d, dens[i]) for i, d in enumerate(deltas)]
            if case.rescale:
                cut = [l1_rescaled(d, c) if dens[i] < 1 else d
                       for i, (d, c) in enumerate(zip(deltas, cut))]
            deltas = cut
        u = [f32(w[i]) * deltas[i] for i in range(n_models)]
        if case.combine in ("disjoint", "disjoint_sum"):
            s = in_order_sum(u)
            gamma = np.where(s >= 0, f32(1), f32(-1))
            num = np.zeros_like(base)
            den = np.zeros_like(base)
            for i in range(n_models):
                agree = (u[i] != 0) & (np.sign(u[i]) == gamma)
                num = num + np.where(agree, u[i], f32(0))
                den = den + np.where(agree, w[i], f32(0)).astype(f32)
            if case.combine == "disjoint":
                den = np.where(den == 0, f32(1), den)
                delta = num / den
            else:
                delta = num
        elif case.combine == "sum":
            delta = in_order_sum(u)
        elif case.combine == "mean":
            sw = in_order_sum([f32(x) for x in w])
            if abs(sw) < 1e-8:
                sw = f32(1)
            delta = in_order_sum(u) / sw
        elif case.combine == "slerp":
            tv = value_at(case.t, name, t)
            delta = slerp_reference(tv, base, base + deltas[0]) - base
        elif case.combine == "nearswap":
            d = deltas[0]
            omega = np.clip(f32(case.t) / np.maximum(np.abs(d), f32(1e-6)), 0, 1).astype(f32)
            delta = omega * d
        elif case.combine == "linear":
            wb = f32(case.params["base_weight"])
            total = wb + f32(w[0]) + f32(w[1]) + f32(w[2])
            acc = wb * base + f32(w[0]) * (base + deltas[0]) + f32(w[1]) * (base + deltas[1])
            acc = acc + f32(w[2]) * (base + deltas[2])
            if case.params["normalize"]:
                acc = acc / total
            delta = acc - base
        elif case.combine in ("nuslerp", "nuslerp_rows", "nuslerp_columns"):
            layout = {"nuslerp": "whole", "nuslerp_rows": "rows",
                      "nuslerp_columns": "columns"}[case.combine]
            tv = float(w[1]) / (float(w[0]) + float(w[1]))
            if case.params.get("centered", True):
                delta = nuslerp_reference(tv, deltas[0], deltas[1], layout)
            else:
                delta = nuslerp_reference(tv, base + deltas[0], base + deltas[1], layout) - base
        elif case.combine == "multislerp":
            delta = multislerp_reference(deltas, [float(x) for x in w])
        elif case.combine == "karcher":
            inputs = [base + d for d in deltas]
            if case.params.get("with_base"):
                inputs = [base] + inputs
            delta = karcher_reference(inputs) - base
        elif case.combine == "sce":
            tv = np.stack(deltas)
            topk = case.params["select_topk"]
            if topk < 1:
                var = tv.astype(np.float64).var(axis=0).astype(np.float32).reshape(-1)
                k = int(np.count_nonzero(var) * topk)
                mask = np.zeros(var.size, dtype=np.float32)
                if k > 0:
                    order = np.argsort(-var, kind="stable")[:k]
                    mask[order] = 1
                tv = tv * mask.reshape(base.shape)[None]
            s_ = tv.sum(axis=0)
            elected = np.where(s_ >= 0, f32(1), f32(-1))
            agree = (np.sign(tv) == elected[None]).astype(np.float32)
            e = (tv.astype(np.float64) ** 2).reshape(n_models, -1).mean(axis=1)
            c = (np.ones(n_models) / n_models if abs(e.sum()) < 1e-6 else e / e.sum())
            c = c.astype(np.float32).reshape((n_models,) + (1,) * base.ndim)
            ew = c * agree
            delta = (tv * ew).sum(axis=0) / np.maximum(ew.sum(axis=0), f32(1e-6))
        elif case.combine == "arcee_fusion":
            x = (base + deltas[0]).astype(np.float64)
            b64 = base.astype(np.float64)
            def softmax(v):
                e = np.exp(v - v.max(axis=-1, keepdims=True))
                return e / e.sum(axis=-1, keepdims=True) + 1e-8
            p_, q_ = softmax(x), softmax(b64)
            kl = (p_ * np.log(p_ / q_)).sum(axis=-1, keepdims=True)
            imp = (np.abs(deltas[0]).astype(np.float64) * kl).astype(np.float32)
            srt = np.sort(imp.reshape(-1))
            qs = [srt[int(np.float32(q) * np.float32(srt.size - 1))] for q in (0.25, 0.5, 0.75)]
            thr = np.float32(qs[1] + np.float32(1.5) * (qs[2] - qs[0]))
            delta = np.where(imp >= thr, deltas[0], f32(0))
            if case.band:
                margin = np.abs(imp.astype(np.float64) - float(thr)) / float(thr)
                amb |= (margin < case.band).reshape(-1)
        elif case.combine == "passthrough":
            delta = f32(case.params["scale"]) * (base + deltas[0]) - base
        elif case.combine in ("ram", "ramplus"):
            eps = f32(case.params["epsilon"])
            active = [np.abs(d) > eps for d in deltas]
            c = sum(a.astype(np.int64) for a in active)
            lam = [f32(1)] * n_models
            if case.combine == "ramplus":
                r, alpha = case.params["r"], case.params["alpha"]
                lam = []
                for a in active:
                    shared = int((a & (c > 1)).sum())
                    unique = int((a & (c == 1)).sum())
                    rho = shared / max(unique, case.params["epsilon"])
                    lam.append(f32(1 + r * min(max(rho, 0.0), alpha)))
            delta = np.zeros_like(base)
            for i in range(n_models):
                z = np.where(active[i], deltas[i], f32(0))
                delta = delta + np.where(c == 1, lam[i] * z,
                                         z / np.maximum(c, 1).astype(f32))
        elif case.combine in ("model_stock", "model_stock_rows"):
            mean = (deltas[0] + deltas[1] + deltas[2]) / f32(3)
            if case.combine == "model_stock":
                ratio = f32(model_stock_ratio([d.reshape(-1) for d in deltas]))
            else:
                rows = [d.reshape(-1, shape[-1]) for d in deltas]
                ratio = np.array([[model_stock_ratio([r[k] for r in rows])]
                                  for k in range(rows[0].shape[0])], dtype=f32)
                mean = mean.reshape(-1, shape[-1])
            delta = (ratio * mean).reshape(shape)
        else:
            raise ValueError(case.combine)
        if case.scale != 1.0:
            delta = delta * f32(case.scale)
        merged = (base + delta).astype(f32)
        out[name] = Tensor.from_f32(merged, case.out_dtype or fam.dtype)
        ties_mask[name] = amb.reshape(-1)
    return out, ties_mask


def model_index(key: str) -> int:
    """A paths_for key ("base", "m0", ..) -> its index in make_family_tensors' list."""
    return 0 if key == "base" else int(key[1:]) + 1


def golden_inputs(case: Case) -> Tuple[str, List[str]]:
    """The recipe's base and models, as paths_for keys (golden.json's inputs)."""
    if case.inputs:
        return case.inputs[0], list(case.inputs[1])
    return "base", [f"m{t}" for t in range(case.n_models)]


def case_models(case: Case, fam: Family, models: List[Dict[str, np.ndarray]],
                updates: Dict[str, Dict[str, np.ndarray]],
                with_lora: bool = True) -> List[Dict[str, np.ndarray]]:
    """[base, model_1, ..] as the case's merge reads them: golden_inputs' models, each
    with its LoRA adapter (``updates[adapter]``, lora_updates) merged in unless
    ``with_lora`` is false (the folders as golden.json names them).  Without adapters
    and ``inputs`` this is ``models[:n_models + 1]``, the same arrays."""
    base, others = golden_inputs(case)
    out = [models[model_index(base)]]
    for i, key in enumerate(others):
        m = models[model_index(key)]
        adapter = case.lora[i] if case.lora else None
        if adapter and with_lora:
            m = apply_lora(fam, m, updates[adapter])
        out.append(m)
    return out


def slice_plan(case: Case, fam: Family) -> List[Tuple[str, str, Slice, float]]:
    """mergekit's `slices:` as (output tensor, input tensor, slice, t), in model order:
    the tensors before the layer stack (embeddings) from the first slice at t = 0; the
    layers slice after slice, output layer k+i reading layer start+i of every source of
    a slice of n layers at t = i/(n-1) (1 when n = 1), k the layers of the slices
    before; the tensors after the stack (final norm, lm_head) from the last slice at
    t = 0, even when that slice is empty (n = 0: no layers, as mergekit allows)."""
    specs = [n for n, _ in fam.tensor_specs()]
    suffixes = [n[len("model.layers.0."):] for n in specs if n.startswith("model.layers.0.")]
    pre: List[str] = []
    post: List[str] = []
    for n in specs:
        if LAYER_RE.search(n):
            continue
        (post if any(LAYER_RE.search(m) for m in specs[:specs.index(n)]) else pre).append(n)
    rows = [(n, n, case.slices[0], 0.0) for n in pre]
    k = 0
    for sl in case.slices:
        # an empty slice (start == end) adds no layer; as the last slice it still gives
        # the tensors after the stack (mergekit issue #308's frankenmerge_empty_last)
        if not 0 <= sl.start <= sl.end <= fam.layers:
            raise ValueError(f"{case.name}: slice {sl.start}..{sl.end} out of {fam.layers}")
        n = sl.end - sl.start
        for key, start, end in sl.layers_of:
            if key not in sl.sources or end - start != n or not 0 <= start <= end <= fam.layers:
                raise ValueError(f"{case.name}: {key}'s layers {start}..{end} in slice "
                                 f"{sl.start}..{sl.end}")
        for i in range(n):
            t = i / (n - 1) if n > 1 else 1.0
            for suf in suffixes:
                rows.append((f"model.layers.{k}.{suf}", f"model.layers.{sl.start + i}.{suf}",
                             sl, t))
            k += 1
    rows += [(n, n, case.slices[-1], 0.0) for n in post]
    return rows


def slice_layers(case: Case) -> int:
    return sum(sl.end - sl.start for sl in case.slices)


def source_name(sl: Slice, key: str, in_name: str) -> str:
    """The tensor source ``key`` of slice ``sl`` reads for slice_plan's input tensor
    ``in_name`` (a tensor of the slice's layers ``[start, end)``): that one, but for a
    source of ``layers_of``, whose layer start' + i stands for the slice's start + i."""
    for k, start, _ in sl.layers_of:
        m = LAYER_RE.search(in_name)
        if k == key and m:
            layer = int(m.group(1)) - sl.start + start
            return in_name[:m.start(1)] + str(layer) + in_name[m.end(1):]
    return in_name


def output_specs(case: Case, fam: Family) -> List[Tuple[str, Tuple[int, ...]]]:
    """The output tensors and their shapes: the family's, or a `slices:` case's stack
    (slice_plan's output names)."""
    if not case.slices:
        return fam.tensor_specs()
    shapes = dict(fam.tensor_specs())
    return [(o, shapes[i]) for o, i, _, _ in slice_plan(case, fam)]


def renamed_tensors(case: Case, fam: Family) -> Dict[str, str]:
    """golden.json's `renamed`: output tensor -> the input tensor the base reads (and
    every model but those of `renamed_models`), where the names differ."""
    base, _ = golden_inputs(case)
    out = {}
    for o, i, sl, _ in slice_plan(case, fam):
        b = source_name(sl, base, i)
        if o != b:
            out[o] = b
    return out


def renamed_models(case: Case, fam: Family) -> Dict[str, List[str]]:
    """golden.json's `renamed_models`: output tensor -> the input tensor each model
    (golden.json's `models`, in order) reads, where some model's is not the base's (a
    merged slice's `layers_of`: `slices_offset`'s task_1 reads layer k + 1 for output
    layer k)."""
    base, others = golden_inputs(case)
    out = {}
    for o, i, sl, _ in slice_plan(case, fam):
        names = [source_name(sl, k, i) for k in others]
        if any(n != source_name(sl, base, i) for n in names):
            out[o] = names
    return out


def reference_slices(case: Case, fam: Family, models: List[Dict[str, np.ndarray]]):
    """The independent model of a `slices:` case: each output tensor from its slice's
    sources' tensor (passthrough: one source times the scale, a Cond read on the input
    tensor's name; slerp: the slice's t at the slice-relative depth; any other method:
    reference_merged_slices), a ``layers_of`` source's tensor at its own layer."""
    if any(sl.varied() for sl in case.slices):
        return reference_varied_slices(case, fam, models)
    if case.combine not in ("passthrough", "slerp"):
        return reference_merged_slices(case, fam, models)
    out = {}
    f32 = np.float32
    dtype = case.out_dtype or fam.dtype
    for out_name, in_name, sl, t in slice_plan(case, fam):
        xs = [models[model_index(k)][source_name(sl, k, in_name)].astype(f32)
              for k in sl.sources]
        if case.combine == "passthrough":
            if len(xs) != 1:
                raise ValueError(f"{case.name}: passthrough takes one source per slice")
            y = xs[0] if sl.scale is None else (f32(value_at(sl.scale, in_name, t)) * xs[0])
        elif case.combine == "slerp":
            y = slerp_reference(gradient_value(sl.t, t), xs[0], xs[1])
        else:
            raise ValueError(f"{case.name}: no slice model of {case.combine}")
        out[out_name] = Tensor.from_f32(np.asarray(y, dtype=f32), dtype)
    ties = {n: np.zeros(t.raw.size, dtype=bool) for n, t in out.items()}
    return out, ties


def reference_merged_slices(case: Case, fam: Family, models: List[Dict[str, np.ndarray]]):
    """A `slices:` case merged by another method (``slices_offset``: TIES):
    reference_merge over the output stack, a family of slice_layers layers whose
    tensors are, for each input (golden_inputs' order, the slice's sources), the tensor
    that input reads (source_name: a ``layers_of`` source at its own layer).  The case's
    parameters hold throughout (no per-slice ones), at the stack's depth, which is the
    slice's own for one slice; hence one slice of exactly the recipe's inputs."""
    base, others = golden_inputs(case)
    keys = [base] + others
    if len(case.slices) != 1 or any(tuple(sl.sources) != tuple(keys) or sl.scale is not None
                                    or sl.t is not None for sl in case.slices):
        raise ValueError(f"{case.name}: a merged slice model needs one slice of the "
                         f"inputs {keys} without its own parameters")
    stack = replace(fam, layers=slice_layers(case))
    read: List[Dict[str, np.ndarray]] = [{} for _ in keys]
    for out_name, in_name, sl, _ in slice_plan(case, fam):
        for m, k in zip(read, keys):
            m[out_name] = models[model_index(k)][source_name(sl, k, in_name)]
    if sorted(read[0]) != sorted(n for n, _ in stack.tensor_specs()):
        raise ValueError(f"{case.name}: the stack's tensors are not a {stack.layers}-layer model's")
    return reference_merge(case, stack, read)


class _Stack:
    """The tensors of one slice's part of an output stack, as reference_merge reads a
    family: their names and shapes, the family's dtype, and a depth that no case of
    reference_varied_slices reads (their values are numbers, not gradients)."""

    def __init__(self, specs: List[Tuple[str, Tuple[int, ...]]], layers: int, dtype: str):
        self._specs = specs
        self.layers = layers
        self.dtype = dtype

    def tensor_specs(self) -> List[Tuple[str, Tuple[int, ...]]]:
        return self._specs


def reference_varied_slices(case: Case, fam: Family, models: List[Dict[str, np.ndarray]]):
    """A stack whose slices merge other models (the recipe's per-slice ``models:``),
    on other bases (``base:``), with their own weights, densities and lambda: each
    slice's output tensors are reference_merge of the slice's base and its other
    sources, at the slice's values."""
    rows = slice_plan(case, fam)
    shapes = dict(fam.tensor_specs())
    out: Dict[str, Tensor] = {}
    ties: Dict[str, np.ndarray] = {}
    for sl in case.slices:
        mine = [(o, i) for o, i, s, _ in rows if s is sl]
        if not mine:
            continue
        base = sl.base or golden_inputs(case)[0]
        members = list(sl.members or [k for k in sl.sources if k != base])
        keys = [base] + members
        read: List[Dict[str, np.ndarray]] = [{} for _ in keys]
        for o, i in mine:
            for m, k in zip(read, keys):
                m[o] = models[model_index(k)][source_name(sl, k, i)]
        n = len(members)
        sub = replace(case, n_models=n,
                      weights=sl.weights or tuple(case.weights[:n]),
                      density=sl.density or (tuple(case.density[:n]) if case.density else None),
                      scale=case.scale if sl.lam is None else sl.lam,
                      slices=None)
        stack = _Stack([(o, shapes[i]) for o, i in mine], fam.layers, fam.dtype)
        got, tied = reference_merge(sub, stack, read)
        out.update(got)
        ties.update(tied)
    if any(t.any() for t in ties.values()):
        raise ValueError(f"{case.name}: equal magnitudes at a cut; golden.json would need "
                         f"the cut ranks of each slice's models")
    return out, ties


def slice_operand_scale(case: Case, fam: Family,
                        models: List[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """operand_scale for a `slices:` case, keyed by output tensor: per element, the
    largest |value| of the input tensor it reads (`renamed`; a model of
    `renamed_models` its own) in the recipe's base and models (golden.json's), which is
    what the test can compute."""
    base, others = golden_inputs(case)
    out = {}
    for out_name, in_name, sl, _ in slice_plan(case, fam):
        a = np.zeros(models[0][in_name].size, dtype=np.float64)
        for k in [base] + others:
            x = models[model_index(k)][source_name(sl, k, in_name)]
            a = np.maximum(a, np.abs(x.reshape(-1)).astype(np.float64))
        out[out_name] = a
    return out


def merge_statistics(fam: Family, models: List[Dict[str, np.ndarray]],
                     merged: Dict[str, "Tensor"], density: float,
                     epsilon: float) -> Dict[str, Tuple[float, float, float]]:
    """For a one-model random merge, over the entries the fine-tune changed: the
    fraction the merge kept, and the keep rates among the smaller and the larger half
    of each row by |delta|, each as (observed, expected, standard error), where an
    entry of rank q (0 = smallest) in a row of r is kept with probability
    (density - epsilon) + 2 epsilon q / (r - 1) (epsilon 0: dare); and the worst
    per-tensor |1 - |out - base|_1 / |delta|_1| (0 when rescaled)."""
    acc = {k: [0, 0.0, 0.0, 0] for k in ("kept", "smaller", "larger")}
    worst_l1 = 0.0
    for name, shape in fam.tensor_specs():
        base = models[0][name].astype(np.float32)
        delta = (models[1][name].astype(np.float32) - base).reshape(-1, shape[-1])
        out = (merged[name].f32().astype(np.float32) - base).reshape(-1, shape[-1])
        r = shape[-1]
        ranks = np.argsort(np.argsort(np.abs(delta), axis=1, kind="stable"), axis=1)
        prob = (density - epsilon) + 2 * epsilon * ranks / max(r - 1, 1)
        moved = delta != 0
        kept = (out != 0) & moved
        upper = ranks >= r / 2
        for key, sel in (("kept", moved), ("smaller", moved & ~upper),
                         ("larger", moved & upper)):
            a = acc[key]
            a[0] += int((kept & sel).sum())
            a[1] += float(prob[sel].sum())
            a[2] += float((prob * (1 - prob))[sel].sum())
            a[3] += int(sel.sum())
        l1 = np.abs(out.astype(np.float64)).sum() / np.abs(delta.astype(np.float64)).sum()
        worst_l1 = max(worst_l1, abs(l1 - 1.0))
    out = {k: (a[0] / a[3], a[1] / a[3], math.sqrt(a[2]) / a[3]) for k, a in acc.items()}
    out["l1_error"] = (worst_l1, 0.0, 0.0)
    return out


def check_statistics(case: Case, fam: Family, models, merged) -> Tuple[bool, List[str]]:
    """mergekit's random merge against the expectations (5 standard errors)."""
    st = merge_statistics(fam, models, merged, case.statistics["density"],
                          case.statistics.get("epsilon", 0.0))
    ok = True
    lines = []
    for key in ("kept", "smaller", "larger"):
        seen, expected, se = st[key]
        if abs(seen - expected) > 5 * se:
            ok = False
        lines.append(f"{key} {seen:.4f} (expected {expected:.4f} +- {5 * se:.4f})")
    if st["l1_error"][0] > 1e-4:
        ok = False
    lines.append(f"L1 ratio error {st['l1_error'][0]:.1e}")
    return ok, ["; ".join(lines)]


def plain_ties(case: Case, fam: Family,
               models: List[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """reference_merge's tied positions, found from ``models`` (for a LoRA case: the
    folders without their adapters, what a test that ignores golden.json's ``loras``
    would compute)."""
    out = {}
    for name, _ in fam.tensor_specs():
        base = models[0][name].astype(np.float32)
        dens = case_density(case, name, fam.layers)
        amb = np.zeros(base.size, dtype=bool)
        for i in range(case.n_models):
            delta = models[i + 1][name].astype(np.float32) - base
            amb |= ambiguous_ties(delta, cuts(case, dens[i], base.size))
        out[name] = amb
    return out


def lora_summary(case: Case, fam: Family, updates: Dict[str, Dict[str, np.ndarray]]) -> str:
    """How many tensors the case's adapters update, and the RMS of the updates
    relative to each weight's scale (the task vectors': about 2x task_scale)."""
    n = 0
    rel = []
    specs = dict(fam.tensor_specs())
    for a in case.lora or ():
        if not a:
            continue
        for name, d in updates[a].items():
            n += 1
            rel.append(float(np.sqrt(np.mean(d ** 2))) * math.sqrt(specs[name][1]))
    return f"{n} tensors, RMS {min(rel):.3f}..{max(rel):.3f} of the weights' scale"


def operand_scale(fam: Family, models: List[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """Per element, the largest |value| among the base and the fine-tunes."""
    out = {}
    for name, _ in fam.tensor_specs():
        a = np.abs(models[0][name].reshape(-1)).astype(np.float64)
        for m in models[1:]:
            a = np.maximum(a, np.abs(m[name].reshape(-1)))
        out[name] = a
    return out


def compare(expected: Dict[str, Tensor], actual: Dict[str, Tensor],
            ties: Dict[str, np.ndarray],
            scales: Dict[str, np.ndarray]) -> Tuple[bool, List[str]]:
    """The comparison of tests/golden.rs, for the self-check."""
    ok = True
    lines = []
    if sorted(expected) != sorted(actual):
        return False, [f"tensor names differ: {sorted(set(expected) ^ set(actual))}"]
    worst_rel = 0.0
    n_ulp1 = n_tie = 0
    for name in sorted(expected):
        e, a = expected[name], actual[name]
        if e.dtype != a.dtype or e.shape != a.shape:
            ok = False
            lines.append(f"{name}: {e.dtype}{e.shape} vs {a.dtype}{a.shape}")
            continue
        tie = ties.get(name, np.zeros(e.raw.size, dtype=bool))
        if e.dtype == "F32":
            eb = e.raw.astype(np.float64)
            ab = a.raw.astype(np.float64)
            ref = np.maximum(np.abs(eb), scales[name])
            allowed = F32_RTOL * ref
            err = np.abs(ab - eb)
            bad = (err > allowed) & ~tie
            n_tie += int(((err > 0) & tie).sum())
            with np.errstate(divide="ignore", invalid="ignore"):
                rel = np.where(err == 0, 0.0, err / ref)
            worst_rel = max(worst_rel, float(np.where(tie, 0.0, rel).max()))
            if bad.any():
                ok = False
                j = int(np.argmax(np.where(tie, 0, err / allowed)))
                lines.append(f"{name}[{j}]: expected {eb[j]!r} got {ab[j]!r}, "
                             f"|diff| {err[j]:.3e} > allowed {allowed[j]:.3e} "
                             f"({int(bad.sum())} elements off)")
        else:
            def order(b):
                b = b.astype(np.int64)
                return np.where(b & 0x8000, -(b & 0x7FFF), b)
            d = np.abs(order(e.raw) - order(a.raw))
            bad = (d > BF16_MAX_ULP) & ~tie
            n_ulp1 += int(((d == 1) & ~tie).sum())
            n_tie += int(((d > 0) & tie).sum())
            if bad.any():
                ok = False
                j = int(np.argmax(np.where(tie, 0, d)))
                lines.append(f"{name}[{j}]: {int(d[j])} ulp apart ({int(bad.sum())} off)")
    lines.append(f"worst f32 error {worst_rel:.2e} of max(|expected|, |inputs|); "
                 f"bf16 elements 1 ulp apart: {n_ulp1}; differing tied positions: {n_tie}")
    return ok, lines


# --------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------

def write_golden_json(path: Path, case: Case, version: str, p: Dict[str, str],
                      densities: Dict[str, List[float]],
                      cut_table: Dict[str, List[List[int]]],
                      borderline: Dict[str, List[int]],
                      renamed: Optional[Dict[str, str]] = None,
                      renamed_by_model: Optional[Dict[str, List[str]]] = None) -> None:
    """golden.json, one tensor per line.

    ``cuts[tensor][i]``: the ranks, in order of decreasing |delta_i|, at which the
    case's sparsifier separates model i's kept entries from its dropped ones
    (trim(k): [max(1, floor(k*n))]; breadcrumbs(k, gamma): [floor(gamma*n),
    floor(gamma*n) + floor(k*n)]; ranks 0 and n omitted).  ``density`` is the
    resolved density behind them, for the reader.  Both are empty objects for
    cases without a sparsifier.  ``borderline[tensor]`` (arcee_fusion only): flat
    indices whose importance lies within ``case.band`` (relative) of the threshold,
    where mergekit's float32 KL divergence may decide either way.
    ``renamed`` (``slices:`` cases only): output tensor -> the input tensor it reads
    (in the slice's inputs: every input of a merged slice reads the same layer, but
    those of ``renamed_models``), for every output tensor whose name differs from it.
    ``renamed_models`` (only where a merged slice's models take other layers than its
    base, ``layers_of``): output tensor -> the input tensor each of ``models`` reads,
    in order, for every output tensor where one of them is not the base's (``renamed``'s,
    or the output name); ``cuts`` and the scale ``s`` are then over those tensors, the
    base's at its own name.  ``base``/``models`` are the
    recipe's ``base:`` and ``models:``; ``loras`` (LoRA cases only), next to
    ``models``: each model's adapter folder, or null for a model taken as it is (the
    model's tensors are then ``W + s*B@A`` where the adapter has factors, what the
    scale ``s`` of the comparison and the sparsifier's ``|delta|`` are made of).
    """
    base, others = golden_inputs(case)
    head = {
        "case": case.name,
        "description": case.description,
        "mergekit_version": version,
        "base": p[base],
        "models": [p[k] for k in others],
    }
    if case.lora:
        head["loras"] = [p[a] if a else None for a in case.lora]
    head["sparsifier"] = case.sparsify
    lines = ["{"]
    for k, v in head.items():
        lines.append(f"  {json.dumps(k)}: {json.dumps(v)},")

    def table(key: str, rows: Dict[str, object]) -> List[str]:
        if not rows:
            return [f"  {json.dumps(key)}: {{}}"]
        out = [f"  {json.dumps(key)}: {{"]
        items = list(rows.items())
        for idx, (name, val) in enumerate(items):
            sep = "," if idx + 1 < len(items) else ""
            out.append(f"    {json.dumps(name)}: {json.dumps(val)}{sep}")
        out.append("  }")
        return out

    lines += table("density", densities)
    lines[-1] += ","
    lines += table("cuts", cut_table)
    if borderline:
        lines[-1] += ","
        lines += table("borderline", borderline)
    if renamed is not None:
        lines[-1] += ","
        lines += table("renamed", renamed)
    if renamed_by_model:
        lines[-1] += ","
        lines += table("renamed_models", renamed_by_model)
    if case.statistics:
        lines[-1] += ","
        lines.append(f'  "statistics": {json.dumps(case.statistics)}')
    lines.append("}")
    text = "\n".join(lines) + "\n"
    json.loads(text)  # well-formed
    path.write_text(text)


def mergekit_version() -> str:
    from importlib.metadata import version
    return version("mergekit")


def run_mergekit(case_dir: Path, work: Path,
                 lora: bool = False) -> Tuple[Dict[str, Tensor], dict]:
    """mergekit's merged tensors and its output config.json."""
    out = work / f"mk_{case_dir.name}"
    if out.exists():
        shutil.rmtree(out)
    exe = shutil.which("mergekit-yaml")
    cmd = [exe] if exe else [sys.executable, "-m", "mergekit.scripts.run_yaml"]
    # The seed makes the random methods (the statistics cases) reproducible; the
    # deterministic methods ignore it.
    cmd += ["mergekit.yml", str(out), "--quiet", "--no-cuda", "--random-seed", "0"]
    if lora:
        # mergekit needs a folder for the PEFT-merged copies of `model+lora` (it stops
        # without one) and reuses a copy it finds there under the same name, so every
        # run gets an empty one.  No --lora-merge-dtype: PEFT merges in the model's
        # own dtype (float32 here).
        cache = work / f"lora_cache_{case_dir.name}"
        if cache.exists():
            shutil.rmtree(cache)
        cache.mkdir(parents=True)
        cmd += ["--lora-merge-cache", str(cache)]
    res = subprocess.run(cmd, cwd=case_dir, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stdout + res.stderr)
        raise SystemExit(f"mergekit failed on {case_dir.name}")
    return read_model_dir(out), json.loads((out / "config.json").read_text())


def generate(out_root: Path, work: Path, verbose: bool = True,
             only: Optional[Sequence[str]] = None) -> bool:
    out_root.mkdir(parents=True, exist_ok=True)
    version = mergekit_version()
    fam_models = {}
    for fam in FAMILIES.values():
        models = make_family_tensors(fam)
        fam_models[fam.name] = models
        fdir = out_root / fam.name
        if fdir.exists():
            shutil.rmtree(fdir)
        names = ["base"] + [f"task_{t}" for t in range(N_TASKS)]
        for label, tensors in zip(names, models):
            write_model(fdir / label, fam, tensors)
    # the LoRA adapters, one folder each under llama_lora/, and their updates
    lora_dir = out_root / LORA_FOLDER
    if lora_dir.exists():
        shutil.rmtree(lora_dir)
    updates: Dict[str, Dict[str, np.ndarray]] = {}
    for adapter in ADAPTERS.values():
        afam = FAMILIES[adapter.family]
        factors = make_adapter_factors(adapter, afam)
        write_adapter(lora_dir / adapter.name, adapter, factors)
        updates[adapter.name] = lora_updates(adapter, afam, factors)
    all_ok = True
    summary = []
    unknown = set(only or ()) - {c.name for c in CASES}
    if unknown:
        raise SystemExit(f"no such case: {', '.join(sorted(unknown))}")
    for case in CASES:
        if only and case.name not in only:
            continue
        fam = FAMILIES[case.family]
        cdir = out_root / case.name
        if cdir.exists():
            shutil.rmtree(cdir)
        cdir.mkdir(parents=True)
        p = paths_for(case.family)
        (cdir / "recipe.yaml").write_text(
            f"# golden case {case.name}: {case.description}\n"
            f"# equivalent mergekit config: mergekit.yml (made with mergekit {version})\n"
            + case.recipe.format(**p))
        run_flags = "--no-cuda --lora-merge-cache DIR" if case.lora else "--no-cuda"
        (cdir / "mergekit.yml").write_text(
            f"# golden case {case.name}: run from this folder with\n"
            f"#   mergekit-yaml mergekit.yml OUT {run_flags}   (mergekit {version})\n"
            + case.mergekit.format(**p))
        merged, out_config = run_mergekit(cdir, work, lora=bool(case.lora))
        # [base, model_1, ..] as the merge reads them (LoRA adapters merged in)
        inputs = case_models(case, fam, fam_models[case.family], updates)
        write_safetensors(cdir / "expected.safetensors", merged,
                          {"format": "pt", "generator": f"mergekit {version}",
                           "case": case.name})
        # the test's side information
        densities = {}
        cut_table = {}
        if case.sparsify and not any(sl.varied() for sl in case.slices or ()):
            # by output tensor (a `slices:` case's stack: its own names and depth);
            # a stack of varied slices has none tied (reference_varied_slices)
            n_layers = slice_layers(case) if case.slices else fam.layers
            for name, shape in output_specs(case, fam):
                d = case_density(case, name, n_layers)
                densities[name] = d
                n = int(np.prod(shape))
                cut_table[name] = [cuts(case, x, n) for x in d]
        renamed = renamed_by_model = None
        if case.statistics:  # random: no element-wise reference
            ref, ties = {}, {name: np.zeros(int(np.prod(shape)), dtype=bool)
                             for name, shape in fam.tensor_specs()}
        elif case.slices:
            ref, ties = reference_slices(case, fam, fam_models[case.family])
            renamed = renamed_tensors(case, fam)
            renamed_by_model = renamed_models(case, fam)
        else:
            ref, ties = reference_merge(case, fam, inputs)
        borderline = {}
        if case.band:
            borderline = {name: [int(j) for j in np.flatnonzero(ties[name])]
                          for name, _ in fam.tensor_specs() if ties[name].any()}
        write_golden_json(cdir / "golden.json", case, version, p, densities, cut_table,
                          borderline, renamed, renamed_by_model)
        # borderline floor(density * n)? report it
        for name, d in densities.items():
            n = int(np.prod(dict(output_specs(case, fam))[name]))
            for x in d:
                prod = x * n
                if 0 < x < 1 and abs(prod - round(prod)) < 1e-6 and prod != round(prod):
                    print(f"  note: {case.name} {name}: density*n = {prod!r} is "
                          f"borderline for floor()")
        # self-check against the independent model of operators.md
        if case.statistics:
            ok, lines = check_statistics(case, fam, fam_models[case.family], merged)
        elif case.slices:
            ok, lines = compare(merged, ref, ties,
                                slice_operand_scale(case, fam, fam_models[case.family]))
            # the output's layer count: mergekit writes the stack's in config.json
            want = slice_layers(case)
            got = out_config.get("num_hidden_layers")
            if got != want:
                ok = False
                lines.insert(0, f"mergekit's config.json: num_hidden_layers {got!r}, "
                                f"expected {want}")
            lines[-1] += f"; num_hidden_layers {got}"
        elif case.lora:
            # s over the inputs the merge reads (the adapters merged in) and over the
            # folders golden.json names (a test that does not apply the adapters): the
            # smaller of the two, so the check holds for either
            plain = case_models(case, fam, fam_models[case.family], updates, with_lora=False)
            s_lora, s_plain = operand_scale(fam, inputs), operand_scale(fam, plain)
            ok, lines = compare(merged, ref, ties,
                                {n: np.minimum(s_lora[n], s_plain[n]) for n in s_lora})
            lines[-1] += f"; LoRA updates {lora_summary(case, fam, updates)}"
            if case.sparsify:
                # the tied positions a test finds from the folders without the adapters
                n_plain = sum(int(m.sum()) for m in plain_ties(case, fam, plain).values())
                lines[-1] += f"; tied positions without the adapters {n_plain}"
        else:
            ok, lines = compare(merged, ref, ties, operand_scale(fam, inputs))
        n_tied = sum(int(m.sum()) for m in ties.values())
        size = (cdir / "expected.safetensors").stat().st_size
        summary.append((case.name, ok, n_tied, size, lines[-1]))
        if not ok:
            all_ok = False
            print(f"[{case.name}] MISMATCH between mergekit and the operators.md model:")
            for line in lines:
                print("   ", line)
    if verbose:
        print(f"mergekit {version}")
        for name, ok, n_tied, size, last in summary:
            print(f"{name:20s} {'agree' if ok else 'DIFFER'}  tied positions {n_tied:5d}  "
                  f"expected {size / 1024:7.1f} KiB  | {last}")
    return all_ok


def check_committed(work: Path) -> bool:
    fresh = work / "fresh"
    ok = generate(fresh, work, verbose=False)
    same = True
    for f in sorted(fresh.rglob("*")):
        if f.is_dir():
            continue
        rel = f.relative_to(fresh)
        committed = DEFAULT_OUT / rel
        if not committed.exists() or committed.read_bytes() != f.read_bytes():
            print(f"differs from the committed fixture: {rel}")
            same = False
    print("committed fixtures reproduce" if same else "committed fixtures DO NOT reproduce")
    return ok and same


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help="fixture folder (default: tests/fixtures/golden of this repo)")
    ap.add_argument("--check", action="store_true",
                    help="regenerate into a temporary folder and compare with the committed files")
    ap.add_argument("--only", nargs="+", metavar="CASE",
                    help="(re)make only these cases (the input families are always written)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="reefknot-golden-") as tmp:
        work = Path(tmp)
        if args.check:
            return 0 if check_committed(work) else 1
        ok = generate(args.out, work, only=args.only)
    if not ok:
        print("FAIL: mergekit and the independent model of operators.md disagree")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
