"""One user's top 10 without Spark, from process start to answer, on a model of
MovieLens 10M's shape (69,878 users x 10,677 items, ~10 M ratings, rank 30).

    .venv/bin/python benchmarks/serve_one_user.py [--repeats 5]

Writes the model directory in the training job's layout with pyarrow (the builder the
tests use at a tenth of this size), then runs ``jobs/recommend.py --model M --user U
--items movies.dat`` as a new process ``--repeats`` times, checks each answer against a
brute-force top 10 computed with pandas and numpy, and prints the seconds; writes
benchmarks/results/serve-one-user-ml-10m.{json,md}.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, md_table, write_results  # noqa: E402
from helpers import ML10M_SHAPE, brute_force_top_k, shaped_model  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pmf-serve-") as tmp:
        root = Path(tmp) / "model"
        t0 = time.perf_counter()
        info = shaped_model(root, *ML10M_SHAPE)
        built = time.perf_counter() - t0
        print(f"model of {info['n_ratings']:,} ratings written in {built:.1f}s", flush=True)
        rows, seconds = [], []
        for r in range(args.repeats):
            user = int(info["users"][(12345 + 7919 * r) % len(info["users"])])
            cmd = [sys.executable, str(ROOT / "jobs" / "recommend.py"), "--model", str(root),
                   "--user", str(user), "--items", str(root.parent / "movies.dat")]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            s = time.perf_counter() - t0
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return 1
            block = proc.stdout.split("Top 10 recommendations")[1].strip().splitlines()
            at = block[1].split().index("item")
            shown = [int(ln.split()[at]) for ln in block[2:]]
            same = shown == brute_force_top_k(root, user, 10)
            seconds.append(s)
            rows.append([r + 1, user, f"{s:.2f}", "yes" if same else "NO"])
            print(f"run {r + 1}: user {user} answered in {s:.2f}s (brute force agrees: {same})",
                  flush=True)
            if not same:
                return 1
    md = (f"One user's top 10 from `jobs/recommend.py --model M --user U --items movies.dat`, "
          f"a new process each time, on a model of {info['n_ratings']:,} ratings "
          f"(MovieLens 10M's shape, rank 30): best {min(seconds):.2f}s, median "
          f"{sorted(seconds)[len(seconds) // 2]:.2f}s.\n\n"
          + md_table(["run", "user", "seconds", "equals brute force"], rows))
    print(md)
    write_results("serve-one-user-ml-10m", {"seconds": seconds, "n_ratings": info["n_ratings"],
                                            "machine": machine()}, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
