#!/usr/bin/env python3
"""Rebuild `moejit tune` config tables from its log: the device tool returns no file whose name holds '=' or ','
(every table's name does), but the log lines ``M=…: best … us {config}; heuristic … us (…x the best)`` carry
everything a table holds.

    python scripts/tables_from_tune_log.py tune.log --device NVIDIA_H200 [--out moejit/triton/configs] [--merge]

With ``--merge`` the batch sizes of the log are added to a table that exists already (its other entries kept).

The log must hold the lines ``tuning on <GPU> …`` and ``wrote …/<table file name>`` that ``moejit tune`` prints:
each table is rebuilt under the name it was written with (several shapes and modes per log are fine).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moejit.triton.tune import write_table  # noqa: E402

BEST = re.compile(r"M=(\d+): best ([\d.]+) us (\{.*?\}); heuristic (?:([\d.]+) us\s*\(([\d.]+)x|did not run)", re.S)
NAME = re.compile(r"wrote \S*/(E=(\d+),N=(\d+),K=(\d+),topk=(\d+),device_name=[^,]+,dtype=([^,]+),quant=(\S+)\.json)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("--device", required=True, help="the GPU's name as the log's `tuning on` line gives it")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "moejit/triton/configs")
    parser.add_argument("--merge", action="store_true", help="add the log's batch sizes to an existing table")
    args = parser.parse_args()
    written: set[Path] = set()
    text = re.sub(r"\s*\n\s*", " ", args.log.read_text())  # rich wraps long lines
    start = 0
    for name in NAME.finditer(text):
        table, ratios = {}, {}
        for m, _, cfg, _, ratio in BEST.findall(text[start:name.start()]):
            table[int(m)] = ast.literal_eval(cfg)
            if ratio:
                ratios[int(m)] = float(ratio)
        start = name.end()
        if not table:
            continue
        e, n, k, topk = (int(name.group(i)) for i in range(2, 6))
        meta = dict(device=args.device.replace("_", " "), E=e, N=n, K=k, topk=topk, dtype=name.group(6),
                    quant=name.group(7), tool="moejit tune", note=f"rebuilt from the tune log {args.log.name}")
        path = args.out / name.group(1).replace(" ", "")  # a wrap inside the name (names hold no spaces)
        if path in written:  # the log names each table twice (the cache and --output)
            continue
        if path.exists():
            if not args.merge:
                print(f"kept {path} (--merge adds the log's batch sizes to it)")
                continue
            old = json.loads(path.read_text())
            meta = dict(old.get("_meta", meta), note=f"{old.get('_meta', {}).get('note', '')}; merged "
                        f"{args.log.name}".lstrip("; "))
            table = {**{int(m): c for m, c in old.items() if not m.startswith("_")}, **table}
            ratios = {**{int(m): r for m, r in old.get("_heuristic", {}).items()}, **ratios}
        write_table(table, path, meta, ratios)
        written.add(path)
        print(f"wrote {path}: M = {sorted(table)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
