#!/usr/bin/env python3
"""Which points of a mixed search's predicted front no single-family front dominates.

Reads `reparam search --json` outputs from one directory: the mixed searches given as
arguments after the directory, and every other `*.json` there as a single-family front. A
point's families come from its recipe (quantization: shift-add, RTN or the embedding step;
pruning; RPS; depth: a flatten or drop step). Prints, per mixed search, its front points that
use more than one family and that no single-family point dominates on (bytes, predicted KLD).

usage: search-families.py DIR MIXED.json [MIXED.json ...]
"""
import json
import os
import sys


def families(recipe):
    out = set()
    if recipe.get("embedding"):
        out.add("quantization")
    if recipe.get("flatten"):
        out.add("depth")
    for rule in recipe.get("layers", []):
        if "shiftadd" in rule or "rtn" in rule or rule.get("f16"):
            out.add("quantization")
        if "prune" in rule:
            out.add("pruning")
        if "rps" in rule:
            out.add("rps")
    return out


def dominates(a, b):
    return a[0] <= b[0] and a[1] <= b[1] and (a[0] < b[0] or a[1] < b[1])


def main():
    d, mixed = sys.argv[1], sys.argv[2:]
    singles = {}
    for name in sorted(os.listdir(d)):
        if name.endswith(".json") and name not in mixed:
            front = json.load(open(os.path.join(d, name)))["front"]
            singles[name] = [(p["bytes"], p["kld_mean"]) for p in front]
    print("| search | bytes | predicted KLD | families | best single-family KLD within the bytes | summary |")
    print("|---|---|---|---|---|---|")
    for name in mixed:
        for p in json.load(open(os.path.join(d, name)))["front"]:
            fams = families(p["recipe"])
            point = (p["bytes"], p["kld_mean"])
            if len(fams) < 2:
                continue
            if any(dominates(q, point) for front in singles.values() for q in front):
                continue
            within = [
                (q[1], s) for s, front in singles.items() for q in front if q[0] <= point[0]
            ]
            best = min(within, default=(float("inf"), "none"))
            print(
                f"| {name} | {p['bytes']:,} | {p['kld_mean']:.4f} | {'+'.join(sorted(fams))} | "
                f"{best[0]:.4f} ({best[1]}) | {p['summary']} |"
            )


if __name__ == "__main__":
    main()
