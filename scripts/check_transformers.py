#!/usr/bin/env python3
"""Check that a merged model folder loads in Hugging Face transformers and runs.

    python3 scripts/check_transformers.py OUT_DIR [--tokens 1,5,9,3] [--expect-dtype bfloat16]
                                              [--text "some words"]

Loads the config with ``AutoConfig`` and the weights with
``AutoModelForCausalLM.from_pretrained(OUT_DIR)`` (dtype taken from the checkpoint),
fails if any weight is missing, unexpected or of the wrong shape (transformers would
otherwise initialise it randomly and only warn), runs one forward pass on a few token
ids and prints the logits' shape, dtype and checksums. With ``--text``, the folder's
tokenizer is loaded too (``AutoTokenizer``), must have at most ``vocab_size`` tokens,
each added token at the id ``tokenizer.json`` gives it, and the text's token ids are
the ones the forward pass runs on. Exits 0 on success, 1 on any
failure (with the reason on stderr), 2 on bad usage.

Needs python3 with torch and transformers.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import sys
from pathlib import Path


def fail(msg: str) -> int:
    print(f"FAIL: {msg}", file=sys.stderr)
    return 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir", type=Path, help="merged model folder (config.json + safetensors)")
    ap.add_argument("--tokens", default="1,5,9,3,7,2",
                    help="comma-separated token ids for the forward pass (default: %(default)s)")
    ap.add_argument("--expect-dtype", default=None,
                    help="fail unless the loaded parameters have this dtype (e.g. bfloat16)")
    ap.add_argument("--text", default=None,
                    help="tokenize this with the folder's tokenizer and run on its ids")
    args = ap.parse_args()

    if not (args.model_dir / "config.json").is_file():
        return fail(f"{args.model_dir}: no config.json")
    try:
        token_ids = [int(t) for t in args.tokens.split(",") if t.strip()]
    except ValueError:
        print(f"--tokens: not a list of integers: {args.tokens!r}", file=sys.stderr)
        return 2
    if not token_ids:
        print("--tokens: empty", file=sys.stderr)
        return 2

    try:
        import torch
        import transformers
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError as e:
        return fail(f"cannot import torch/transformers: {e}")

    try:
        config = AutoConfig.from_pretrained(args.model_dir)
    except Exception as e:  # noqa: BLE001 - report any loader error
        return fail(f"AutoConfig.from_pretrained: {type(e).__name__}: {e}")
    vocab = getattr(config, "vocab_size", None)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    print(f"config: model_type={config.model_type} architectures={config.architectures} "
          f"layers={getattr(config, 'num_hidden_layers', '?')} "
          f"hidden={getattr(config, 'hidden_size', '?')} vocab={vocab} "
          f"dtype={getattr(config, 'dtype', None) or getattr(config, 'torch_dtype', None)} "
          f"tie_word_embeddings={getattr(config, 'tie_word_embeddings', None)}")
    if args.text is not None:
        try:
            from transformers import AutoTokenizer
            tok = AutoTokenizer.from_pretrained(args.model_dir)
        except Exception as e:  # noqa: BLE001
            return fail(f"AutoTokenizer.from_pretrained: {type(e).__name__}: {e}")
        # Fewer tokens than rows is padding (`pad_to_multiple_of`); more would index
        # beyond the embeddings.
        if vocab is not None and len(tok) > vocab:
            return fail(f"the tokenizer has {len(tok)} tokens, config.json's vocab_size is {vocab}")
        listed = json.loads((args.model_dir / "tokenizer.json").read_text())["added_tokens"]
        wrong = [t["content"] for t in listed if tok.convert_tokens_to_ids(t["content"]) != t["id"]]
        if wrong:
            return fail(f"added tokens at other ids than tokenizer.json gives: {wrong[:10]}")
        token_ids = tok(args.text, add_special_tokens=False)["input_ids"]
        print(f"tokenizer {type(tok).__name__}: {len(tok)} tokens, {len(listed)} added; "
              f"{args.text!r} -> {tok.convert_ids_to_tokens(token_ids)}")
    if vocab is not None and any(t < 0 or t >= vocab for t in token_ids):
        return fail(f"token ids {token_ids} outside the vocabulary (size {vocab})")

    # transformers >= 4.56 names the argument `dtype`, older ones `torch_dtype`.
    params = inspect.signature(AutoModelForCausalLM.from_pretrained).parameters
    dtype_kw = "dtype" if "dtype" in params else "torch_dtype"
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            args.model_dir, output_loading_info=True, **{dtype_kw: "auto"})
    except TypeError:
        model, info = AutoModelForCausalLM.from_pretrained(
            args.model_dir, output_loading_info=True, torch_dtype="auto")
    except Exception as e:  # noqa: BLE001
        return fail(f"AutoModelForCausalLM.from_pretrained: {type(e).__name__}: {e}")

    problems = []
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        found = info.get(key) if isinstance(info, dict) else None
        if found:
            problems.append(f"{key}: {sorted(map(str, found))[:10]}")
    if problems:
        return fail("weights did not load cleanly: " + "; ".join(problems))

    param_dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()})
    n_params = sum(p.numel() for p in model.parameters())
    print(f"loaded {type(model).__name__}: {n_params} parameters, dtype {param_dtypes}")
    if args.expect_dtype and param_dtypes != [args.expect_dtype]:
        return fail(f"parameters are {param_dtypes}, expected {args.expect_dtype}")

    model.eval()
    ids = torch.tensor([token_ids], dtype=torch.long)
    try:
        with torch.no_grad():
            logits = model(input_ids=ids).logits
    except Exception as e:  # noqa: BLE001
        return fail(f"forward pass: {type(e).__name__}: {e}")

    expected_shape = (1, len(token_ids), vocab) if vocab is not None else None
    if expected_shape is not None and tuple(logits.shape) != expected_shape:
        return fail(f"logits shape {tuple(logits.shape)}, expected {expected_shape}")
    as_f32 = logits.detach().to(torch.float32).contiguous()
    if not torch.isfinite(as_f32).all():
        return fail("logits contain NaN or infinity")
    flat = as_f32.to(torch.float64).reshape(-1)
    digest = hashlib.sha256(as_f32.numpy().tobytes()).hexdigest()[:16]
    print(f"token ids {token_ids}")
    print(f"logits shape {tuple(logits.shape)} dtype {str(logits.dtype).replace('torch.', '')}")
    print(f"checksum sum={flat.sum().item():.6f} abs_sum={flat.abs().sum().item():.6f} "
          f"argmax={as_f32[0].argmax(dim=-1).tolist()} sha256[:16]={digest}")
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
