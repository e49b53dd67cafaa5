"""Run one atheris target for N runs: ``python fuzz/run.py TARGET RUNS [CRASH_DIR]``.

libFuzzer exits the process when done (0: no crash; a crash leaves ``crash-*`` in
CRASH_DIR, default ``.fuzz/``), so ``make fuzz`` runs each target in its own process.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports():
    import targets


def main() -> None:
    name, runs = sys.argv[1], int(sys.argv[2])
    crashes = Path(sys.argv[3] if len(sys.argv) > 3 else ".fuzz").absolute()
    crashes.mkdir(parents=True, exist_ok=True)
    target = targets.TARGETS[name]
    corpus = Path(tempfile.mkdtemp(prefix=f"meshssh-fuzz-{name}-"))
    targets.write_seeds(corpus, name)
    atexit.register(shutil.rmtree, corpus, True)
    argv = [
        sys.argv[0],
        f"-runs={runs}",
        f"-artifact_prefix={crashes}/{name}-",
        "-max_len=4096",
        "-print_final_stats=1",
        str(corpus),
    ]
    atheris.Setup(argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
