"""Accepting a 1,000,000-task array: seconds to validate and store it, and peak RSS.

    python3 benchmarks/submit_scale.py [--tasks 1000000]

Runs in a fresh child process so the RSS figure is the submission's own. The baseline
in the same run is the same child loading an empty one-task spec (interpreter, imports).
Targets: <= 30 s and <= 1 GiB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import report

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
t0 = time.perf_counter()
from batchpool.spec import load_spec
from batchpool.store import Store
t1 = time.perf_counter()
spec = load_spec(sys.argv[1])
job = Store(Path(sys.argv[2])).submit(spec, "local")
t2 = time.perf_counter()
print(json.dumps({"imports": t1 - t0, "accept": t2 - t1, "tasks": sum(g.size for g in spec.tasks),
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(n: int, tmp: Path) -> dict[str, float]:
    spec = tmp / f"big{n}.toml"
    spec.write_text(f'name = "big"\n[[tasks]]\nid = "a"\ncommand = "true"\narray = "0-{n - 1}"\n')
    out = subprocess.run([sys.executable, "-c", CHILD, str(spec), str(tmp / f"db{n}.sqlite")],
                         check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = measure(1, Path(tmp))
        big = measure(args.tasks, Path(tmp))
    print(f"# submit a {big['tasks']:,.0f}-task array")
    report("seconds to accept (load + validate + store)", big["accept"], "s", "target <= 30")
    report("peak RSS", big["rss_mib"], "MiB", "target <= 1024")
    report("baseline: 1-task spec, seconds to accept", base["accept"], "s")
    report("baseline: 1-task spec, peak RSS", base["rss_mib"], "MiB")


if __name__ == "__main__":
    main()
