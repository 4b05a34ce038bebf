"""The run report: a self-contained ``report.html`` with the learning curves, the
distribution of predicted vs true test ratings, the per-user test error against
activity, and the ranking metrics next to the popularity baseline.

Everything plotted is aggregated in Spark first (histograms, per-user sums); the
driver only ever holds per-epoch metrics, histograms and per-user arrays. Figures
are drawn with matplotlib's Agg backend (no display needed) and embedded as PNG.
"""

from __future__ import annotations

import base64
import html
import io
import math

import numpy as np

FIGURES = ("learning_curves", "rating_distribution", "error_vs_activity")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    return plt, fig, ax


def _learning_curves(history) -> bytes:
    from matplotlib.ticker import MaxNLocator

    plt, fig, ax = _figure()
    epochs = [m.epoch for m in history]
    ax.plot(epochs, [m.train_rmse for m in history], "o-", label="train RMSE", ms=3)
    ax.plot(epochs, [m.test_rmse for m in history], "o-", label="test RMSE", ms=3)
    if any(not math.isnan(m.val_rmse) for m in history):
        ax.plot(epochs, [m.val_rmse for m in history], "o-", label="validation RMSE", ms=3)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("RMSE (rating units)")
    ax.set_title("Learning curves")
    ax.grid(alpha=0.3)
    ax.legend()
    png = _png(fig)
    plt.close(fig)
    return png


