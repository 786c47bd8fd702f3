#!/usr/bin/env python3
"""Writes the fuzzing seed corpus, fuzz/seeds/TARGET/, from the repository's own
recipes and a few hand-made safetensors files and indexes. Standard library only.

    python3 fuzz/make_seeds.py
"""
import json
import re
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "seeds"

# Expressions beyond the recipes': every construct of the grammar at least once.
EXPRESSIONS = [
    "ties(trim(0.2), elect, disjoint)",
    "ties(trim(0.2), elect, disjoint) |> dare(0.9)",
    "dare(p=0.9, rescale=l1) |> elect(method=count) |> disjoint",
    "trim(k=[0.1, 0.5, 0.9]) |> linear(normalize=true)",
    "breadcrumbs(0.9, 0.01) |> sum |> scale($lambda)",
    "della(0.5, epsilon=0.1) |> mean",
    "slerp(t=0.5)",
    "model_stock(filter_wise=true)",
    "fisher # a comment\n |> scale(1e-3)",
    'plug::op(name="x\\u{41}", 2.5E3, .5, -1)',
]


def safetensors(tensors, metadata=None):
    header = {}
    data = b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def write(target, name, content):
    folder = SEEDS / target
    folder.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(content, bytes) else "w"
    with open(folder / name, mode) as f:
        f.write(content)


def main():
    recipes = sorted((ROOT / "recipes").glob("*.yaml"))
    expressions = list(EXPRESSIONS)
    for recipe in recipes:
        text = recipe.read_text()
        write("recipe", recipe.name, text)
        expressions += re.findall(r"^\s*merge:\s*[\"']?(.+?)[\"']?\s*$", text, re.M)
    for i, expr in enumerate(dict.fromkeys(expressions)):
        write("lang", f"expr-{i:02}.txt", expr)

    f32 = struct.pack("<4f", 1.0, -2.0, 0.5, 3.25)
    write("header", "f32.safetensors",
          safetensors([("w", "F32", [2, 2], f32)], {"format": "pt"}))
    write("header", "bf16-two.safetensors",
          safetensors([("a", "BF16", [2], b"\x80\x3f\x00\x40"),
                       ("b.weight", "F16", [1, 2], b"\x00\x3c\x00\xc0")]))
    write("header", "scalar-and-empty.safetensors",
          safetensors([("s", "F32", [], f32[:4]), ("e", "F32", [0, 3], b"")]))
    write("header", "i64.safetensors", safetensors([("ids", "I64", [1], b"\x01" + b"\0" * 7)]))

    write("index", "two-shards.json", json.dumps(
        {"metadata": {"total_size": 16},
         "weight_map": {"a": "a.safetensors", "b": "b.safetensors"}}))
    write("index", "one-shard.json", json.dumps({"weight_map": {"a": "a.safetensors"}}))
    write("index", "wrong-shard.json", json.dumps({"weight_map": {"a": "b.safetensors",
                                                                  "b": "b.safetensors"}}))


if __name__ == "__main__":
    main()
