#!/usr/bin/env python3
"""Golden fixtures for merges of models whose tokenizers differ, made by mergekit.

mergekit's ``tokenizer_source: union | base | <model>`` (and the newer
``tokenizer: {source: ...}``) builds an output vocabulary, then permutes the rows of
every weight with a vocabulary axis (for Llama ``model.embed_tokens.weight`` and
``lm_head.weight``) of every input into it before the merge method runs; a model that
lacks an output token gets a stand-in row.  This script makes a small Llama family
whose three models really have different vocabularies, runs mergekit on eight
configurations, and commits what it wrote, so that reefknot's ``tokenizer:`` can be
tested against it.  ``tokenizer: {tokens: ...}`` (``tokenizer_tokens``) gives chosen
tokens their rows: a model's, another token's or an id's, or zeros, for the models that
lack the token (every model with ``force``), a token no vocabulary has added first;
``tokenizer_slices`` merges two slices of every input with a lambda each.  With ``tokenizer: {pad_to_multiple_of: k}`` mergekit pads the
vocabulary tensors to a multiple of ``k`` rows, each padding row of each input the mean
of that input's aligned token rows, before the merge.

What it does
------------
1. ``tests/fixtures/golden/llama_vocab/{base,task_0,task_1}``: float32 Llama models
   (2 layers, hidden 32, intermediate 32, 4 heads / 2 kv heads, untied lm_head), each
   with a fast BPE tokenizer made with the ``tokenizers`` library (``tokenizer.json``,
   ``tokenizer_config.json``, ``special_tokens_map.json``) and a ``config.json`` whose
   ``vocab_size`` is the model's own vocabulary size:

   * ``base``   -- 60 tokens: ``<unk> <s> </s>`` (special), ``a``..``z``, 31 merges.
   * ``task_0`` -- the base's 60 tokens with the base's ids, 6 more merges
     (``ge me mer ck kn ot``) and the added special tokens ``<|im_start|>``,
     ``<|im_end|>``: 68 tokens.
   * ``task_1`` -- 57 of the base's tokens (``al ent hat`` dropped) in a shuffled id
     order (the specials included), 5 more merges (``ge me ck``, shared with task_0,
     and its own ``qu ly``) and the added special ``<|im_end|>`` (shared): 63 tokens.

   The tensors other than the vocabulary ones, and the rows of the base's tokens,
   come from make_golden.py's generator (``make_family_tensors``: base + heavy-tailed
   task vectors), so the fine-tunes are related to the base and to each other.  A
   token a fine-tune adds gets a fresh row (a shared new token: one fresh row plus a
   small per-model delta).  Those rows are rounded to multiples of 2^-20 so that the
   mean mergekit takes of them (below) is exact in float32: where TIES then elects a
   sign on two exactly opposite deltas, any implementation sees the same exact zero
   (elected +) rather than a rounding-dependent sign.

2. For each case of ``CASES`` writes ``tests/fixtures/golden/<case>/``: ``recipe.yaml``
   (reefknot, with its ``tokenizer:`` key), ``mergekit.yml``, and from mergekit's
   output folder ``expected.safetensors``, ``expected_config.json``,
   ``expected_tokenizer.json``, ``expected_tokenizer_config.json``, plus
   ``golden.json`` (the case, the versions, the output tokens with mergekit's ids;
   see tests/fixtures/golden/README.md).

3. Self-checks, any failure exits non-zero:

   * an independent numpy model of mergekit's rules builds the output vocabulary and
     every input's aligned vocabulary rows -- a model that has the token: its own row;
     one that lacks it: the row of the only model that has it, else the base's (when
     the merge has a base model that has it), else the mean over the models that have
     it, else zeros; padding rows (``pad_to_multiple_of``): the mean of the input's
     aligned token rows -- runs the method's arithmetic, and is compared with
     mergekit's output token by token (by string, not by id; padding rows by row
     index) to 1e-6 of max(|expected|, s), ``s`` the largest |value| among the aligned
     inputs at that element (the tolerance of tests/golden.rs), and in a padding row
     at least the largest |value| of the inputs' aligned token rows in that column
     (the summands of the mean, whose float32 sum sets its rounding);
   * every input model and every mergekit output loads with transformers
     (``LlamaForCausalLM`` + ``AutoTokenizer``), encodes a text using new tokens, and
     runs a forward pass whose logits have the width of the vocabulary tensors (the
     output vocabulary's size, or the padded row count).

Every case names a ``base_model`` (the linear ones list it among the models with its
weight): without one, mergekit's tokenizer base and output config.json are
``referenced_models()[0]``, the first element of a Python set of model references,
which changes with PYTHONHASHSEED.

mergekit's union is not deterministic even so: it appends the tokens the base lacks in the
iteration order of ``tokenizer.get_vocab()``, a dict built from a Rust HashMap with a
per-process random seed, so the ids of those tokens (and the order of the rows of the
vocabulary tensors) change from run to run.  ``--check`` therefore accepts a
regenerated file that is byte-identical or equal after relabelling token ids by token
string (tensor rows permuted accordingly, everything else byte- or value-identical);
it prints which.  Padding rows are not permuted, but they are float32 means that
torch sums in row order, so a new order of the token rows moves them (and their merge)
by the rounding of that sum: ``--check`` compares them to 1e-6 of max(|fresh|,
|committed|, the largest |value| of the committed token rows in that column).

Rerun
-----
    python3 scripts/golden/make_tokenizer_golden.py
    python3 scripts/golden/make_tokenizer_golden.py --only tokenizer_padded
    python3 scripts/golden/make_tokenizer_golden.py --check

(``--only``: remake those cases only; the ``llama_vocab`` inputs are always written.)

Needs python3 with numpy, tokenizers, torch and transformers (mergekit's
dependencies) and ``mergekit-yaml`` on PATH; the committed fixtures were made with
mergekit 0.1.5, transformers 5.25.0, tokenizers 0.23.3, torch 2.15.0 (CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_golden as mg  # noqa: E402  (the other generator: safetensors, families)

REPO = mg.REPO
DEFAULT_OUT = mg.DEFAULT_OUT
FAMILY_NAME = "llama_vocab"
F32_RTOL = mg.F32_RTOL

# The architecture; vocab is the base's (make_family_tensors draws the rows of the
# base's 60 tokens, every model's own vocab size is set per model below).
FAMILY = mg.Family(FAMILY_NAME, layers=2, hidden=32, intermediate=32, vocab=60,
                   heads=4, kv_heads=2, dtype="F32", shards=1, seed=20240614,
                   task_scale=0.05)
VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")
NEW_ROW_SEED = 20240615  # fresh rows of the tokens the fine-tunes add
PERMUTATION_SEED = 20240616  # task_1's id order
GRID = 2.0 ** -20  # new tokens' rows are multiples of this (exact means, see above)


# --------------------------------------------------------------------------
# vocabularies
# --------------------------------------------------------------------------

SPECIALS = ["<unk>", "<s>", "</s>"]  # in the BPE vocabulary and special, as in Llama
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
BASE_MERGES: List[Tuple[str, str]] = [
    ("t", "h"), ("h", "e"), ("i", "n"), ("e", "r"), ("a", "n"), ("th", "e"),
    ("in", "g"), ("o", "n"), ("a", "t"), ("e", "n"), ("r", "e"), ("e", "s"),
    ("s", "t"), ("n", "d"), ("o", "u"), ("h", "a"), ("e", "d"), ("t", "o"),
    ("i", "t"), ("i", "s"), ("o", "r"), ("a", "r"), ("a", "l"), ("t", "i"),
    ("t", "e"), ("an", "d"), ("i", "on"), ("t", "ion"), ("h", "er"), ("en", "t"),
    ("ha", "t"),
]


@dataclass(frozen=True)
class VocabSpec:
    """One model's tokenizer: BPE merges on top of the specials and letters, minus
    ``dropped`` tokens, then ``added`` special tokens after the BPE vocabulary;
    ``shuffle``: the BPE vocabulary's ids are a random permutation."""

    label: str
    merges: Tuple[Tuple[str, str], ...]
    dropped: Tuple[str, ...] = ()
    added: Tuple[str, ...] = ()
    shuffle: bool = False