def _predicted_vs_true(diag: dict, bins: np.ndarray) -> bytes:
    """Mean prediction (and one standard deviation) per true test rating, over the
    share of test ratings at each true value."""
    plt, fig, ax = _figure()
    width = np.diff(bins)
    centers = bins[:-1] + width / 2
    n = diag["true_hist"].astype(np.float64)
    has = n > 0
    mean = np.divide(diag["pred_sum"], n, out=np.zeros_like(n), where=has)
    var = np.divide(diag["pred_sq"], n, out=np.zeros_like(n), where=has) - mean ** 2
    sd = np.sqrt(np.maximum(var, 0.0))
    lo, hi = bins[0] + width[0] / 2, bins[-1] - width[-1] / 2
    ax.plot([lo, hi], [lo, hi], color="0.6", lw=1, ls="--", label="perfect prediction")
    ax.errorbar(centers[has], mean[has], yerr=sd[has], fmt="o-", color="C3", ms=4,
                capsize=3, label="mean prediction ± 1 sd")
    ax.set_xlabel("true test rating")
    ax.set_ylabel("predicted rating")
    ax.set_ylim(lo - 0.25, hi + 0.25)
    share = ax.twinx()
    share.bar(centers[has], n[has] / max(1.0, n.sum()), width=width[has] * 0.8, alpha=0.25,
              color="C0")
    share.set_ylabel("share of test ratings (bars)")
    ax.set_zorder(share.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.set_title("Predicted vs true ratings (test split)")
    ax.legend(loc="upper left")
    png = _png(fig)
    plt.close(fig)
    return png


def _error_vs_activity(diag: dict, user_counts: np.ndarray) -> bytes:
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    plt, fig, ax = _figure()
    has = diag["user_n"] > 0
    n_train = user_counts[has]
    sse, cnt = diag["user_sse"][has], diag["user_n"][has]
    alpha = float(min(0.35, max(0.03, 300.0 / max(1, n_train.size))))
    ax.scatter(np.maximum(n_train, 0.8), np.sqrt(sse / cnt), s=4, alpha=alpha, color="C0",
               label="users")
    edges = np.unique(np.round(np.geomspace(1, max(2, n_train.max() + 1), 12)))
    mids, means = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        sel = (n_train >= a) & (n_train < b)
        if sel.any():
            mids.append(math.sqrt(a * b))
            means.append(math.sqrt(sse[sel].sum() / cnt[sel].sum()))
    ax.plot(mids, means, "o-", color="C3", label="RMSE of the bin")
    ax.set_xscale("log")
    lo_x, hi_x = max(0.8, n_train.min()), n_train.max()
    ax.set_xticks([t for m in (1, 10, 100, 1000, 10000, 100000) for t in (m, 2 * m, 5 * m)
                   if lo_x <= t <= hi_x * 1.2])
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("user's training ratings (log scale)")
    ax.set_ylabel("user's test RMSE")
    ax.set_title("Test error vs user activity")
    ax.legend()
    png = _png(fig)
    plt.close(fig)
    return png


def _objective_curve(history) -> bytes:
    from matplotlib.ticker import MaxNLocator

    plt, fig, ax = _figure()
    ax.plot([m.epoch for m in history], [m.objective for m in history], "o-", ms=3)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("objective")
    ax.set_title("Learning curve (the model's loss; it scores preferences, not ratings)")
    ax.grid(alpha=0.3)
    png = _png(fig)
    plt.close(fig)
    return png


def figures(history, diag: dict, bins: np.ndarray, user_counts: np.ndarray,
            rates: bool = True) -> dict:
    """The report's figures as PNG bytes, by name (for a model of preferences, such as
    implicit ALS, only its loss: rating errors do not apply)."""
    if not rates:
        return {"learning_curves": _objective_curve(history)}
    return {"learning_curves": _learning_curves(history),
            "rating_distribution": _predicted_vs_true(diag, bins),
            "error_vs_activity": _error_vs_activity(diag, user_counts)}


def _table(header, rows) -> str:
    h = "".join(f"<th>{html.escape(str(x))}</th>" for x in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def split_phrase(cfg) -> str:
    """How the test split is made, in words (the log and the report); ``cfg`` a
    JobConfig or its dict (model.json's ``job``)."""
    get = cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)
    if get("test") is not None:
        return f"the given test file {get('test')}"
    frac = float(get("test_fraction", 0.15))
    share, seed = f"{1 - frac:.0%}/{frac:.0%}", get("split_seed", 0)
    return {"random": f"train/test {share} by a seeded hash (seed {seed})",
            "user-fraction": f"train/test {share} of each user's ratings (seed {seed})",
            "temporal": f"train/test {share} by time (the latest ratings are the test)",
            "leave-last-n": f"each user's last {get('leave_last', 1)} rating(s) as the test"
            }.get(get("split", "random"), str(get("split")))


def _run_rows(meta: dict) -> list[list[str]]:
    """What was run: the input, when, the split, and where the time went."""
    job = meta.get("job", {})
    source = job.get("ratings") or f"built-in synthetic data {job.get('synthetic')!r}"
    split = split_phrase(job)
    if meta.get("data", {}).get("n_val"):
        split += f"; {float(job.get('validation_fraction', 0.0)):.0%} of training for validation"
    sec = meta.get("seconds", {})
    phases = ", ".join(f"{name} {sec[key]:.1f}s" for name, key in (
        ("prepare", "prepare"), ("pack", "setup"), ("train", "train"), ("top-k", "top_k"))
        if isinstance(sec.get(key), (int, float)))
    rows = [["input", source], ["run at (UTC)", str(meta.get("created", "unknown"))],
            ["split", split]]
    if job.get("warm_start"):
        rows.append(["warm start from", str(job["warm_start"])])
    return rows + ([["phases", phases]] if phases else [])


RANKING_KEYS = ("precision", "recall", "ndcg", "map", "mrr", "hit_rate", "coverage", "novelty")


def _ranking_html(ranking: dict | None, rates: bool = True) -> str:
    """The lists' metrics next to the popularity baseline's, at every k, by activity,
    and why a rating model alone ranks poorly (``rates`` False, implicit feedback: every
    held-out pair is relevant and there is no rating model)."""
    if not ranking:
        return "<p>Top-k was not computed (<code>--top-k 0</code>).</p>"
    m = ranking["model"]
    k = m["k"]
    by = ranking.get("ranked_by", "model")
    lists = ((by, "model"), ("most popular", "popular"))
    rows = [[name] + [f"{ranking[src][key]:.4f}" for key in RANKING_KEYS]
            for name, src in lists]
    head = ["", *[f"{x}@{k}" if x not in ("coverage", "novelty") else x for x in RANKING_KEYS]]
    at = _table(["", *[f"precision@{kk} / ndcg@{kk}" for kk in m["at"]]],
                [[name] + [f"{a['precision']:.4f} / {a['ndcg']:.4f}"
                           for a in ranking[src]["at"].values()] for name, src in lists])
    act = _table(["", *[f"{b} ({a['users']} users)" for b, a in m["by_activity"].items()]],
                 [[name] + [f"{a['precision']:.4f} / {a['ndcg']:.4f}"
                            for a in ranking[src]["by_activity"].values()]
                  for name, src in lists])
    said = (f"<p><b>{html.escape(ranking['verdict'][0].upper() + ranking['verdict'][1:])}"
            f".</b></p>" if ranking.get("verdict") else "")
    relevant = (f"relevant = test rating &ge; {m['relevance_threshold']}; over {m['users']} "
                f"users with a relevant test rating" if rates else
                f"every held-out pair is relevant; over {m['users']} users with a held-out pair")
    why = ("<p>Why a second model ranks the lists: a model fitted to observed ratings alone "
           "ranks rarely rated items with a few high ratings first, because ratings are "
           "missing not at random (people rate what they chose to see), so on its own it "
           "loses to the most-popular list. The ranking model also learns which items "
           "people choose; the predicted ratings still come from the rating model.</p>"
           if rates else "")
    return (said + f"<p>The lists are ranked by the <b>{html.escape(by)}</b> model. At k = {k}; "
            f"{relevant}.</p>" + _table(head, rows)
            + "<h3>At every k</h3>" + at
            + f"<h3>By user activity (precision@{k} / ndcg@{k}; light, medium, heavy = "
              "terciles of training ratings)</h3>" + act + why)


def render_html(meta: dict, figs: dict, ranking: dict | None, rates: bool = True) -> str:
    """report.html: self-contained (images inline), no scripts. ``rates``: the model
    predicts ratings (False for implicit ALS: no rating errors are shown)."""
    f = meta.get("final_metrics", {})
    d = meta.get("data", {})
    errors = [
        ["test RMSE / MAE", f"{f.get('test_rmse', float('nan')):.4f} / "
                            f"{f.get('test_mae', float('nan')):.4f}"],
        ["train RMSE / MAE", f"{f.get('train_rmse', float('nan')):.4f} / "
                             f"{f.get('train_mae', float('nan')):.4f}"],
        ["predicting the training mean", f"{meta.get('baseline_rmse', float('nan')):.4f}"],
    ] if rates else [
        ["RMSE / MAE", "not applicable: the model scores preferences (implicit feedback), "
                       "not ratings; it is judged by the ranking metrics below"]]
    summary = _table(["", "value"], [
        *_run_rows(meta),
        ["users x items", f"{d.get('n_users')} x {d.get('n_items')}"],
        ["training / test ratings", f"{d.get('n_train')} / {d.get('n_test')}"],
        ["model", f"{meta['fit']['model']} rank {meta['latent_rank']}, "
                  f"lambda_u {meta['fit']['lambda_u']}, lambda_v {meta['fit']['lambda_v']}, "
                  f"priors {meta['fit']['priors']}"],
        ["epochs run (reported)", f"{meta.get('epochs_run')} ({meta.get('best_epoch')})"],
        *errors,
    ])
    imgs = "".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,'
        f'{base64.b64encode(figs[name]).decode()}"/></figure>' for name in FIGURES
        if name in figs)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>pmf-spark report</title>
<style>body{{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 10px;
text-align:left}}figure{{display:inline-block;margin:0.5em}}img{{max-width:460px}}</style>
</head><body><h1>pmf-spark training report</h1>
<h2>Run</h2>{summary}
<h2>Figures</h2>{imgs}
<h2>Ranking on the test split</h2>{_ranking_html(ranking, rates)}
<p>{"Errors are in rating units. " if rates else ""}The popularity baseline recommends the
items with the most training ratings, excluding what each user already rated.</p>
</body></html>
"""
