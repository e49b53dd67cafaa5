"""``make test`` runs pytest in parallel and fails on every pytest exit code but 0.

Real ``make`` on this checkout, with lint and type-check marked done (``-o``) and pytest told
to select nothing in one small directory: pytest exits 5 ("no tests collected"), and ``make``
must fail with it rather than pass an empty run as green.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from meshssh_testkit.plugin import need_tool
from meshssh_testkit.process import run_command_sync

ROOT = Path(__file__).resolve().parents[2]


def make_test(*args: str) -> tuple[int, str]:
    need_tool(shutil.which("make") is not None, "make")
    result = run_command_sync(
        "make",
        "--no-print-directory",
        "-C",
        str(ROOT),
        "-o",
        "lint",
        "-o",
        "typecheck",
        "test",
        *args,
        timeout=120,
    )
    return result.returncode, result.out + result.err


def test_make_test_runs_pytest_with_xdist_workers() -> None:
    code, out = make_test("-n", "T=tests/layout -k no_such_test")  # -n: print, do not run
    assert code == 0, out
    assert "pytest -q -n 3 --dist loadgroup tests/layout -k no_such_test" in out


def test_an_empty_selection_fails_make_test() -> None:
    # No workers (-n 0) is enough to see the exit code, and starts fastest.
    code, out = make_test("WORKERS=0", "T=tests/layout -p no:cacheprovider -k no_such_test")
    assert code != 0, out
    assert "Error 5" in out
