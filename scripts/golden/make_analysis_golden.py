#!/usr/bin/env python3
"""Golden figures for `reefknot analyze`, computed independently with numpy.

    python3 scripts/golden/make_analysis_golden.py            # (re)write the fixtures
    python3 scripts/golden/make_analysis_golden.py --check    # recompute and compare

For each case below this writes `tests/fixtures/analysis/<case>/recipe.yaml` and
`expected.json`. The inputs are the committed golden families (`tests/fixtures/golden/
llama_f32`, float32, and `llama_bf16`, bfloat16 in three shards). The script reads
their safetensors files itself, takes each merged tensor's per-model density (the `k`
of its `trim` stage) and weights from the plan `reefknot check --json` prints (the
plan is reefknot's contract; nothing else of reefknot is used), and computes every
figure from the task vectors `δ_i = θ_i − θ_base` (float32 subtraction, as a merge
computes it) in float64:

  * ‖δ‖, ‖δ‖/‖θ_base‖, ‖δ‖₁, non-zero entries;
  * the share of ‖δ‖² in the top max(1, ⌊s·n⌋) entries of |δ| of each tensor, for
    s = 1, 5, 10, 20, 50 % (by sorting);
  * TIES at the plan's density: each model's top entries (ties in flat-index order,
    a stable sort), the sign elected from Σ w_i·δ̃_i (float32, in model order), the
    kept energy share and the share of the kept L1 mass whose weighted sign loses;
  * per pair: cosine, sign agreement over entries non-zero in both, and over the
    entries both keep (with their overlap);
  * the smallest density on a 0.01 grid that keeps 90 % of the energy, exactly.

Per set: the whole model, each layer group (classified here by the tensor names:
embed, attention, mlp, norm, lm_head, and the recipe's own groups by glob) and each
layer. `tests/cli/analyze.rs` runs `reefknot analyze --json` on each case and compares
to 1e-6 relative (counts exactly; the suggested density may be one grid step above the
exact one, as documented).

Needs python3 with numpy, and cargo (to build and run `reefknot check`).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests/fixtures/analysis"
SHARES = [0.01, 0.05, 0.10, 0.20, 0.50]
KEEP = 0.9

CASES = {
    "ties_f32": {
        "recipe": """\
# TIES on the float32 golden family, with a custom group.
base: ../../golden/llama_f32/base
models:
  - path: ../../golden/llama_f32/task_0
  - path: ../../golden/llama_f32/task_1
  - path: ../../golden/llama_f32/task_2
groups:
  qk: ["*.self_attn.q_proj.weight", "*.self_attn.k_proj.weight"]
merge: ties(trim(0.2), elect, disjoint)
""",
        "custom": {"qk": ["*.self_attn.q_proj.weight", "*.self_attn.k_proj.weight"]},
    },
    "weighted_bf16": {
        "recipe": """\
# Sharded bfloat16 inputs, weights, a density per model and one rising with depth.
base: ../../golden/llama_bf16/base
models:
  - path: ../../golden/llama_bf16/task_0
    weight: 0.5
    params: { density: 0.1 }
  - path: ../../golden/llama_bf16/task_1
    weight: 1.0
  - path: ../../golden/llama_bf16/task_2
    weight: 1.5
params: { density: 0.3 }
merge: ties(trim($density), elect, disjoint)
overrides:
  - match: "model.layers.*.mlp.*"
    params: { density: [0.05, 0.6] }
