#!/usr/bin/env python3
"""Golden fixtures for ``reefknot eval``: small causal LMs and the held-out loss that
Hugging Face transformers computes for them.

    python3 scripts/golden/make_eval_golden.py     # needs torch, transformers, safetensors

Writes ``tests/fixtures/eval/``:

* one folder per model of ``MODELS`` (random weights from a fixed seed, saved with
  ``save_pretrained``; a few re-saved by hand, see each entry): Llama f32 with an
  untied head, Llama bf16 sharded with tied embeddings, Mistral with a sliding window
  shorter than the evaluation window, Qwen2 with its q/k/v biases (f32, and f16
  weights upcast as bf16 ones are), Llama with Llama 3's scaled RoPE (bf16), Llama
  with linear RoPE scaling, attention and MLP biases and a head_dim of its own, GPT-2 f32 as
  ``GPT2LMHeadModel`` saves it and GPT-2 bf16 with the original checkpoint's
  unprefixed names (``h.0.attn.c_attn.weight``);
* ``tokens.json``: token documents (ids below every model's vocabulary);
* ``text.txt``: a text, evaluated with the ``llama_text`` model's ``tokenizer.json``;
* ``expected.json``: per model and data file, the context used, the windows, the
  number of predicted tokens and the loss in nats per token, plus the text's token ids.

The loss of a document is computed as ``reefknot eval`` defines it: consecutive windows
of at most ``context`` tokens (a last window of a single token dropped); for each,
``model(ids, labels=ids).loss`` (transformers' mean cross-entropy over the window's
tokens after the first) times the number of those tokens; the sum over all windows of
all documents divided by the number of predicted tokens.  Models are loaded with
``dtype=torch.float32`` (bf16 and f16 weights upcast, as reefknot evaluates) and eager
attention, on the CPU.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
)

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "eval"
TOKENIZER_FROM = ROOT / "tests" / "fixtures" / "golden" / "llama_vocab" / "base"
VOCAB = 96
TEXT = (
    "the quick brown fox jumps over the lazy dog. a merge keeps each skill when the "
    "signs agree; tie the knot and pull both ends.\nwhat is left is the mean of the rest."
)

SMALL = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    initializer_range=0.25,
)

MODELS = {
    "llama_f32": (LlamaConfig(vocab_size=VOCAB, rope_theta=10000.0, **SMALL), "float32", {}),
    "llama_bf16_tied": (
        LlamaConfig(vocab_size=VOCAB, tie_word_embeddings=True, rms_norm_eps=1e-5, **SMALL),
        "bfloat16",
        {"max_shard_size": "40KB"},
    ),
    "mistral_window": (
        MistralConfig(vocab_size=VOCAB, sliding_window=8, rope_theta=1e6, **SMALL),
        "float32",
        {},
    ),
    "qwen2_f32": (Qwen2Config(vocab_size=VOCAB, **SMALL), "float32", {}),
    "qwen2_f16": (Qwen2Config(vocab_size=VOCAB, **SMALL), "float16", {}),
    # Llama 3.1's scaled RoPE, with a short original context so that a head of 8
    # has a frequency in each of its three bands (kept, blended, divided).
    "llama3_rope": (
        LlamaConfig(
            vocab_size=VOCAB,
            rope_scaling={
                "rope_type": "llama3",
                "rope_theta": 10000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            **SMALL,
        ),
        "bfloat16",
        {},
    ),
    # Linear position interpolation, attention and MLP biases, and a head_dim other
    # than hidden_size / num_attention_heads.
    "llama_linear_bias": (
        LlamaConfig(
            vocab_size=VOCAB,
            rope_scaling={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
            attention_bias=True,
            mlp_bias=True,
            head_dim=16,
            **SMALL,
        ),
        "float32",
        {},
    ),
    "gpt2_f32": (
        GPT2Config(
            vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4,
            initializer_range=0.25,
        ),
        "float32",
        {},
    ),
    "gpt2_bf16_unprefixed": (
        GPT2Config(
            vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, n_inner=48,
            initializer_range=0.25,
        ),
        "bfloat16",
        {"unprefix": True},
    ),
}

# Each data file and the evaluation window eval runs it with (``--context``).
CONTEXT = 24


def make_tokens() -> list[list[int]]:
    g = torch.Generator().manual_seed(7)
    lengths = [50, 24, 1, 25]  # a window boundary, an exact fit, a lone token, a lone tail
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]


def loss_of(model, docs: list[list[int]], context: int) -> dict:
    nll, tokens, windows = 0.0, 0, 0
    with torch.no_grad():
        for doc in docs:
            for start in range(0, len(doc), context):
                w = doc[start : start + context]
                if len(w) < 2:
                    continue
                ids = torch.tensor([w])
                out = model(input_ids=ids, labels=ids)
                nll += out.loss.double().item() * (len(w) - 1)
                tokens += len(w) - 1
                windows += 1
    return {"context": context, "windows": windows, "tokens": tokens, "loss": nll / tokens}


def save(name: str, config, dtype: str, extra: dict) -> Path:
    torch.manual_seed(sum(map(ord, name)))
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    # Norm weights away from 1 and biases away from 0, so that they are exercised.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("bias") or "norm" in pname or "ln_" in pname:
                p.add_(torch.randn_like(p) * 0.2)
    model = model.to(getattr(torch, dtype))
    folder = OUT / name
    shutil.rmtree(folder, ignore_errors=True)
    kwargs = {k: v for k, v in extra.items() if k == "max_shard_size"}
    model.save_pretrained(folder, **kwargs)
    if extra.get("unprefix"):
        path = folder / "model.safetensors"
        tensors = load_file(path)
        save_file(
            {k.removeprefix("transformer."): v for k, v in tensors.items()},
            path,
            metadata={"format": "pt"},
        )
    for stray in folder.glob("generation_config.json"):
        stray.unlink()
    return folder


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    docs = make_tokens()
    (OUT / "tokens.json").write_text(json.dumps(docs) + "\n")
    (OUT / "text.txt").write_text(TEXT)
    expected: dict = {"models": {}}
    for name, (config, dtype, extra) in MODELS.items():
        folder = save(name, config, dtype, extra)
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, attn_implementation="eager"
        ).eval()
        expected["models"][name] = {"tokens.json": loss_of(model, docs, CONTEXT)}
        print(name, expected["models"][name])

    # A Llama with a real tokenizer, for text: the llama_vocab base's BPE tokenizer.
    tok_vocab = json.loads((TOKENIZER_FROM / "config.json").read_text())["vocab_size"]
    config = LlamaConfig(vocab_size=tok_vocab, **SMALL)
    folder = save("llama_text", config, "float32", {})
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (TOKENIZER_FROM / f).exists():
            shutil.copy(TOKENIZER_FROM / f, folder / f)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(TEXT)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    expected["models"]["llama_text"] = {"text.txt": loss_of(model, [ids], CONTEXT)}
    expected["text_ids"] = ids
    print("llama_text", expected["models"]["llama_text"], len(ids), "tokens")
    (OUT / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")


if __name__ == "__main__":
    main()
