#!/usr/bin/env python3
"""Estimate a model's diagonal Fisher information on a data file, as a Fisher file
that reefknot reads (a recipe model's ``fisher:``).

    python3 scripts/fisher.py MODEL DATA -o FISHER.safetensors
        [--samples N] [--max-length L] [--labels data|sampled] [--seed S] [--force]

MODEL is a Hugging Face model folder (a causal LM that ``transformers`` loads).
DATA holds one sample per line: a ``.jsonl`` file of ``{"text": "..."}`` (tokenized
with the model folder's tokenizer) or ``{"input_ids": [...]}`` objects, or any other
file of plain text lines. For each sample of T predicted tokens the script computes
the gradient of the sample's summed next-token negative log-likelihood ``ℓ_n``, and
the file holds ``F_j = (1/N)·Σ_n (∂ℓ_n/∂θ_j)² / T_n``, per parameter, in float32,
under every checkpoint tensor name of the parameter (tied embeddings get both): the
Fisher per predicted token, so that neither the samples' lengths nor --max-length
change its scale.

``--labels data`` (the default) scores the data's own next tokens: the empirical
Fisher. ``--labels sampled`` draws each next token from the model's own prediction
instead: a one-sample Monte-Carlo estimate of the true Fisher, which needs no
labels to be right (Matena & Raffel 2022 use the true Fisher). The model runs in
float32 on the CPU (or the first CUDA device, when there is one) and needs about
three times the model's float32 size in memory: weights, gradients, sums.

Exits 0 on success, 1 on failure (reason on stderr), 2 on bad usage. Needs python3
with torch, transformers and safetensors.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def fail(msg: str) -> int:
    print(f"fisher.py: {msg}", file=sys.stderr)
    return 1


def read_samples(path: Path, limit: int | None) -> list[dict]:
    """The samples of DATA, each {"text": str} or {"input_ids": list[int]}."""
    samples = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            if path.suffix == ".jsonl":
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{number}: not JSON: {e}") from None
                if not isinstance(obj, dict) or not (
                    isinstance(obj.get("text"), str) or isinstance(obj.get("input_ids"), list)
                ):
                    raise ValueError(
                        f'{path}:{number}: expected {{"text": ...}} or {{"input_ids": [...]}}'
                    )
                samples.append(obj)
            else:
                samples.append({"text": line.rstrip("\n")})
            if limit is not None and len(samples) == limit:
                break
    return samples


def checkpoint_names(model_dir: Path) -> set[str]:
    """The tensor names the model folder's safetensors files hold (empty if none)."""
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        return set(json.loads(index.read_text())["weight_map"])
    names: set[str] = set()
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            names.update(f.keys())
    return names


def parameter_names(model, known: set[str]) -> list[tuple[str, object, list[str]]]:
    """Each trainable parameter once, with every name the checkpoint stores it under
    (a tied embedding is one parameter under two names)."""
    aliases: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        aliases.setdefault(id(tensor), []).append(name)
    out = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            out.append((name, p, [n for n in aliases.get(id(p), [name]) if n in known]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path, help="a Hugging Face model folder")
    ap.add_argument("data", type=Path, help="samples: .jsonl ({text} or {input_ids}) or text lines")
    ap.add_argument("-o", "--out", type=Path, required=True, help="the Fisher file to write")
    ap.add_argument("--samples", type=int, default=None, help="use the first N samples")
    ap.add_argument("--max-length", type=int, default=512, help="tokens per sample (default 512)")
    ap.add_argument("--labels", choices=["data", "sampled"], default="data")
    ap.add_argument("--seed", type=int, default=0, help="seeds --labels sampled")
    ap.add_argument("--force", action="store_true", help="replace an existing output")
    args = ap.parse_args()
    if args.out.exists() and not args.force:
        return fail(f"{args.out} exists (--force replaces it)")
    if args.samples is not None and args.samples < 1:
        ap.error("--samples must be at least 1")
    if args.max_length < 2:
        ap.error("--max-length must be at least 2 (one token predicts the next)")

    try:
        samples = read_samples(args.data, args.samples)
    except (OSError, ValueError) as e:
        return fail(str(e))
    if not samples:
        return fail(f"{args.data} holds no samples")

    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        except TypeError:  # transformers before 4.56 names it torch_dtype
            model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
    except Exception as e:  # transformers raises many kinds
        return fail(f"cannot load {args.model}: {e}")
    model.to(device).eval()  # eval: no dropout in the gradients
    tokenizer = None
    if any("text" in s for s in samples):
        try:
            tokenizer = AutoTokenizer.from_pretrained(args.model)
        except Exception as e:
            return fail(f"the samples are text but {args.model} has no tokenizer: {e}")

    known = checkpoint_names(args.model)
    if not known:
        return fail(f"{args.model} holds no .safetensors weights (reefknot reads only those)")
    params = parameter_names(model, known)
    foreign = [n for n, _, names in params if not names]
    if foreign:
        return fail(
            f"{len(foreign)} parameters are stored under no tensor name of {args.model} "
            f"(first: {foreign[0]}): this model's names need mapping"
        )
    sums = {n: torch.zeros_like(p, dtype=torch.float32) for n, p, _ in params}
    generator = torch.Generator(device=device).manual_seed(args.seed)
    vocab = model.get_input_embeddings().weight.shape[0]
    used = 0
    progress = sys.stderr.isatty()
    for number, sample in enumerate(samples, 1):
        if "input_ids" in sample:
            ids = [int(i) for i in sample["input_ids"]][: args.max_length]
        else:
            ids = tokenizer(sample["text"], truncation=True, max_length=args.max_length)[
                "input_ids"
            ]
        if len(ids) < 2:
            continue  # nothing to predict
        if max(ids) >= vocab or min(ids) < 0:
            return fail(f"sample {number}: a token id outside the vocabulary of {vocab}")
        x = torch.tensor([ids], device=device)
        model.zero_grad(set_to_none=True)
        logits = model(x).logits[0, :-1].float()
        if args.labels == "data":
            target = x[0, 1:]
        else:
            with torch.no_grad():
                probs = torch.softmax(logits, dim=-1)
                target = torch.multinomial(probs, 1, generator=generator)[:, 0]
        # The summed log-likelihood's gradient, squared and divided by the T tokens:
        # the per-token Fisher (the square of the gradient of sum/√T).
        tokens = target.shape[0]
        loss = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
        (loss / tokens**0.5).backward()
        with torch.no_grad():
            for n, p, _ in params:
                if p.grad is not None:
                    sums[n].add_(p.grad.float().square())
        used += 1
        if progress:
            print(f"\rsample {number}/{len(samples)}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    if used == 0:
        return fail("no sample has two tokens or more")
    fisher = {}
    for n, _, names in params:
        value = (sums[n] / used).cpu().contiguous()
        for i, alias in enumerate(names):
            fisher[alias] = value if i == 0 else value.clone()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")
    save_file(
        fisher,
        str(partial),
        metadata={
            "format": "pt",
            "generator": "reefknot scripts/fisher.py",
            "samples": str(used),
            "labels": args.labels,
        },
    )
    partial.replace(args.out)
    total = sum(f.numel() for f in fisher.values())
    print(f"{args.out}: {len(fisher)} tensors, {total} parameters, {used} samples", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
