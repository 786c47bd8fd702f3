#!/usr/bin/env python3
"""Merge quality on real (tiny) checkpoints: train a base and three task fine-tunes with
transformers, merge them with reefknot's methods, and report each task's held-out loss.

    python3 scripts/quality/run.py WORK [--reefknot PATH] [--steps N] [--seed S]

Everything is made from scratch in WORK (it must not exist): a character-level Llama
(2 layers, hidden 64, about 0.1 M parameters) is trained on a generic task — copying a
random string, `abc|abc;` — and then fine-tuned from that base, separately, on three
tasks over the same characters:

  * add:  `23+58=81;`  two-digit sums,
  * rev:  `hello>olleh;` reversing a string,
  * sort: `dbca>abcd;` sorting letters.

Each fine-tune's diagonal Fisher is estimated on its own training data with
scripts/fisher.py. The merges are reefknot recipes over the four model folders; each
merged model is scored by transformers as the mean next-token loss (nats per token) on
held-out samples of each task, counting only the answer after the `=`, `>` or `|`.
The table goes to stdout as Markdown, with the base and the fine-tunes for reference.
Needs python3 with torch, transformers and safetensors; CPU only, a few minutes.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz+=>|;"
PAD = len(ALPHABET)  # one more id, never predicted
VOCAB = len(ALPHABET) + 1
TASKS = ["add", "rev", "sort"]
SEQ = 24

# The merges compared: name, reefknot expression, whether the recipe names Fisher files.
METHODS = [
    ("averaging", "mean", False),
    ("task arithmetic (λ 0.5)", "sum |> scale(0.5)", False),
    ("task arithmetic (λ 1)", "sum", False),
    ("TIES (k 0.2)", "ties(trim(0.2), elect, disjoint)", False),
    ("DARE-TIES (p 0.8)", "dare(p=0.8) |> elect |> disjoint", False),
    ("Fisher merging", "fisher", True),
    ("TSV-M", "tsv", False),
    ("Iso-C", "iso", False),
    ("Iso-CTS", "iso_cts", False),
]


def sample(task: str, rng: random.Random) -> tuple[str, int]:
    """One sample and the index where its answer starts."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    if task == "copy":
        w = "".join(rng.choice(letters) for _ in range(rng.randint(3, 8)))
        q = f"{w}|"
        return q + w + ";", len(q)
    if task == "add":
        a, b = rng.randint(10, 49), rng.randint(10, 49)
        q = f"{a}+{b}="
        return q + f"{a + b};", len(q)
    w = "".join(rng.choice(letters) for _ in range(rng.randint(3, 8)))
    q = f"{w}>"
    return q + ("".join(reversed(w)) if task == "rev" else "".join(sorted(w))) + ";", len(q)


def encode(text: str) -> list[int]:
    ids = [ALPHABET.index(c) for c in text]
    return (ids + [PAD] * SEQ)[:SEQ]


def batch(task: str, n: int, rng: random.Random):
    import torch

    xs, masks = [], []
    for _ in range(n):
        text, start = sample(task, rng)
        ids = encode(text)
        # Loss on the answer only (positions predicting tokens start.. of the answer).
        mask = [0.0] * SEQ
        for p in range(start, min(len(text), SEQ)):
            mask[p] = 1.0
        xs.append(ids)
        masks.append(mask)
    return torch.tensor(xs), torch.tensor(masks)


def answer_loss(model, x, mask):
    import torch

    logits = model(x).logits[:, :-1]
    target = x[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none"
    ).view(target.shape)
    m = mask[:, 1:]
    return (nll * m).sum() / m.sum()


def train(model, task: str, steps: int, seed: int, lr: float):
    import torch

    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        x, mask = batch(task, 64, rng)
        loss = answer_loss(model, x, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def evaluate(folder: Path, data) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return {t: float(answer_loss(model, *data[t])) for t in TASKS}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--reefknot", default="reefknot", help="the reefknot binary")
    ap.add_argument("--steps", type=int, default=600, help="fine-tuning steps per task")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.work.exists():
        print(f"{args.work} exists; give a new folder", file=sys.stderr)
        return 2

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(args.seed)
    models = args.work / "models"
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=SEQ,
        tie_word_embeddings=False, pad_token_id=PAD,
    )
    base = LlamaForCausalLM(config)
    train(base, "copy", 2 * args.steps, args.seed, 3e-3)
    base.save_pretrained(models / "base")
    for i, task in enumerate(TASKS):
        tuned = LlamaForCausalLM(config)
        tuned.load_state_dict(base.state_dict())
        train(tuned, task, args.steps, args.seed + 1 + i, 1e-3)
        tuned.save_pretrained(models / task)
        # The task's training data, for its Fisher.
        rng = random.Random(100 + i)
        with (args.work / f"{task}.jsonl").open("w") as f:
            for _ in range(256):
                text, _ = sample(task, rng)
                f.write(json.dumps({"input_ids": [ALPHABET.index(c) for c in text]}) + "\n")
        subprocess.run(
            [sys.executable, str(ROOT / "scripts/fisher.py"), str(models / task),
             str(args.work / f"{task}.jsonl"), "-o", str(args.work / f"fisher/{task}.safetensors")],
            check=True, capture_output=True,
        )

    held_out = {t: batch(t, 512, random.Random(1000 + i)) for i, t in enumerate(TASKS)}
    rows = [("the base", "", evaluate(models / "base", held_out))]
    rows += [(f"the {t} fine-tune", "", evaluate(models / t, held_out)) for t in TASKS]
    for name, expression, fisher in METHODS:
        lines = ["base: models/base", "models:"]
        for t in TASKS:
            lines.append(f"  - path: models/{t}")
            if fisher:
                lines.append(f"    fisher: fisher/{t}.safetensors")
        lines += [f"merge: {expression}", "seed: 0"]
        slug = "".join(c if c.isalnum() else "-" for c in name.lower())
        recipe = args.work / f"{slug}.yaml"
        recipe.write_text("\n".join(lines) + "\n")
        out = args.work / "merged" / slug
        subprocess.run([args.reefknot, "merge", str(recipe), "-o", str(out), "-q"], check=True)
        rows.append((name, expression, evaluate(out, held_out)))

    print("| model | expression | " + " | ".join(TASKS) + " | mean |")
    print("|---|---|" + "---:|" * (len(TASKS) + 1))
    for name, expression, losses in rows:
        mean = sum(losses.values()) / len(losses)
        cells = " | ".join(f"{losses[t]:.3f}" for t in TASKS)
        expr = "`" + expression.replace("|", "\\|") + "`" if expression else ""
        print(f"| {name} | {expr} | {cells} | {mean:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
