"""How long the bounded-JSON check takes over a megabyte of hostile input (the event loop runs it).

    python -m bench.json_check

Best of `--runs` per document (a shared CPU may stall any one run); the target is under 100 ms each,
where the quadratic check it replaced took seconds for 64 KB. JSON with the command line goes under
bench/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from pathlib import Path

from bench.result_file import save
from server.bounded_json import parse_json
from server.testing.hostile_json import HOSTILE_JSON

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.json_check", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    best_ms = {}
    for name, raw in HOSTILE_JSON.items():
        timings = []
        for _ in range(args.runs):
            started = time.perf_counter()
            with contextlib.suppress(ValueError):
                parse_json(raw)
            timings.append(time.perf_counter() - started)
        best_ms[name] = round(min(timings) * 1000, 2)
    result = {
        "command": " ".join(["python -m bench.json_check", *argv]),
        "device": platform.processor() or platform.machine(),
        "bytes": {name: len(raw) for name, raw in HOSTILE_JSON.items()},
        "best_ms": best_ms,
        "under_100_ms": all(ms < 100 for ms in best_ms.values()),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    save(args.out, result, "json-check")
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
