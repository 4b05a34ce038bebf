"""How many epochs a warm start saves when ratings are added.

    .venv/bin/python benchmarks/warm_start.py [--data ml-100k|small|ml-1m|ml-10m]
        [--new-fraction 0.05] [--epochs 20] [--tolerance 0.001] [--out DIR]

The training job's seeded 85/15 split of the data (seed 0). A share of all ratings
(``--new-fraction``, by a seeded hash of (user, item)) is held back as "new": the
previous model is trained on the rest for ``--epochs`` epochs and saved. Then the
training ratings with the new ones added are fitted twice for ``--epochs`` epochs:
from the usual seeded initial draw (cold) and from the previous model's factors
(``--warm-start``: persisting ids keep theirs, new ids start at the prior mean). The
test split is the same for both (a new rating that falls in it is a test rating of
both). Reported per epoch: test RMSE of cold and warm; and the epochs each needs to
come within ``--tolerance`` of the cold run's final test RMSE.

Writes benchmarks/results/warm-start-<data>.{json,md} (or into --out).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, md_table, ml100k_dir, session  # noqa: E402


def load(spark, data: str):
    from pmf_spark.config.params import JobConfig
    from pmf_spark.inputs.read import load_ratings
    from pmf_spark.train.job import load_inputs

    if data == "ml-100k":
        return load_ratings(spark, str(ml100k_dir() / "u.data"))
    clean, _ = load_inputs(spark, JobConfig(synthetic=data))
    return clean


def epochs_to_reach(history, target: float, tolerance: float) -> int | None:
    for m in history:
        if m.test_rmse <= target + tolerance:
            return m.epoch
    return None


def run(args) -> dict:
    from pmf_spark.config.params import JobConfig, PMFParams
    from pmf_spark.prepare.ratings import prepare, split_column
    from pmf_spark.train.job import write_outputs
    from pmf_spark.train.loop import Trainer
    from pmf_spark.train.warmstart import warm_start_state

    spark = session("pmf-spark warm start benchmark")
    params = PMFParams.of(epochs=args.epochs)
    clean = load(spark, args.data)
    is_new = split_column(args.seed + 104729, args.new_fraction)
    common = dict(test_fraction=0.15, split_seed=0, on_duplicate="latest")
    t0 = time.perf_counter()
    old = prepare(clean, None, keep=~is_new, **common)
    old_trainer = Trainer(spark, old, params)
    old_state = old_trainer.fit()
    model_dir = Path(args.workdir) / "previous"
    write_outputs(spark, JobConfig(output=str(model_dir), top_k=0, report=False), old_trainer,
                  old_state, {}, old_trainer.final_metrics(old_state))
    old_trainer.release()
    old.release()
    t_old = time.perf_counter() - t0
    full = prepare(clean, None, **common)
    trainer = Trainer(spark, full, params)
    runs = {}
    for name in ("cold", "warm"):
        t1 = time.perf_counter()
        state = warm_start_state(spark, str(model_dir), trainer) if name == "warm" else None
        state = trainer.fit(state)
        runs[name] = {"test_rmse": [m.test_rmse for m in state.history],
                      "seconds": time.perf_counter() - t1, "history": state.history}
    target = runs["cold"]["test_rmse"][-1]
    out = {"data": args.data, "new_fraction": args.new_fraction, "epochs": args.epochs,
           "tolerance": args.tolerance, "n_train": full.n_train, "n_test": full.n_test,
           "n_train_previous": old.n_train, "previous_seconds": t_old, "target_rmse": target,
           "machine": machine(spark)}
    for name, r in runs.items():
        out[name] = {"test_rmse": r["test_rmse"], "seconds": r["seconds"],
                     "epochs_to_target": epochs_to_reach(r.pop("history"), target,
                                                         args.tolerance)}
    out["users"] = {"previous": old.n_users, "now": full.n_users}
    out["items"] = {"previous": old.n_items, "now": full.n_items}
    trainer.release()
    full.release()
    spark.stop()
    return out


def markdown(res: dict) -> str:
    rows = [[e + 1, f"{c:.4f}", f"{w:.4f}"] for e, (c, w) in
            enumerate(zip(res["cold"]["test_rmse"], res["warm"]["test_rmse"]))]
    saved = res["cold"]["epochs_to_target"], res["warm"]["epochs_to_target"]
    return (f"# Warm start after adding {res['new_fraction']:.0%} new ratings ({res['data']})\n\n"
            f"{res['n_train_previous']:,} training ratings before, {res['n_train']:,} after; "
            f"test split {res['n_test']:,} ratings. Target: the cold run's final test RMSE "
            f"{res['target_rmse']:.4f} (+ {res['tolerance']}).\n\n"
            f"Epochs to reach it: cold {saved[0]}, warm {saved[1]}.\n\n"
            + md_table(["epoch", "cold test RMSE", "warm test RMSE"], rows)
            + f"\n{res['machine']['date']}, {res['machine']['cpu']}, "
              f"{res['machine']['cores']} cores, pyspark {res['machine']['pyspark']}.\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="ml-100k", choices=("ml-100k", "small", "ml-1m", "ml-10m"))
    p.add_argument("--new-fraction", type=float, default=0.05)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--tolerance", type=float, default=0.001)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="results directory (default: benchmarks/results)")
    args = p.parse_args(argv)
    from pmf_spark.storage.hadoop import dumps

    from common import RESULTS

    with tempfile.TemporaryDirectory() as work:
        args.workdir = work
        res = run(args)
    dest = Path(args.out) if args.out else RESULTS
    dest.mkdir(parents=True, exist_ok=True)
    name = f"warm-start-{args.data}"
    (dest / f"{name}.json").write_text(dumps(res))
    (dest / f"{name}.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