""",
        "custom": {},
    },
}

DTYPES = {"F32": np.float32, "BF16": "bf16", "F16": np.float16}


def read_folder(folder: Path) -> dict[str, np.ndarray]:
    """Every tensor of a model folder (one file or shards), as float32."""
    tensors = {}
    for f in sorted(folder.glob("*.safetensors")):
        data = f.read_bytes()
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n])
        body = data[8 + n :]
        for name, info in header.items():
            if name == "__metadata__":
                continue
            a, b = info["data_offsets"]
            raw = body[a:b]
            if info["dtype"] == "BF16":
                u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
                x = u.view(np.float32)
            else:
                x = np.frombuffer(raw, dtype=DTYPES[info["dtype"]]).astype(np.float32)
            tensors[name] = x.reshape(info["shape"])
    return tensors


def layer_of(name: str):
    parts = name.split(".")
    for i, p in enumerate(parts[:-1]):
        if p == "layers" and parts[i + 1].isdigit():
            return int(parts[i + 1]), parts[i + 2] if i + 2 < len(parts) else ""
    return None, ""


def groups_of(name: str, custom: dict[str, list[str]]) -> list[str]:
    layer, module = layer_of(name)
    modules = name.split(".")[:-1]
    out = []
    if layer is None and any(m in ("embed_tokens", "wte", "wpe") for m in modules):
        out.append("embed")
    if module in ("self_attn", "attn"):
        out.append("attention")
    if module in ("mlp", "block_sparse_moe"):
        out.append("mlp")
    if any(m.endswith("norm") or m in ("ln_1", "ln_2", "ln_f") for m in modules):
        out.append("norm")
    if layer is None and "lm_head" in modules:
        out.append("lm_head")
    for g, globs in custom.items():
        if any(fnmatch.fnmatchcase(name, pat) for pat in globs):
            out.append(g)
    return out


def kept_count(k: float, n: int) -> int:
    if k >= 1.0:
        return n
    if k <= 0.0 or n == 0:
        return 0
    return min(max(math.floor(k * n), 1), n)


def tensor_figures(base, deltas, density, weights):
    """The sums of one tensor (see the module documentation)."""
    t = len(deltas)
    n = base.size
    b64 = base.astype(np.float64).ravel()
    d64 = [d.astype(np.float64).ravel() for d in deltas]
    fig = {
        "numel": n,
        "base_energy": float(np.dot(b64, b64)),
        "models": [],
        "pairs": [],
    }
    kept = []
    for i, d in enumerate(d64):
        a = np.abs(d)
        order = np.argsort(-a, kind="stable")
        sq = a[order] ** 2
        cum = np.concatenate([[0.0], np.cumsum(sq)])
        keep = kept_count(density[i], n)
        mask = np.zeros(n, dtype=bool)
        mask[order[:keep]] = True
        kept.append(np.where(mask, deltas[i].ravel(), np.float32(0)))
        fig["models"].append(
            {
                "energy": float(cum[-1]),
                "l1": float(a.sum()),
                "nonzero": int(np.count_nonzero(d)),
                "top": [float(cum[kept_count(s, n)]) for s in SHARES],
                "curve": [float(cum[kept_count(p / 100, n)]) for p in range(1, 101)],
                "kept": keep,
                "kept_energy": float(cum[keep]),
            }
        )
    score = np.zeros(n, dtype=np.float32)
    for i in range(t):
        score = score + np.float32(weights[i]) * kept[i]
    elected = np.where(score >= 0, np.float32(1), np.float32(-1))
    for i in range(t):
        u = np.float32(weights[i]) * kept[i]
        k64 = np.abs(kept[i].astype(np.float64))
        wins = (u != 0) & (np.sign(u) == elected)
        lost = (kept[i] != 0) & ~wins
        fig["models"][i]["kept_mass"] = float(k64.sum())
        fig["models"][i]["discarded_mass"] = float(k64[lost].sum())
    for a in range(t):
        for b in range(a + 1, t):
            x, y = d64[a], d64[b]
            both = (x != 0) & (y != 0)
            agree = both & ((x > 0) == (y > 0))
            kx, ky = kept[a], kept[b]
            tboth = (kx != 0) & (ky != 0)
            tagree = tboth & ((kx > 0) == (ky > 0))
            fig["pairs"].append(
                {
                    "a": a,
                    "b": b,
                    "dot": float(np.dot(x, y)),
                    "both": int(both.sum()),
                    "agree": int(agree.sum()),
                    "top_both": int(tboth.sum()),
                    "top_agree": int(tagree.sum()),
                }
            )
    return fig


def add(total, fig):
    if total is None:
        return json.loads(json.dumps(fig)) | {"tensors": 1}
    total["tensors"] += 1
    total["numel"] += fig["numel"]
    total["base_energy"] += fig["base_energy"]
    for m, o in zip(total["models"], fig["models"]):
        for k in ("energy", "l1", "nonzero", "kept", "kept_energy", "kept_mass", "discarded_mass"):
            m[k] += o[k]
        m["top"] = [x + y for x, y in zip(m["top"], o["top"])]
        m["curve"] = [x + y for x, y in zip(m["curve"], o["curve"])]
    for p, o in zip(total["pairs"], fig["pairs"]):
        for k in ("dot", "both", "agree", "top_both", "top_agree"):
            p[k] += o[k]
    return total


def ratio(a, b):
    return a / b if b > 0 else None


def summary(s):
    """A set's figures as `reefknot analyze --json` reports them."""
    models = []
    for m in s["models"]:
        exact = next(
            (p / 100 for p, e in zip(range(1, 101), m["curve"]) if e >= KEEP * m["energy"]),
            1.0,
        )
        models.append(
            {
                "norm": math.sqrt(m["energy"]),
                "relative_norm": ratio(math.sqrt(m["energy"]), math.sqrt(s["base_energy"])),
                "l1": m["l1"],
                "nonzero": m["nonzero"],
                "energy_share": {f"{f}": ratio(e, m["energy"]) for f, e in zip(SHARES, m["top"])},
                "exact_density": exact if m["energy"] > 0 else None,
                "ties": {
                    "kept": m["kept"],
                    "kept_energy_share": ratio(m["kept_energy"], m["energy"]),
                    "discarded_share": ratio(m["discarded_mass"], m["kept_mass"]),
                },
            }
        )
    pairs = []
    for p in s["pairs"]:
        ea, eb = s["models"][p["a"]]["energy"], s["models"][p["b"]]["energy"]
        ka, kb = s["models"][p["a"]]["kept"], s["models"][p["b"]]["kept"]
        pairs.append(
            {
                "a": p["a"],
                "b": p["b"],
                "cosine": ratio(p["dot"], math.sqrt(ea * eb)),
                "sign_agreement": ratio(p["agree"], p["both"]),
                "top_overlap": ratio(p["top_both"], min(ka, kb)),
                "top_sign_agreement": ratio(p["top_agree"], p["top_both"]),
            }
        )
    return {
        "tensors": s["tensors"],
        "elements": s["numel"],
        "base_norm": math.sqrt(s["base_energy"]),
        "models": models,
        "pairs": pairs,
    }


