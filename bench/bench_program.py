"""Prints how long the pure core and the mocked program take, as medians of repeated runs.

Usage: .venv/bin/python bench/bench_program.py [--runs N]
Figures: render_bundle (settings -> bundle), bundle_tarball (what the copy step sends), and a whole
program run under mocks with examples/Pulumi.example.yaml (what every unit test that runs the program
pays), with the tests' settings: placeholders allowed, no public-address lookup.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GITEA_STACK_ALLOW_PLACEHOLDERS", "1")
os.environ.setdefault("GITEA_STACK_CHECKIP_URL", "off")

from gitea_stack.bundle import bundle_tarball  # noqa: E402
from tests.harness.bundles import render, variant  # noqa: E402
from tests.harness.pulumi_mocks import run_program, stack_file_config  # noqa: E402


def median_ms(action, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    settings = variant("example")
    rendered = render(settings)
    config = stack_file_config()
    run_program(config)  # warm imports and provider modules once
    figures = {
        "render_bundle": median_ms(lambda: render(settings), runs * 10),
        "bundle_tarball": median_ms(lambda: bundle_tarball(rendered), runs * 10),
        "program under mocks": median_ms(lambda: run_program(config), runs),
    }
    size = len(bundle_tarball(rendered))
    print(f"median of runs ({runs} program runs, {runs * 10} of the others):")
    for name, value in figures.items():
        print(f"  {name:22s} {value:8.1f} ms")
    print(f"  bundle tarball size    {size / 1024:8.1f} KiB ({len(rendered)} files)")


if __name__ == "__main__":
    main()
