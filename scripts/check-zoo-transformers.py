#!/usr/bin/env python3
"""Loads a zoo model with Hugging Face transformers and prints greedy continuations, to compare
with `reparam generate zoo:NAME --prompt P -n 12` (they should be identical).

usage: pip install torch transformers && scripts/check-zoo-transformers.py [assets/zoo/multi]
"""
import sys

import torch
import transformers

PROMPTS = ["reverse: cat dog map ->", "brackets: ( [ ->", "the cats that see"]


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "assets/zoo/multi"
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=d + "/tokenizer.json")
    model = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    bos = tok.convert_tokens_to_ids("<s>")
    for prompt in PROMPTS:
        ids = [bos] + tok.encode(prompt, add_special_tokens=False)
        out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)
        print(prompt + tok.decode(out[0][len(ids):]).split("\n")[0])


if __name__ == "__main__":
    main()
