#!/usr/bin/env python3
"""Golden fixtures for reefknot's subspace operators (tsv, iso, iso_cts), made by
FusionBench's own implementations.

    python3 scripts/golden/make_subspace_golden.py            # (re)write the fixtures
    python3 scripts/golden/make_subspace_golden.py --check    # recompute, compare with
                                                              # the committed ones

Inputs: the golden family `tests/fixtures/golden/llama_f32` (a float32 Llama-shaped
base and three fine-tunes, made by make_golden.py). For each case this computes the
task vectors `fine-tune − base` with torch in float64 (FusionBench's functions keep
the dtype they are given; its float32 runs are 6e-5 off float64 on this family),
calls FusionBench's functions on them —

  * TSV-M: `fusion_bench.method.task_singular_vector.utils.TSVM_utils.
    compute_and_sum_svd_mem_reduction` (what `TaskSingularVectorMerging` runs; a list
    `alpha` scales the task vectors first, as reefknot's model weights do in every
    case here, and a number `alpha` the result),
  * Iso-C: `fusion_bench.method.isotropic_merging.iso_utils.iso_c`,
  * Iso-CTS: `fusion_bench.method.isotropic_merging.iso_utils.iso_cts`
    (`scaling_factor` scales the result),

— and writes `tests/fixtures/subspace/<case>/expected.safetensors` (base + merged task
vector, float32), the equivalent reefknot `recipe.yaml`, and `golden.json` with the
versions used. `tests/golden_subspace.rs` merges each recipe with reefknot and compares.

Needs python3 with torch, safetensors and fusion-bench (0.2.33 made the committed
fixtures; FusionBench computes on the CPU here).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FAMILY = ROOT / "tests/fixtures/golden/llama_f32"
OUT = ROOT / "tests/fixtures/subspace"
TASKS = ["task_0", "task_1", "task_2"]

# case: (reefknot merge expression, FusionBench call, model weights, overrides[, models])
CASES = {
    "tsv": ("tsv", ("tsv", None, None), None, None),
    # TaskSingularVectorMerging's list alpha scales each task vector first: the weights.
    "tsv_weighted": ("tsv", ("tsv", None, None), [0.5, 1.0, 1.5], None),
    "tsv_alpha": ("tsv |> scale(0.7)", ("tsv", 0.7, None), None, None),
    "iso": ("iso", ("iso", 1.0, None), None, None),
    "iso_scaled": ("iso |> scale(0.6)", ("iso", 0.6, None), None, None),
    "iso_exclude_embeddings": (
        "iso",
        ("iso", 1.0, ["model.embed_tokens.weight", "lm_head.weight"]),
        None,
        [("embed", "mean"), ("lm_head", "mean")],
    ),
    "iso_cts": ("iso_cts", ("iso_cts", 1.0, None, 0.8), None, None),
    "iso_cts_half": ("iso_cts(common=0.5)", ("iso_cts", 1.0, None, 0.5), None, None),
    # Weights scale the task vectors before the decomposition, as TSV-M's list alpha.
    "iso_weighted": ("iso", ("iso", 1.0, None), [0.5, 1.0, 1.5], None),
    "iso_cts_weighted": ("iso_cts", ("iso_cts", 1.0, None, 0.8), [1.5, 0.5, 1.0], None),
    # Two models, common 0.85: rank 32 gives (32 − 27)/2 = 2.5, which Python's round
    # takes to 2 (half to even; half up would give 3), rank 16 gives 1.5 → 2.
    "iso_cts_two": ("iso_cts(common=0.85)", ("iso_cts", 1.0, None, 0.85), None, None, 2),
    "tsv_two": ("tsv", ("tsv", None, None), None, None, 2),
}


def load(path: Path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def merged_delta(call, tvs, weights=None):
    """FusionBench's merged task vector for `call` on the task vectors `tvs`."""
    import torch
    from fusion_bench.method.isotropic_merging.iso_utils import iso_c, iso_cts
    from fusion_bench.method.task_singular_vector.utils.TSVM_utils import (
        compute_and_sum_svd_mem_reduction,
    )

    kind, alpha, exclude = call[0], call[1], call[2]
    with torch.no_grad():
        if weights is not None:  # the recipe's model weights: u_i = w_i·δ_i
            tvs = [{k: v * w for k, v in tv.items()} for tv, w in zip(tvs, weights)]
        if kind == "tsv":
            delta = compute_and_sum_svd_mem_reduction(
                tvs, exclude_keys=exclude, accelerator="cpu"
            )
            scale = alpha if isinstance(alpha, (int, float)) else 1.0
        elif kind == "iso":
            delta = iso_c(tvs, accelerator="cpu", exclude_keys=exclude)
            scale = alpha
        else:
            delta = iso_cts(
                tvs, common_space_fraction=call[3], accelerator="cpu", exclude_keys=exclude
            )
            scale = alpha
    return {k: v * scale for k, v in delta.items()}


