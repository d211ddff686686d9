"""Regenerate ``even_insertions.json``: the searched insertion paths for even n (see decomposition.py).

Usage: ``python -m tasp_plugin.schedules.build_cache [MAX_N]`` (default 128). Existing entries are
kept; every entry is validated before it is written. The search is deterministic, so this reproduces the
shipped file.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from . import decomposition as deco
from .validation import validate_cycles


def main(argv: list[str] | None = None) -> int:
    """Search the missing even n up to MAX_N and write them to the package's cache file."""
    args = sys.argv[1:] if argv is None else argv
    max_n = int(args[0]) if args else 128
    target = Path(deco.__file__).with_name(deco._CACHE_FILE)
    cache = {int(k): v for k, v in json.loads(target.read_text()).items()} if target.exists() else {}
    for n in range(8, max_n + 1, 2):
        if n in cache:
            continue
        start = time.perf_counter()
        cache[n] = deco.find_insertion_path(n)
        deco._cached_insertion_paths.cache_clear()
        print(f"n={n}: {time.perf_counter() - start:.1f} s", flush=True)
        target.write_text(json.dumps({str(k): cache[k] for k in sorted(cache)}, separators=(",", ":")) + "\n")
    deco._cached_insertion_paths.cache_clear()
    for n in sorted(cache):
        validate_cycles(deco._even_cycles(n), n, complete=True)
    print(f"{len(cache)} entries valid in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