VOCABS = [
    VocabSpec("base", tuple(BASE_MERGES)),
    VocabSpec("task_0",
              tuple(BASE_MERGES) + (("g", "e"), ("m", "e"), ("me", "r"), ("c", "k"),
                                    ("k", "n"), ("o", "t")),
              added=("<|im_start|>", "<|im_end|>")),
    # drops three tokens no other merge builds on; ge/me/ck shared with task_0
    VocabSpec("task_1",
              tuple(m for m in BASE_MERGES if "".join(m) not in ("al", "ent", "hat"))
              + (("g", "e"), ("m", "e"), ("c", "k"), ("q", "u"), ("l", "y")),
              dropped=("al", "ent", "hat"), added=("<|im_end|>",), shuffle=True),
]
LABELS = [v.label for v in VOCABS]
# a text that uses base tokens, both fine-tunes' new tokens and the added specials
PROBE_TEXT = "<|im_start|> the merge ran quickly <|im_end|> and then stopped"


@dataclass
class Vocab:
    """A built vocabulary: token -> id (BPE part and added tokens together)."""

    ids: Dict[str, int]
    bpe: Dict[str, int]
    merges: List[Tuple[str, str]]
    special: List[str]  # special tokens, in id order

    @property
    def size(self) -> int:
        return len(self.ids)


def build_vocab(spec: VocabSpec) -> Vocab:
    tokens = SPECIALS + LETTERS + ["".join(m) for m in spec.merges]
    tokens = [t for t in tokens if t not in spec.dropped]
    assert len(set(tokens)) == len(tokens), spec.label
    if spec.shuffle:
        # A fixed permutation that moves (almost) everything, specials included: a
        # model whose shared tokens sit at other ids than the base's.
        order = np.random.default_rng(PERMUTATION_SEED).permutation(len(tokens))
        tokens = [tokens[i] for i in order]
    bpe = {t: i for i, t in enumerate(tokens)}
    ids = dict(bpe)
    for t in spec.added:
        ids[t] = len(ids)
    special = sorted(SPECIALS + list(spec.added), key=lambda t: ids[t])
    return Vocab(ids, bpe, list(spec.merges), special)


def tokenizer_files(v: Vocab) -> Dict[str, str]:
    """tokenizer.json (serialized by the tokenizers library), tokenizer_config.json and
    special_tokens_map.json (written here, so they do not depend on the transformers
    version's save_pretrained)."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.BPE(vocab=v.bpe, merges=v.merges, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # The specials in id order; add_special_tokens reuses the id of a token already
    # in the BPE vocabulary and appends the others.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in v.special])
    got = tok.get_vocab(with_added_tokens=True)
    assert got == v.ids, "the tokenizers library assigned other ids"
    decoder = {
        str(v.ids[t]): {"content": t, "lstrip": False, "normalized": False,
                        "rstrip": False, "single_word": False, "special": True}
        for t in v.special
    }
    config = {
        "added_tokens_decoder": decoder,
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "model_max_length": 128,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "<unk>",
    }
    specials_map = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    return {
        "tokenizer.json": tok.to_str(pretty=True) + "\n",
        "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
        "special_tokens_map.json": json.dumps(specials_map, indent=2) + "\n",
    }


# --------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------

def grid(x: np.ndarray) -> np.ndarray:
    return (np.round(x / GRID) * GRID).astype(np.float32)


def make_models(vocabs: List[Vocab]) -> List[Dict[str, np.ndarray]]:
    """[base, task_0, task_1] tensors; the vocabulary tensors in each model's ids."""
    drawn = mg.make_family_tensors(FAMILY)[:3]  # base, task_0, task_1 (task_2 unused)
    base_ids = vocabs[0].ids
    rng = np.random.default_rng(NEW_ROW_SEED)
    h = FAMILY.hidden
    std = 1.0 / np.sqrt(h)
    # Every token some fine-tune adds, in a fixed order: one fresh row each per
    # tensor, and a per-model delta of the fine-tune scale.
    new_tokens = sorted({t for v in vocabs[1:] for t in v.ids if t not in base_ids})
    fresh: Dict[str, Dict[str, np.ndarray]] = {}
    for name in VOCAB_TENSORS:
        fresh[name] = {t: std * rng.standard_normal(h) for t in new_tokens}
    models = []
    for m, v in enumerate(vocabs):
        out = {k: x for k, x in drawn[m].items() if k not in VOCAB_TENSORS}
        for name in VOCAB_TENSORS:
            rows = np.zeros((v.size, h), dtype=np.float32)
            for t, i in v.ids.items():
                if t in base_ids:
                    rows[i] = drawn[m][name][base_ids[t]]
                else:
                    delta = FAMILY.task_scale * std * rng.standard_t(3, h)
                    rows[i] = grid(fresh[name][t] + delta)
            out[name] = rows
        models.append(out)
    # The rows mergekit averages (a token two fine-tunes add and the base lacks) must
    # have an exact float32 mean: their sum and its half are exact on the grid.
    for t in new_tokens:
        holders = [(m, v) for m, v in zip(models, vocabs) if t in v.ids]
        for name in VOCAB_TENSORS:
            rows = [m[name][v.ids[t]] for m, v in holders]
            s32 = np.zeros(h, dtype=np.float32)
            for r in rows:
                s32 = s32 + r
            exact = np.sum([r.astype(np.float64) for r in rows], axis=0)
            assert np.array_equal(s32.astype(np.float64), exact), t
            assert np.array_equal((s32 / np.float32(len(rows))).astype(np.float64),
                                  exact / len(rows)), t
    return models


