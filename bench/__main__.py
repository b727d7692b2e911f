"""``python -m bench`` (``make bench``): every benchmark, one after the other.

Each runs in its own process: the server and dashboard benchmarks configure Django
for a scratch PostgreSQL database of their own.
"""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = (
    "bench_client",
    "bench_langchain",
    "bench_server",
    "bench_delivery",
    "bench_dashboard",
    "bench_caps",
)


def main() -> int:
    failed = []
    for name in BENCHMARKS:
        print(f"\n=== bench.{name} ===", flush=True)
        if subprocess.run([sys.executable, "-m", f"bench.{name}"], check=False).returncode:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
