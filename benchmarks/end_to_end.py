"""Wall time of the whole job against an MLlib ALS spark-submit script doing the same
work, back to back, from process start to exit.

    .venv/bin/python benchmarks/end_to_end.py [--data ../shared/data/ml-100k/u.data] [--repeats 3]

Runs, alternating, ``./spark-submit.sh jobs/train_pmf.py --ratings DATA`` (the
defaults: validation, split, the rating and the ranking model, 20 epochs, top-10 with
ranking metrics next to the popularity baseline, report, manifest) and
``./spark-submit.sh benchmarks/mllib_job.py`` (read, seeded split, ALS with 20
iterations, RMSE, top-10 unseen items, Parquet). Records each run's wall seconds and
our job's own phase timings (from model.json), and writes
benchmarks/results/end-to-end-<data>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, machine, md_table, ml100k_dir, write_results  # noqa: E402


def run(cmd: list[str]) -> tuple[float, str]:
    env = {**os.environ, "PYSPARK_PYTHON": str(ROOT / ".venv" / "bin" / "python")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}"
                         f"{proc.stderr[-2000:]}")
    return seconds, proc.stdout + proc.stderr


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ml100k_dir() / "u.data"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--extra", default="", help="more flags for our job, space-separated")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="e2e-"))
    ours, mllib, phases = [], [], []
    for n in range(args.repeats):
        out = tmp / f"ours-{n}"
        secs, _ = run(["./spark-submit.sh", "jobs/train_pmf.py", "--ratings", args.data,
                       "--output", str(out), *args.extra.split()])
        ours.append(secs)
        meta = json.loads((out / "model.json").read_text())
        phases.append(meta.get("seconds", {}))
        secs_m, text = run(["./spark-submit.sh", "benchmarks/mllib_job.py", "--ratings",
                            args.data, "--output", str(tmp / f"mllib-{n}")])
        mllib.append(secs_m)
        print(f"run {n + 1}: pmf-spark {secs:.1f}s  mllib script {secs_m:.1f}s", flush=True)
    ratio = statistics.median(ours) / statistics.median(mllib)
    last = phases[-1]
    phase_rows = [[k, f"{v:.1f}"] for k, v in last.items() if isinstance(v, (int, float))]
    info = machine()
    name = Path(args.data).parent.name
    md = (f"# End to end on {Path(args.data).name}: pmf-spark job vs an MLlib ALS script\n\n"
          + md_table(["run", "median s", "runs (s)"],
                     [["pmf-spark train_pmf.py (defaults)", f"{statistics.median(ours):.1f}",
                       ", ".join(f"{x:.1f}" for x in ours)],
                      ["MLlib ALS script", f"{statistics.median(mllib):.1f}",
                       ", ".join(f"{x:.1f}" for x in mllib)]])
          + f"\nRatio (ours / MLlib): **{ratio:.2f}x**, back to back, alternating.\n\n"
          + "Our phases (last run, model.json `seconds`):\n\n"
          + md_table(["phase", "s"], phase_rows)
          + f"\nMeasured {info['date']} on {info['cpu']}, {info['cores']} cores, Spark "
            f"{info['pyspark']}.\n")
    write_results(f"end-to-end-{name}", {"data": args.data, "ours": ours, "mllib": mllib,
                                         "ratio": ratio, "phases": phases, "machine": info},
                  md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