def model_config(v: Vocab) -> dict:
    cfg = replace(FAMILY, vocab=v.size).config()
    cfg.update(bos_token_id=v.ids["<s>"], eos_token_id=v.ids["</s>"],
               pad_token_id=v.ids["<unk>"])
    return cfg


def write_family(root: Path, vocabs: List[Vocab],
                 models: List[Dict[str, np.ndarray]]) -> None:
    fdir = root / FAMILY_NAME
    if fdir.exists():
        shutil.rmtree(fdir)
    specs = [name for name, _ in FAMILY.tensor_specs()]
    for label, v, tensors in zip(LABELS, vocabs, models):
        d = fdir / label
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps(model_config(v), indent=2) + "\n")
        mg.write_safetensors(d / "model.safetensors",
                             {n: mg.Tensor.from_f32(tensors[n], "F32") for n in specs},
                             {"format": "pt"})
        for fname, text in tokenizer_files(v).items():
            (d / fname).write_text(text)


# --------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    description: str
    recipe: str  # YAML body; {base}, {m0}, {m1} are the relative model paths
    mergekit: str  # YAML body, same placeholders
    method: str  # the reference's arithmetic: "linear" | "ties" | "task_arithmetic"
    inputs: Tuple[str, ...]  # mergekit's models in its order (LABELS); base first if any
    weights: Tuple[float, ...]  # per input, same order
    base_model: Optional[str]  # mergekit's base_model (a label) or None
    source: str  # "union" | "base" | a label (the output vocabulary's model)
    recipe_base: str  # the recipe's base: (label)
    recipe_models: Tuple[str, ...]  # the recipe's models: (labels)
    density: float = 1.0  # ties
    lam: float = 1.0  # task_arithmetic
    pad_to_multiple_of: Optional[int] = None  # tokenizer: {pad_to_multiple_of: ...}
    # tokenizer: {tokens: ...}: (token, source, force), source ("model", label) |
    # ("token", label, token) | ("id", label, id) | ("zero",); a token no vocabulary
    # has is added after the others, in this order
    token_rows: Tuple[Tuple[str, Tuple, bool], ...] = ()
    # mergekit's `slices:` of one layer each over every input (task_arithmetic): each
    # slice's lambda; the embeddings take the first's, the final norm and LM head the
    # last's
    slice_lams: Optional[Tuple[float, ...]] = None


def P(label: str) -> str:
    return f"../{FAMILY_NAME}/{label}"


PATHS = {"base": P("base"), "m0": P("task_0"), "m1": P("task_1")}

