#!/usr/bin/env python3
"""Run FusionBench's TSV-M, Iso-C or Iso-CTS on a Hugging Face model family, on the CPU,
for comparison with reefknot's `tsv`, `iso` and `iso_cts` (docs/benchmark.md).

    python3 scripts/fusionbench_subspace.py tsv|iso|iso_cts BASE MODEL... -o OUT.safetensors
        [--dtype float32|float64] [--threads N]

Loads every model's safetensors (sharded or not) with the safetensors library, takes the
task vectors `model − base` in --dtype (float32: what FusionBench's algorithm classes
do), calls FusionBench's own function — `compute_and_sum_svd_mem_reduction` (TSV-M),
`iso_c`, `iso_cts(common_space_fraction=0.8)` — and writes `base + merged task vector`
in the base's dtype. Prints the seconds spent loading, merging and writing, and the
peak resident memory. Needs python3 with torch, safetensors and fusion-bench.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path


def load_model(folder: Path):
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
    tensors = {}
    for f in files:
        tensors.update(load_file(str(f)))
    return tensors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("method", choices=["tsv", "iso", "iso_cts"])
    ap.add_argument("base", type=Path)
    ap.add_argument("models", type=Path, nargs="+")
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    import torch
    from safetensors.torch import save_file
    from fusion_bench.method.isotropic_merging.iso_utils import iso_c, iso_cts
    from fusion_bench.method.task_singular_vector.utils.TSVM_utils import (
        compute_and_sum_svd_mem_reduction,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    t0 = time.perf_counter()
    base = load_model(args.base)
    tvs = []
    for m in args.models:
        model = load_model(m)
        tvs.append({k: model[k].to(dtype) - base[k].to(dtype) for k in base})
        del model
    t1 = time.perf_counter()
    with torch.no_grad():
        if args.method == "tsv":
            delta = compute_and_sum_svd_mem_reduction(tvs, accelerator="cpu")
        elif args.method == "iso":
            delta = iso_c(tvs, accelerator="cpu")
        else:
            delta = iso_cts(tvs, common_space_fraction=0.8, accelerator="cpu")
    t2 = time.perf_counter()
    merged = {k: (base[k].to(dtype) + delta[k]).to(base[k].dtype).contiguous() for k in base}
    save_file(merged, str(args.out))
    t3 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(
        f"fusionbench {args.method} ({args.dtype}, {torch.get_num_threads()} threads): "
        f"load {t1 - t0:.1f} s, merge {t2 - t1:.1f} s, write {t3 - t2:.1f} s, "
        f"peak RSS {peak:.2f} GiB",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
