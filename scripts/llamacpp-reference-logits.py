#!/usr/bin/env python3
"""Writes llama.cpp's logits for the first tokens of a text, as the reference our parity test
(`tests/smollm2.rs`) compares against.

llama.cpp is driven through llama-cpp-python's ctypes bindings. To avoid a second llama.cpp
build, point LLAMA_CPP_LIB_PATH at the libllama.so that scripts/llamacpp-peer.sh built and
put the sdist's `llama_cpp` package on PYTHONPATH (scripts/llamacpp-parity.sh does both).

usage: llamacpp-reference-logits.py MODEL.gguf TEXT OUT.json [--tokens 64] [--top 32]
"""
import argparse
import json

import llama_cpp
import numpy as np

POSITIONS = [0, 1, 2, 7, 15, 31, 47, 63]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("text")
    ap.add_argument("out")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--top", type=int, default=32)
    args = ap.parse_args()

    llm = llama_cpp.Llama(
        model_path=args.model,
        n_ctx=256,
        n_batch=args.tokens,
        n_threads=2,
        logits_all=True,
        verbose=False,
    )
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)[: args.tokens]
    llm.eval(tokens)
    scores = np.asarray(llm.scores[: len(tokens)], dtype=np.float32)
    rows = []
    for p in POSITIONS:
        if p >= len(tokens):
            continue
        top = np.argsort(-scores[p])[: args.top]
        rows.append(
            {
                "position": p,
                "ids": [int(i) for i in top],
                "logits": [float(scores[p, i]) for i in top],
            }
        )
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(
            {
                "source": "llama.cpp (llama-cpp-python %s) on %s"
                % (llama_cpp.__version__, args.model.split("/")[-1]),
                "tokens": tokens,
                "rows": rows,
            },
            f,
            indent=1,
        )


if __name__ == "__main__":
    main()
