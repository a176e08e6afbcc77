"""Make the pruned JIT cache a device call carries: the current build of every module for one arch, copied from a
full local cache (`.so` + `build.json` only; stale builds left out, so it stays far under the 64 MiB a call takes).

    MOEJIT_CACHE_DIR=$PWD/.jitcache_90a moejit build --arch 90a -j 2
    MOEJIT_CACHE_DIR=$PWD/.jitcache_90a python scripts/dev_cache.py [--arch 90a] [--out .jitcache_dev]
"""

import argparse
import shutil
from pathlib import Path

from moejit.jit import MODULES, builder
from moejit.jit.paths import cache_root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="90a")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / ".jitcache_dev")
    parser.add_argument("--module", action="append", default=None,
                        help="only this module (repeatable; default: every module for the arch)")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    for name, module in MODULES.items():
        if not module.supports(args.arch) or (args.module and name not in args.module):
            continue
        plan = builder.plan(name, args.arch)
        if not plan.is_built():
            raise SystemExit(f"{name} is not built for sm_{args.arch} in {cache_root()}: run moejit build")
        dst = args.out / name / f"sm_{plan.arch}" / plan.key  # the cache's own layout
        dst.mkdir(parents=True)
        for f in (plan.library, plan.out_dir / "build.json"):
            shutil.copy2(f, dst / f.name)
        print(f"{name:10s} {plan.key}")


if __name__ == "__main__":
    main()
