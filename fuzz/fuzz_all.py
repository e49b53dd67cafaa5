"""``make fuzz``: every atheris target for FUZZ_RUNS runs, one process each; a summary.

Prints one line per target (runs, executions per second, new corpus units, crash or not),
then one JSON object as the last line. Exits 1 if any target crashed; the crashing inputs are
in ``.fuzz/`` (``<target>-crash-*``), replay one with ``python fuzz/run.py TARGET 1 .fuzz
.fuzz/<file>``... or feed it to the target in a test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import targets  # noqa: E402


def main() -> int:
    runs = int(os.environ.get("FUZZ_RUNS", "100000"))
    only = [t for t in os.environ.get("FUZZ_TARGETS", "").split() if t]
    crash_dir = HERE.parent / ".fuzz"
    results: dict[str, dict[str, object]] = {}
    for name in only or list(targets.TARGETS):
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, str(HERE / "run.py"), name, str(runs), str(crash_dir)],
            capture_output=True,
            text=True,
            check=False,
            timeout=3600,
        )
        seconds = time.monotonic() - started
        log = proc.stderr
        done = re.search(r"Done (\d+) runs", log)
        units = re.search(r"stat::new_units_added:\s+(\d+)", log)
        crashed = proc.returncode != 0
        results[name] = {
            "runs": int(done[1]) if done else None,
            "seconds": round(seconds, 1),
            "new_units": int(units[1]) if units else None,
            "crashed": crashed,
        }
        status = "CRASH" if crashed else "ok"
        print(f"{name:<16} runs {results[name]['runs']}  {seconds:7.1f} s  {status}", flush=True)
        if crashed:
            print("\n".join(log.splitlines()[-30:]), file=sys.stderr)
    crashes = sum(1 for r in results.values() if r["crashed"])
    print(json.dumps({"fuzz_runs_each": runs, "crashes": crashes, "targets": results}))
    return 1 if crashes else 0


if __name__ == "__main__":
    raise SystemExit(main())
