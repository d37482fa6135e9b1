"""Run every benchmark in bench/ (bench_*.py), one after the other, then copy their
markdown reports (bench/results/*.md) into the README between the BENCH markers.

    python bench/run_all.py            # all benchmarks, default sizes
    python bench/run_all.py --quick    # small sizes, for a smoke run
    python bench/run_all.py --readme-only   # just refresh the README from bench/results
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
README = BENCH_DIR.parent / "README.md"
BEGIN, END = "<!-- BENCH:BEGIN -->", "<!-- BENCH:END -->"


def refresh_readme() -> None:
    reports = sorted(RESULTS.glob("*.md"))
    # Reports start with their own "# Title": nest them under the README's section. Their
    # images sit beside them in bench/results, the README one level up.
    results = RESULTS.relative_to(README.parent).as_posix()
    body = "\n\n".join(
        re.sub(r"(!\[[^\]]*\]\()([^)/]+\))", rf"\1{results}/\2",
               re.sub(r"^#{1,2} ", "### ", report.read_text().strip(), flags=re.M))
        for report in reports) or "_no results yet: run `make bench`_"
    text = README.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{README} has no {BEGIN} ... {END} section")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{BEGIN}\n{body}\n{END}{tail}")
    print(f"README benchmark section refreshed from {len(reports)} report(s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="pass --quick to each benchmark")
    parser.add_argument("--readme-only", action="store_true")
    args = parser.parse_args()
    failed = []
    if not args.readme_only:
        for script in sorted(BENCH_DIR.glob("bench_*.py")):
            print(f"\n=== {script.name}", flush=True)
            command = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
            if subprocess.call(command, cwd=BENCH_DIR.parent) != 0:
                failed.append(script.name)
    refresh_readme()
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
