"""How long ``taskhook --help`` and ``taskhook --version`` take, as a user starts them.

Like hyperfine: each case runs N times (20) as a fresh process, and the median and p90 of
the wall times are printed. ``--help`` runs cold (the plugin-command cache removed before
each run, so the plugins and the app are loaded, as every run did before the cache) and warm
(the cache written by a first run); ``--version`` never needs it. A bare ``python -c pass``
is the floor any Python command pays. Every run has a clean environment (PATH, and HOME and
XDG_CACHE_HOME in a temporary folder) and a temporary working folder (no ./taskhook.toml).

    .venv/bin/python bench/cli_startup.py [--runs 20] [--taskhook .venv/bin/taskhook]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def sample(
    runs: int, run: Callable[[], float], before: Callable[[], None] = lambda: None
) -> list[float]:
    times = []
    for _ in range(runs):
        before()
        times.append(run())
    return times


def p90(times: list[float]) -> float:
    return statistics.quantiles(times, n=10, method="inclusive")[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--taskhook", default=str(ROOT / ".venv" / "bin" / "taskhook"))
    options = parser.parse_args()
    taskhook = options.taskhook
    python = str(Path(taskhook).with_name("python"))
    with tempfile.TemporaryDirectory(prefix="taskhook-startup-") as tmp:
        home, cwd = Path(tmp) / "home", Path(tmp) / "work"
        home.mkdir()
        cwd.mkdir()
        cache = home / ".cache"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
               "XDG_CACHE_HOME": str(cache)}  # fmt: skip

        def forget() -> None:
            shutil.rmtree(cache, ignore_errors=True)

        def run(*argv: str) -> Callable[[], float]:
            return lambda: timed(list(argv), env, cwd)

        cases = {"python -c pass": sample(options.runs, run(python, "-c", "pass"))}
        cases["--help, cold cache"] = sample(options.runs, run(taskhook, "--help"), forget)
        timed([taskhook, "--help"], env, cwd)  # writes the cache
        cases["--help, warm cache"] = sample(options.runs, run(taskhook, "--help"))
        cases["--version"] = sample(options.runs, run(taskhook, "--version"))
    print(f"{'case':<22} {'median':>9} {'p90':>9} {'min':>9}   ({options.runs} runs each, "
          f"{sys.platform}, {os.cpu_count()} CPUs)")  # fmt: skip
    for name, times in cases.items():
        print(f"{name:<22} {statistics.median(times) * 1000:>7.0f}ms {p90(times) * 1000:>7.0f}ms "
              f"{min(times) * 1000:>7.0f}ms")  # fmt: skip


if __name__ == "__main__":
    main()