CASES = [
    Case(
        name="tokenizer_union_linear",
        description="linear of task_0 (the base_model, listed with weight 0.6) and "
                    "task_1 (0.4), tokenizer_source: union: task_0's vocabulary, then "
                    "task_1's own tokens",
        recipe="""\
base: {m0}
models:
  - path: {m1}
    weight: 0.4
merge: linear(base_weight=0.6)
tokenizer: union
dtype: float32
""",
        # mergekit needs the base_model here: without one its tokenizer base is
        # referenced_models()[0], the first element of a Python set of model
        # references, which changes with PYTHONHASHSEED (see the README).
        mergekit="""\
merge_method: linear
base_model: {m0}
models:
  - model: {m0}
    parameters: {{ weight: 0.6 }}
  - model: {m1}
    parameters: {{ weight: 0.4 }}
tokenizer_source: union
dtype: float32
""",
        method="linear", inputs=("task_0", "task_1"), weights=(0.6, 0.4),
        base_model="task_0", source="union", recipe_base="task_0",
        recipe_models=("task_1",),
    ),
    Case(
        name="tokenizer_union_ties",
        description="TIES (density 0.5, weight 1, normalize true) of task_0 and task_1 "
                    "on base, tokenizer_source: union: base tokens task_1 lacks take "
                    "the base's row, a token one model has that model's row, the "
                    "tokens both fine-tunes add (not the base) their mean as the "
                    "base's row",
        recipe="""\
base: {base}
models:
  - path: {m0}
  - path: {m1}
merge: ties(trim(0.5), elect, disjoint)
tokenizer: union
dtype: float32
""",
        mergekit="""\
merge_method: ties
base_model: {base}
models:
  - model: {m0}
  - model: {m1}
parameters:
  density: 0.5
  weight: 1.0
  normalize: true
tokenizer_source: union
dtype: float32
""",
        method="ties", inputs=("base", "task_0", "task_1"), weights=(1.0, 1.0),
        base_model="base", source="union", recipe_base="base",
        recipe_models=("task_0", "task_1"), density=0.5,
    ),
    Case(
        name="tokenizer_model",
        description="linear of base (listed, weight 0.2), task_0 (0.5) and task_1 "
                    "(0.3), tokenizer_source: task_0's folder: task_0's vocabulary; "
                    "task_1's own tokens dropped, the tokens task_0 and task_1 add "
                    "given to the base as their mean",
        recipe="""\
base: {base}
models:
  - path: {m0}
    weight: 0.5
  - path: {m1}
    weight: 0.3
merge: linear(base_weight=0.2)
tokenizer: {m0}
dtype: float32
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
tokenizer_source: {m0}
dtype: float32
""",
        method="linear", inputs=("base", "task_0", "task_1"), weights=(0.2, 0.5, 0.3),
        base_model="base", source="task_0", recipe_base="base",
        recipe_models=("task_0", "task_1"),
    ),
    Case(
        name="tokenizer_base_permuted",
        description="linear of base (the base_model, listed with weight 0.7) and "
                    "task_1 (0.3), tokenizer_source: base: task_1's rows permuted into "
                    "the base's ids, the three base tokens it lacks given the base's "
                    "rows, its own tokens dropped",
        recipe="""\
base: {base}
models:
  - path: {m1}
    weight: 0.3
merge: linear(base_weight=0.7)
tokenizer: base
dtype: float32
""",
        mergekit="""\
merge_method: linear
base_model: {base}
models:
  - model: {base}
    parameters: {{ weight: 0.7 }}
  - model: {m1}
    parameters: {{ weight: 0.3 }}
tokenizer_source: base
dtype: float32
""",
        method="linear", inputs=("base", "task_1"), weights=(0.7, 0.3),
        base_model="base", source="base", recipe_base="base",
        recipe_models=("task_1",),
    ),
    Case(
        name="tokenizer_dict_union",
        description="task arithmetic (weights 0.8/0.5, lambda 0.9) of task_0 and task_1 "
                    "on base, with the dict form tokenizer: {source: union}",
        recipe="""\
base: {base}
models:
  - path: {m0}
    weight: 0.8
  - path: {m1}
    weight: 0.5
merge: sum |> scale(0.9)
tokenizer: union
dtype: float32
""",
        mergekit="""\
merge_method: task_arithmetic
base_model: {base}
models:
  - model: {m0}
    parameters: {{ weight: 0.8 }}
  - model: {m1}
    parameters: {{ weight: 0.5 }}
parameters:
  lambda: 0.9
tokenizer:
  source: union
dtype: float32
""",
        method="task_arithmetic", inputs=("base", "task_0", "task_1"),
        weights=(0.8, 0.5), base_model="base", source="union", recipe_base="base",
        recipe_models=("task_0", "task_1"), lam=0.9,
    ),
    Case(
        name="tokenizer_padded",
        description="TIES (density 0.5, weight 1, normalize true) of task_0 and task_1 "
                    "on base, tokenizer: {source: union, pad_to_multiple_of: 16}: the "
                    "70 tokens of tokenizer_union_ties, the vocabulary tensors padded "
                    "to 80 rows, each input's padding rows the mean of its 70 aligned "
                    "token rows, merged like the others",
        recipe="""\
base: {base}
models:
  - path: {m0}
  - path: {m1}
merge: ties(trim(0.5), elect, disjoint)
tokenizer: {{ source: union, pad_to_multiple_of: 16 }}
dtype: float32
""",
        mergekit="""\
merge_method: ties
base_model: {base}
models:
  - model: {m0}
  - model: {m1}
parameters:
  density: 0.5
  weight: 1.0
  normalize: true
tokenizer:
  source: union
  pad_to_multiple_of: 16
dtype: float32
""",
        method="ties", inputs=("base", "task_0", "task_1"), weights=(1.0, 1.0),
        base_model="base", source="union", recipe_base="base",
        recipe_models=("task_0", "task_1"), density=0.5, pad_to_multiple_of=16,
    ),
]

CASES.append(
    Case(
        name="tokenizer_tokens",
        description="task arithmetic (lambda 1) of task_0 and task_1 on base, tokenizer: "
                    "{source: union, tokens}: <|im_start|> forced to task_0's row of <s> "
                    "for every input, <|im_end|> from task_1 for the base (which lacks "
                    "it), al zero where task_1 lacks it, hat forced to the base's row, "
                    "and <extra> (in no vocabulary) added with the base's row 5",
        recipe="""\
base: {base}
models:
  - path: {m0}
  - path: {m1}
merge: sum
tokenizer:
  source: union
  tokens:
    "<|im_start|>": {{ source: {{ model: {m0}, token: "<s>" }}, force: true }}
    "<|im_end|>": {{ source: {m1} }}
    "al": {{ source: zero }}
    "hat": {{ source: base, force: true }}
    "<extra>": {{ source: {{ model: base, token_id: 5 }} }}
dtype: float32
""",
        mergekit="""\
merge_method: task_arithmetic
base_model: {base}
models:
  - model: {m0}
    parameters: {{ weight: 1.0 }}
  - model: {m1}
    parameters: {{ weight: 1.0 }}
tokenizer:
  source: union
  tokens:
    "<|im_start|>":
      source: {{ kind: model_token, model: {m0}, token: "<s>" }}
      force: true
    "<|im_end|>":
      source: {m1}
    "al":
      source: {{ kind: zero }}
    "hat":
      source: {base}
      force: true
    "<extra>":
      source: {{ kind: model_token, model: {base}, token_id: 5 }}
dtype: float32
""",
        method="task_arithmetic", inputs=("base", "task_0", "task_1"),
        weights=(1.0, 1.0), base_model="base", source="union", recipe_base="base",
        recipe_models=("task_0", "task_1"),
        token_rows=(("<|im_start|>", ("token", "task_0", "<s>"), True),
                    ("<|im_end|>", ("model", "task_1"), False),
                    ("al", ("zero",), False),
                    ("hat", ("model", "base"), True),
                    ("<extra>", ("id", "base", 5), False)),
    )
)