def recipe_text(case: str, expression: str, weights, overrides, tasks) -> str:
    lines = [
        f"# golden case {case}: made by FusionBench (scripts/golden/make_subspace_golden.py)",
        "base: ../../golden/llama_f32/base",
        "models:",
    ]
    for i, t in enumerate(tasks):
        lines.append(f"  - path: ../../golden/llama_f32/{t}")
        if weights is not None:
            lines.append(f"    weight: {weights[i]}")
    lines.append(f"merge: {expression}")
    if overrides:
        lines.append("overrides:")
        for group, expr in overrides:
            lines += [f"  - group: {group}", f"    merge: {expr}"]
    return "\n".join(lines) + "\n"


def generate(out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    base = load(FAMILY / "base")
    models = [load(FAMILY / t) for t in TASKS]
    for case, (expression, call, weights, overrides, *count) in CASES.items():
        used = models[: count[0]] if count else models
        # In float64: a chain of float32 SVDs and polar factors is off the exact result
        # by up to 1e-4 where singular values crowd (FusionBench's own float32 runs by
        # 6e-5 here), which would hide an error of that size. The merged task vector is
        # rounded to float32 and added to the float32 base, as reefknot writes it.
        tvs = [{k: (m[k].double() - base[k].double()) for k in base} for m in used]
        delta = merged_delta(call, tvs, weights)
        merged = {k: (base[k].float() + delta[k].float()).contiguous() for k in base}
        folder = out / case
        folder.mkdir(parents=True, exist_ok=True)
        save_file(merged, str(folder / "expected.safetensors"), metadata={"case": case})
        tasks = TASKS[: len(used)]
        (folder / "recipe.yaml").write_text(
            recipe_text(case, expression, weights, overrides, tasks)
        )
    from importlib.metadata import version

    about = {
        "generator": "scripts/golden/make_subspace_golden.py",
        "fusion_bench": version("fusion-bench"),
        "torch": torch.__version__,
        "family": "tests/fixtures/golden/llama_f32",
        "cases": {c: v[0] for c, v in CASES.items()},
    }
    (out / "golden.json").write_text(json.dumps(about, indent=2) + "\n")


def check() -> bool:
    """Recomputes every case and compares it with the committed expected outputs."""
    from safetensors.torch import load_file

    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        for case in CASES:
            new = load_file(str(Path(tmp) / case / "expected.safetensors"))
            old = load_file(str(OUT / case / "expected.safetensors"))
            worst = max(float((new[k] - old[k]).abs().max()) for k in new)
            good = set(new) == set(old) and worst <= 1e-6
            print(f"{case}: {'ok' if good else 'DIFFERS'} (max |Δ| {worst:.2e})")
            ok &= good
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed fixtures")
    args = ap.parse_args()
    if args.check:
        return 0 if check() else 1
    generate(OUT)
    print(f"wrote {len(CASES)} cases to {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
