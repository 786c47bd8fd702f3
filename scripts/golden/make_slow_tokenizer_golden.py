#!/usr/bin/env python3
"""A model folder whose only tokenizer is SentencePiece's ``tokenizer.model`` (a "slow"
tokenizer, as Llama 1/2-era checkpoints ship), for reefknot's vocabulary reader.

    python3 scripts/golden/make_slow_tokenizer_golden.py   # needs sentencepiece, transformers

Writes ``tests/fixtures/slow_tokenizer/``:

* ``tokenizer.model``: a BPE SentencePiece model of 320 pieces (with byte fallback, so
  that byte pieces such as ``<0x0A>`` are there too) trained on a fixed text;
* ``tokenizer_config.json`` with ``added_tokens_decoder`` for two tokens added after
  the pieces (``<|im_start|>`` special, ``<tool>`` not), as transformers saves them;
* ``config.json`` with ``vocab_size`` 322;
* ``expected.json``: every piece by id, as SentencePiece itself reads the model
  (``id_to_piece``), and the added tokens.

It checks that transformers' ``AutoTokenizer`` (5.25 here: a ``LlamaTokenizer``) reads
the folder to exactly that vocabulary.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import sentencepiece as spm

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "slow_tokenizer"
TEXT = (
    "the quick brown fox jumps over the lazy dog\n"
    "a merge keeps each skill when the signs agree\n"
    "tie the knot and pull both ends; what is left is the mean of the rest\n"
) * 20
ADDED = [(320, "<|im_start|>", True), (321, "<tool>", False)]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT.splitlines()),
        model_writer=model,
        vocab_size=320,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    (OUT / "tokenizer.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    decoder = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": not special,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
        for i, t, special in ADDED
    }
    (OUT / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "LlamaTokenizer", "added_tokens_decoder": decoder},
                   indent=2) + "\n")
    (OUT / "config.json").write_text(
        json.dumps({"model_type": "llama", "vocab_size": len(pieces) + len(ADDED)},
                   indent=2) + "\n")
    (OUT / "expected.json").write_text(
        json.dumps({"sentencepiece": spm.__version__, "pieces": pieces,
                    "added": [[i, t, s] for i, t, s in ADDED]}, indent=2,
                   ensure_ascii=False) + "\n")
    # Self-check: transformers reads the folder to the same vocabulary (this is what
    # mergekit's tokenizer code sees of such a model).
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(OUT).get_vocab()
    want = {p: i for i, p in enumerate(pieces)} | {t: i for i, t, _ in ADDED}
    if vocab != want:
        raise SystemExit(f"transformers reads another vocabulary: {len(vocab)} tokens")
    print(len(pieces), "pieces, as transformers reads them;", pieces[:8], "...")


if __name__ == "__main__":
    main()