CASES.append(
    Case(
        name="tokenizer_slices",
        description="task arithmetic of task_0 and task_1 on base over two slices of one "
                    "layer each, lambda 0.5 then 1.0 (embeddings 0.5, final norm and "
                    "lm_head 1.0), tokenizer_source: union: every slice merges every "
                    "input, so the rows are filled as without slices",
        recipe="""\
base: {base}
models:
  - path: {m0}
  - path: {m1}
merge: sum |> scale($lambda)
slices:
  - layers: 0..1
    params: {{ lambda: 0.5 }}
  - layers: 1..2
    params: {{ lambda: 1.0 }}
tokenizer: union
dtype: float32
""",
        mergekit="""\
merge_method: task_arithmetic
base_model: {base}
slices:
  - sources:
      - model: {base}
        layer_range: [0, 1]
      - model: {m0}
        layer_range: [0, 1]
        parameters: {{ weight: 1.0 }}
      - model: {m1}
        layer_range: [0, 1]
        parameters: {{ weight: 1.0 }}
    parameters:
      lambda: 0.5
  - sources:
      - model: {base}
        layer_range: [1, 2]
      - model: {m0}
        layer_range: [1, 2]
        parameters: {{ weight: 1.0 }}
      - model: {m1}
        layer_range: [1, 2]
        parameters: {{ weight: 1.0 }}
    parameters:
      lambda: 1.0
tokenizer_source: union
dtype: float32
""",
        method="task_arithmetic", inputs=("base", "task_0", "task_1"),
        weights=(1.0, 1.0), base_model="base", source="union", recipe_base="base",
        recipe_models=("task_0", "task_1"), slice_lams=(0.5, 1.0),
    )
)

EXPECTED_FILES = {  # mergekit's output file -> the committed name
    "config.json": "expected_config.json",
    "tokenizer.json": "expected_tokenizer.json",
    "tokenizer_config.json": "expected_tokenizer_config.json",
}


# --------------------------------------------------------------------------
# the independent reference
# --------------------------------------------------------------------------

def reference_vocab(case: Case, vocabs: Dict[str, Vocab]) -> Tuple[Dict[str, int], Set[str]]:
    """The output tokens: those whose id is fixed, with it, and the set of those whose
    id mergekit assigns in hash order (union only)."""
    if case.source == "union":
        # mergekit's tokenizer base is the base_model (every case has one: without it
        # mergekit takes referenced_models()[0], the first element of a set)
        first = vocabs[case.base_model or case.inputs[0]]
        rest = {t for lab in case.inputs for t in vocabs[lab].ids if t not in first.ids}
        fixed = dict(first.ids)
    else:
        label = (case.base_model or case.inputs[0]) if case.source == "base" else case.source
        fixed, rest = dict(vocabs[label].ids), set()
    # `tokens` the vocabulary lacks: added after it, in order (add_tokens)
    for tok, _, _ in case.token_rows:
        if tok not in fixed and tok not in rest:
            fixed[tok] = len(fixed) + len(rest)
    return fixed, rest


def token_row(case: Case, vocabs: Dict[str, Vocab], models: Dict[str, Dict[str, np.ndarray]],
              name: str, source: Tuple) -> np.ndarray:
    """The row a ``tokens`` entry gives (mergekit's compute_default_embedding)."""
    if source[0] == "zero":
        return np.zeros(FAMILY.hidden, dtype=np.float32)
    lab = source[1]
    if source[0] == "model":
        raise AssertionError("a model source is read per token (aligned_rows)")
    row = vocabs[lab].ids[source[2]] if source[0] == "token" else source[2]
    return models[lab][name][row]