def plan_of(recipe: Path) -> dict:
    out = subprocess.run(
        ["cargo", "run", "-q", "--bin", "reefknot", "--", "check", str(recipe), "--json"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def make(case: str, spec: dict, folder: Path, write: bool) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    recipe = folder / "recipe.yaml"
    if write:
        recipe.write_text(spec["recipe"])
    elif recipe.read_text() != spec["recipe"]:
        raise SystemExit(f"{case}: the committed recipe differs from the script's")
    plan = plan_of(recipe)
    inputs = [read_folder(Path(i["path"])) for i in plan["inputs"]]
    sets: dict[str, dict] = {}
    order: list[str] = []
    for t in plan["tensors"]:
        prod = t["producer"]
        if prod["kind"] != "pipeline":
            continue
        base = inputs[prod["base"]["input"]][prod["base"]["tensor"]]
        deltas = [
            inputs[m["input"]][m["tensor"]] - base for m in prod["models"]
        ]
        trim = next((s for s in prod["stages"] if s["op"] == "trim"), None)
        if trim is None:
            density = [0.2] * len(deltas)
        else:
            k = next(a["value"]["number"] for a in trim["args"] if a["name"] == "k")
            density = k * len(deltas) if len(k) == 1 else k
        fig = tensor_figures(base, deltas, density, prod["weights"])
        keys = ["model"] + [f"group:{g}" for g in groups_of(t["name"], spec["custom"])]
        if t.get("layer") is not None:
            keys.append(f"layer:{t['layer']}")
        for k in keys:
            if k not in sets:
                order.append(k)
            sets[k] = add(sets.get(k), fig)
    expected = {
        "case": case,
        "keep": KEEP,
        "numpy": np.__version__,
        "sets": {k: summary(sets[k]) for k in order},
    }
    if write:
        (folder / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    return expected


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="recompute and compare")
    args = ap.parse_args()
    failed = False
    for case, spec in CASES.items():
        folder = OUT / case
        if args.check:
            old = json.loads((folder / "expected.json").read_text())
            new = make(case, spec, folder, write=False)
            if old["sets"] != new["sets"]:
                print(f"{case}: differs from the committed fixture", file=sys.stderr)
                failed = True
            else:
                print(f"{case}: reproduces")
        else:
            make(case, spec, folder, write=True)
            print(f"{case}: written")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