def padded_rows(case: Case, n_tokens: int) -> int:
    """Rows of the output's vocabulary tensors (and its config.json vocab_size):
    ``n_tokens`` rounded up to a multiple of ``pad_to_multiple_of``."""
    k = case.pad_to_multiple_of
    return -(-n_tokens // k) * k if k else n_tokens


def aligned_rows(case: Case, vocabs: Dict[str, Vocab], models: Dict[str, Dict[str, np.ndarray]],
                 out_ids: Dict[str, int], name: str) -> Dict[str, np.ndarray]:
    """Each input's vocabulary tensor in the output's ids, with mergekit's stand-in rows;
    padding rows (past the tokens) the mean of the input's aligned token rows."""
    n = len(out_ids)
    res = {}
    rules = {tok: (src, force) for tok, src, force in case.token_rows}
    for lab in case.inputs:
        rows = np.zeros((padded_rows(case, n), FAMILY.hidden), dtype=np.float32)
        for tok, j in out_ids.items():
            holders = [m for m in case.inputs if tok in vocabs[m].ids]
            rule = rules.get(tok)
            if rule and (rule[1] or tok not in vocabs[lab].ids):
                src = rule[0]
                if src[0] == "model":
                    rows[j] = models[src[1]][name][vocabs[src[1]].ids[tok]]
                else:
                    rows[j] = token_row(case, vocabs, models, name, src)
            elif tok in vocabs[lab].ids:
                rows[j] = models[lab][name][vocabs[lab].ids[tok]]
            elif len(holders) == 1:
                rows[j] = models[holders[0]][name][vocabs[holders[0]].ids[tok]]
            elif case.base_model is not None and tok in vocabs[case.base_model].ids:
                rows[j] = models[case.base_model][name][vocabs[case.base_model].ids[tok]]
            elif holders:
                acc = np.zeros(FAMILY.hidden, dtype=np.float64)
                for m in holders:
                    acc += models[m][name][vocabs[m].ids[tok]]
                rows[j] = (acc / len(holders)).astype(np.float32)
            # else: no model has it: zeros
        if rows.shape[0] > n:
            rows[n:] = rows[:n].astype(np.float64).mean(axis=0).astype(np.float32)
        res[lab] = rows
    return res


def lam_of(case: Case, name: str) -> float:
    """The task arithmetic lambda of tensor ``name``: the case's, or with
    ``slice_lams`` its layer's slice's (embeddings the first, the rest outside the
    layers the last), as mergekit reads a slice's parameters."""
    if not case.slice_lams:
        return case.lam
    m = re.search(r"\.layers\.(\d+)\.", name)
    if m:
        return case.slice_lams[int(m.group(1))]
    return case.slice_lams[0] if "embed_tokens" in name else case.slice_lams[-1]


def reference_merge(case: Case, ops: Dict[str, np.ndarray],
                    name: str = "") -> Tuple[np.ndarray, int]:
    """The method's arithmetic on aligned operands (float64 sums of float32 deltas);
    also the number of positions where an unstable sort could trim otherwise."""
    f32 = np.float32
    if case.method == "linear":
        acc = sum(np.float64(w) * ops[lab].astype(np.float64)
                  for lab, w in zip(case.inputs, case.weights))
        return acc / sum(case.weights), 0
    base = ops["base"]
    deltas = [(ops[lab] - base).astype(f32) for lab in case.inputs[1:]]
    w = case.weights
    if case.method == "task_arithmetic":
        acc = sum(np.float64(wi) * d.astype(np.float64) for wi, d in zip(w, deltas))
        return base.astype(np.float64) + lam_of(case, name) * acc, 0
    assert case.method == "ties"
    n = base.size
    k = mg.keep_count(case.density, n)
    kept = []
    ambiguous = np.zeros(n, dtype=bool)
    for d in deltas:
        flat = d.reshape(-1)
        order = np.argsort(-np.abs(flat), kind="stable")[:k]
        out = np.zeros_like(flat)
        out[order] = flat[order]
        kept.append(out.reshape(d.shape))
        if 0 < k < n:
            ambiguous |= mg.ambiguous_ties(d, [k])
    u = [f32(wi) * d for wi, d in zip(w, kept)]
    s = u[0].astype(np.float64) + u[1].astype(np.float64)
    gamma = np.where(s >= 0, 1.0, -1.0)
    num = np.zeros(base.shape, dtype=np.float64)
    den = np.zeros(base.shape, dtype=np.float64)
    for wi, ui in zip(w, u):
        agree = (ui != 0) & (np.sign(ui) == gamma)
        num += np.where(agree, ui.astype(np.float64), 0.0)
        den += np.where(agree, wi, 0.0)
    den = np.where(den == 0, 1.0, den)
    return base.astype(np.float64) + num / den, int(ambiguous.sum())


def mergekit_ids(tokenizer_json: dict) -> Dict[str, int]:
    ids = dict(tokenizer_json["model"]["vocab"])
    for e in tokenizer_json["added_tokens"]:
        ids[e["content"]] = e["id"]
    return ids


def check_case(case: Case, vocabs: Dict[str, Vocab], models: Dict[str, Dict[str, np.ndarray]],
               merged: Dict[str, mg.Tensor], tok_json: dict,
               out_config: dict) -> Tuple[bool, List[str], float, int]:
    """mergekit's output against the reference, token by token."""
    lines: List[str] = []
    ok = True
    got_ids = mergekit_ids(tok_json)
    fixed, hashed = reference_vocab(case, vocabs)
    want_tokens = set(fixed) | hashed
    if set(got_ids) != want_tokens:
        ok = False
        lines.append(f"output tokens differ: {sorted(set(got_ids) ^ want_tokens)}")
        return ok, lines, float("inf"), 0
    moved = [t for t, i in fixed.items() if got_ids[t] != i]
    if moved:
        ok = False
        lines.append(f"tokens not at the source's ids: {moved}")
    if sorted(got_ids.values()) != list(range(len(got_ids))):
        ok = False
        lines.append("mergekit's ids are not 0..n-1")
    n_rows = padded_rows(case, len(got_ids))
    if out_config.get("vocab_size") != n_rows:
        ok = False
        lines.append(f"config.json vocab_size {out_config.get('vocab_size')} != {n_rows}")
    worst = 0.0
    n_amb = 0
    for name, _ in FAMILY.tensor_specs():
        if name in VOCAB_TENSORS:
            ops = aligned_rows(case, vocabs, models, got_ids, name)
        else:
            ops = {lab: models[lab][name] for lab in case.inputs}
        if case.method != "linear" and "base" not in ops:
            ops["base"] = models["base"][name]
        ref, amb = reference_merge(case, ops, name)
        n_amb += amb
        scale = np.max(np.stack([np.abs(x.astype(np.float64)) for x in ops.values()]), axis=0)
        n_tok = len(got_ids)
        if name in VOCAB_TENSORS and scale.shape[0] > n_tok:
            # a padding row is a mean of the token rows: its rounding error is that of
            # their sum, so its scale is also the largest |value| of the inputs' aligned
            # token rows in that column (the summands)
            col = np.max(np.stack([np.abs(x[:n_tok].astype(np.float64)) for x in ops.values()]),
                         axis=(0, 1))
            scale[n_tok:] = np.maximum(scale[n_tok:], col)
        t = merged.get(name)
        if t is None or t.dtype != "F32" or t.shape != ref.shape:
            ok = False
            lines.append(f"{name}: mergekit wrote {t and (t.dtype, t.shape)}, expected F32{ref.shape}")
            continue
        b = t.f32().astype(np.float64)
        err = np.abs(b - ref)
        bound = np.maximum(np.abs(b), scale)
        rel = np.where(err == 0, 0.0, err / np.where(bound == 0, 1.0, bound))
        worst = max(worst, float(rel.max()))
        if (rel > F32_RTOL).any():
            ok = False
            j = np.unravel_index(int(np.argmax(rel)), rel.shape)
            lines.append(f"{name}{list(j)}: mergekit {b[j]!r}, reference {ref[j]!r} "
                         f"({rel[j]:.2e} of the scale; {int((rel > F32_RTOL).sum())} off)")
    if sorted(merged) != sorted(n for n, _ in FAMILY.tensor_specs()):
        ok = False
        lines.append("tensor names differ")
    return ok, lines, worst, n_amb


# --------------------------------------------------------------------------
# transformers: every folder loads and runs
# --------------------------------------------------------------------------

def transformers_check(folder: Path, rows: Optional[int] = None) -> str:
    """Load with LlamaForCausalLM and AutoTokenizer, encode PROBE_TEXT, run a forward
    pass; the logits must be finite and as wide as the tokenizer's vocabulary (or
    ``rows``, the padded vocabulary tensors)."""
    import torch
    import transformers

    torch.set_num_threads(1)
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = transformers.LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    ids = tok(PROBE_TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    n = len(tok.get_vocab())
    width = rows or n
    if (logits.shape[-1] != width or model.config.vocab_size != width
            or int(ids.max()) >= n or not torch.isfinite(logits).all()):
        raise SystemExit(f"{folder}: logits {tuple(logits.shape)}, tokenizer {n}, "
                         f"config {model.config.vocab_size}, rows {width}")
    return f"{n} tokens, {ids.shape[1]} ids, logits {tuple(logits.shape)}"


# --------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------

def run_mergekit(case_dir: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    exe = shutil.which("mergekit-yaml")
    cmd = [exe] if exe else [sys.executable, "-m", "mergekit.scripts.run_yaml"]
    cmd += ["mergekit.yml", str(out), "--quiet", "--no-cuda", "--random-seed", "0"]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    res = subprocess.run(cmd, cwd=case_dir, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        sys.stderr.write(res.stdout + res.stderr)
        raise SystemExit(f"mergekit failed on {case_dir.name}")


def write_golden_json(path: Path, case: Case, version: str, hashed: Set[str],
                      vocabs: Dict[str, Vocab], tok_json: dict) -> None:
    """golden.json, one entry per line.

    The head is make_golden.py's (``base``/``models``: the recipe's; ``sparsifier``,
    ``density``, ``cuts``: per tensor, each model's resolved density and the rank, in
    order of decreasing |delta|, where trim separates kept from dropped entries, over
    the output's shapes), then ``tokenizer`` (the recipe's value), ``vocab_size`` (the
    output tokens), ``padded_rows`` (cases with ``pad_to_multiple_of`` only: the rows of
    the vocabulary tensors, rows ``vocab_size`` on standing for no token),
    ``hash_ordered`` (tokens whose id mergekit took from a HashMap's iteration order:
    compare by token string) and ``tokens``: every output token in mergekit's id order
    as ``[id, token, {input folder: its id there}]``.
    """
    ids = mergekit_ids(tok_json)
    n_out = len(ids)
    n_rows = padded_rows(case, n_out)
    head = {
        "case": case.name,
        "description": case.description,
        "mergekit_version": version,
        "base": P(case.recipe_base),
        "models": [P(m) for m in case.recipe_models],
        "sparsifier": "trim" if case.method == "ties" else None,
    }
    density: Dict[str, List[float]] = {}
    cut_table: Dict[str, List[List[int]]] = {}
    if case.method == "ties":
        n_models = len(case.inputs) - 1
        for name, shape in FAMILY.tensor_specs():
            shape = (n_rows,) + shape[1:] if name in VOCAB_TENSORS else shape
            n = int(np.prod(shape))
            c = mg.keep_count(case.density, n)
            density[name] = [case.density] * n_models
            cut_table[name] = [[c] if 0 < c < n else [] for _ in range(n_models)]
    source = case.source if case.source in ("union", "base") else P(case.source)
    tail: Dict[str, object] = {
        "tokenizer": ({"source": source, "pad_to_multiple_of": case.pad_to_multiple_of}
                      if case.pad_to_multiple_of else source),
        "vocab_size": n_out,
    }
    if case.pad_to_multiple_of:
        tail["padded_rows"] = n_rows
    if case.token_rows:
        # token -> {"from": [input folder, its row] or null (zeros), "force": bool}
        def row_from(tok: str, src: Tuple):
            if src[0] == "zero":
                return None
            lab = src[1]
            row = {"model": lambda: vocabs[lab].ids[tok], "token": lambda: vocabs[lab].ids[src[2]],
                   "id": lambda: src[2]}[src[0]]()
            return [P(lab), row]
        tail["token_rows"] = {tok: {"from": row_from(tok, src), "force": force}
                              for tok, src, force in case.token_rows}
    tail["hash_ordered"] = sorted(hashed, key=lambda t: ids[t])

    def dumps(v: object) -> str:
        return json.dumps(v, ensure_ascii=False)

    def table(key: str, rows: Dict[str, object]) -> List[str]:
        if not rows:
            return [f"  {dumps(key)}: {{}},"]
        out = [f"  {dumps(key)}: {{"]
        items = list(rows.items())
        for idx, (name, val) in enumerate(items):
            sep = "," if idx + 1 < len(items) else ""
            out.append(f"    {dumps(name)}: {dumps(val)}{sep}")
        out.append("  },")
        return out

    lines = ["{"]
    lines += [f"  {dumps(k)}: {dumps(v)}," for k, v in head.items()]
    lines += table("density", density)
    lines += table("cuts", cut_table)
    lines += [f"  {dumps(k)}: {dumps(v)}," for k, v in tail.items()]
    lines.append('  "tokens": [')
    items = sorted(ids.items(), key=lambda kv: kv[1])
    for idx, (tok, i) in enumerate(items):
        where = {P(lab): vocabs[lab].ids[tok] for lab in LABELS if tok in vocabs[lab].ids}
        sep = "," if idx + 1 < len(items) else ""
        lines.append(f"    {dumps([i, tok, where])}{sep}")
    lines.append("  ]")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    json.loads(text)  # well-formed
    path.write_text(text)


def generate(out_root: Path, work: Path, verbose: bool = True,
             only: Optional[Sequence[str]] = None) -> bool:
    version = mg.mergekit_version()
    vocab_list = [build_vocab(s) for s in VOCABS]
    model_list = make_models(vocab_list)
    write_family(out_root, vocab_list, model_list)
    vocabs = dict(zip(LABELS, vocab_list))
    models = dict(zip(LABELS, model_list))
    all_ok = True
    report = []
    for label in LABELS:
        msg = transformers_check(out_root / FAMILY_NAME / label)
        report.append(f"{FAMILY_NAME}/{label:8s} {vocabs[label].size:3d} tokens; "
                      f"transformers: {msg}")
    unknown = set(only or ()) - {c.name for c in CASES}
    if unknown:
        raise SystemExit(f"no such case: {', '.join(sorted(unknown))}")
    for case in CASES:
        if only and case.name not in only:
            continue
        cdir = out_root / case.name
        if cdir.exists():
            shutil.rmtree(cdir)
        cdir.mkdir(parents=True)
        (cdir / "recipe.yaml").write_text(
            f"# golden case {case.name}: {case.description}\n"
            f"# equivalent mergekit config: mergekit.yml (made with mergekit {version})\n"
            + case.recipe.format(**PATHS))
        (cdir / "mergekit.yml").write_text(
            f"# golden case {case.name}: run from this folder with\n"
            f"#   mergekit-yaml mergekit.yml OUT --no-cuda   (mergekit {version})\n"
            + case.mergekit.format(**PATHS))
        out = work / f"mk_{case.name}"
        run_mergekit(cdir, out)
        merged = mg.read_model_dir(out)
        mg.write_safetensors(cdir / "expected.safetensors", merged,
                             {"format": "pt", "generator": f"mergekit {version}",
                              "case": case.name})
        for src, dst in EXPECTED_FILES.items():
            shutil.copyfile(out / src, cdir / dst)
        tok_json = json.loads((out / "tokenizer.json").read_text())
        out_config = json.loads((out / "config.json").read_text())
        _, hashed = reference_vocab(case, vocabs)
        write_golden_json(cdir / "golden.json", case, version, hashed, vocabs, tok_json)
        ok, lines, worst, n_amb = check_case(case, vocabs, models, merged, tok_json,
                                             out_config)
        n_rows = padded_rows(case, len(mergekit_ids(tok_json)))
        msg = transformers_check(out, n_rows)
        if not ok:
            all_ok = False
            print(f"[{case.name}] MISMATCH between mergekit and the reference:")
            for line in lines:
                print("   ", line)
        size = (cdir / "expected.safetensors").stat().st_size
        report.append(f"{case.name:24s} {'agree' if ok else 'DIFFER'}  vocab "
                      f"{len(mergekit_ids(tok_json)):3d}  rows {n_rows:3d}  worst {worst:.2e}  "
                      f"trim ties {n_amb}  expected {size / 1024:.1f} KiB; "
                      f"transformers: {msg}")
    if verbose:
        print(f"mergekit {version}")
        for line in report:
            print(line)
    return all_ok


# --------------------------------------------------------------------------
# --check: reproduce, up to the hash-ordered ids
# --------------------------------------------------------------------------

def relabel(fresh_tok: dict, committed_tok: dict) -> Optional[Dict[int, int]]:
    """fresh id -> committed id, by token string; None when the token sets differ."""
    a, b = mergekit_ids(fresh_tok), mergekit_ids(committed_tok)
    if set(a) != set(b):
        return None
    return {a[t]: b[t] for t in a}


def relabel_json(obj, name: str, pi: Dict[int, int]):
    """A parsed expected_* / golden.json file with every token id mapped through pi."""
    if name == "expected_tokenizer.json":
        obj = json.loads(json.dumps(obj))
        obj["model"]["vocab"] = {t: pi[i] for t, i in obj["model"]["vocab"].items()}
        for e in obj["added_tokens"]:
            e["id"] = pi[e["id"]]
        obj["added_tokens"].sort(key=lambda e: e["id"])
    elif name == "expected_tokenizer_config.json" and "added_tokens_decoder" in obj:
        # (transformers 5's save_pretrained, which mergekit calls, writes none)
        obj = dict(obj)
        dec = {str(pi[int(k)]): v for k, v in obj["added_tokens_decoder"].items()}
        obj["added_tokens_decoder"] = dict(sorted(dec.items(), key=lambda kv: int(kv[0])))
    elif name == "golden.json":
        obj = dict(obj)
        obj["tokens"] = sorted(([pi[i], t, w] for i, t, w in obj["tokens"]),
                               key=lambda r: r[0])
        order = {t: i for i, t, _ in obj["tokens"]}
        obj["hash_ordered"] = sorted(obj["hash_ordered"], key=lambda t: order[t])
    return obj


def same_up_to_ids(fresh: Path, committed: Path, rel: Path, pi: Dict[int, int]) -> bool:
    name = rel.name
    if name.endswith(".json"):
        a = relabel_json(json.loads(fresh.read_text()), name, pi)
        b = json.loads(committed.read_text())
        if name == "expected_tokenizer_config.json" or name == "expected_tokenizer.json":
            # dict order of the relabelled entries does not matter, their content does
            return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
        return a == b
    if name == "expected.safetensors":
        a, b = mg.read_safetensors(fresh), mg.read_safetensors(committed)
        if sorted(a) != sorted(b):
            return False
        for t in a:
            x, y = a[t], b[t]
            if x.dtype != y.dtype or x.shape != y.shape:
                return False
            xa, ya = x.raw.reshape(x.shape), y.raw.reshape(y.shape)
            if t in VOCAB_TENSORS:
                n = len(pi)
                moved = np.empty_like(xa)
                for i, j in pi.items():
                    moved[j] = xa[i]
                moved[n:] = xa[n:]  # padding rows stand for no token: not permuted
                xa = moved
                if x.shape[0] > n:
                    # means summed in the (hash-dependent) order of the token rows: to
                    # 1e-6 of max(|fresh|, |committed|, the largest |value| of the
                    # committed token rows in that column)
                    pa = x.f32()[n:].astype(np.float64)
                    pb = y.f32()[n:].astype(np.float64)
                    col = np.abs(y.f32()[:n].astype(np.float64)).max(axis=0)
                    bound = np.maximum(np.maximum(np.abs(pa), np.abs(pb)), col)
                    if (np.abs(pa - pb) > F32_RTOL * bound).any():
                        return False
                    xa, ya = xa[:n], ya[:n]
            if xa.tobytes() != ya.tobytes():
                return False
        return True
    return False


def check_committed(work: Path) -> bool:
    fresh = work / "fresh"
    ok = generate(fresh, work, verbose=False)
    same = True
    relabelled = []
    for f in sorted(fresh.rglob("*")):
        if f.is_dir():
            continue
        rel = f.relative_to(fresh)
        committed = DEFAULT_OUT / rel
        if committed.exists() and committed.read_bytes() == f.read_bytes():
            continue
        pi = None
        if committed.exists() and rel.parts[0] in {c.name for c in CASES}:
            pi = relabel(json.loads((fresh / rel.parts[0] / "expected_tokenizer.json").read_text()),
                         json.loads((DEFAULT_OUT / rel.parts[0] / "expected_tokenizer.json").read_text()))
        if pi is not None and same_up_to_ids(f, committed, rel, pi):
            relabelled.append(str(rel))
            continue
        print(f"differs from the committed fixture: {rel}")
        same = False
    for rel in relabelled:
        print(f"equal up to mergekit's hash-ordered token ids: {rel}")
    print("committed fixtures reproduce" if same else "committed fixtures DO NOT reproduce")
    return ok and same


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help="fixture folder (default: tests/fixtures/golden of this repo)")
    ap.add_argument("--check", action="store_true",
                    help="regenerate into a temporary folder and compare with the committed files")
    ap.add_argument("--only", nargs="+", metavar="CASE",
                    help="(re)make only these cases (the llama_vocab inputs are always written)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="reefknot-tokgolden-") as tmp:
        work = Path(tmp)
        if args.check:
            return 0 if check_committed(work) else 1
        ok = generate(args.out, work, only=args.only)
    if not ok:
        print("FAIL: mergekit and the independent reference disagree")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
