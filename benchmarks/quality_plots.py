"""The two figures of the quality study, drawn from the pooled result `quality_aggregate.aggregate` returns."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def plot(path: Path, result: dict[str, Any]) -> list[str]:
    """Two figures: ``<path>`` (every method minus PPO1, pooled, at the end and at matched KL) and
    ``<stem>-overopt.png`` (gold and proxy against sqrt KL along PPO1, and best-of-n against its plug-in KL, or the analytic bound for records made before it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(11, 4.2))
    labels = list(result["vs_ppo"])
    for k, (when, color) in enumerate((("end", "#4C72B0"), ("matched_kl", "#DD8452"))):
        for i, m in enumerate(labels):
            e = result["vs_ppo"][m].get(when)
            if not e:
                continue
            p = e["pooled"]
            x = i + (k - 0.5) * 0.35
            ax.bar(x, p["diff"], width=0.35, color=color, label=when.replace("_", " ") if i == 0 else None)
            if p["ci_low"] is not None:
                ax.errorbar(x, p["diff"], yerr=[[p["diff"] - p["ci_low"]], [p["ci_high"] - p["diff"]]], color="k",
                            capsize=3)
            ax.scatter([x] * len(e["per_seed"]), [s["diff"] for s in e["per_seed"]], color="k", s=8, zorder=3)
    ax.axhline(0, color="grey", linewidth=1)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_ylabel("gold − PPO₁ (per prompt, mean)")
    ax.set_title(f"Each method against PPO₁ over {result['n_seeds']} seed(s): pooled t-interval, seeds as dots")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written = [str(path)]
    over = result["controls"]["overoptimisation"]
    if over["pooled"] or over["best_of_n"]:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
        for ax, rows, x_of, title in (
                (axes[0], (over["pooled"] or {}).get("points") or [], lambda r: r["sqrt_kl"], "PPO₁ against RM₀"),
                (axes[1], (over["best_of_n"] or {}).get("pooled") or [], lambda r: math.sqrt(r["kl_analytic"] if r.get("kl") is None else r["kl"]),
                 "best-of-n against RM₀ (n = 1 … 64)")):
            for axis, key, color in ((ax, "gold", "#55A868"), (ax.twinx(), "proxy", "#C44E52")):  # own scales
                xs = [x_of(r) for r in rows]
                axis.plot(xs, [r[key]["diff"] for r in rows], marker="o", markersize=3, color=color)
                if rows and rows[0][key]["ci_low"] is not None:
                    axis.fill_between(xs, [r[key]["ci_low"] for r in rows], [r[key]["ci_high"] for r in rows],
                                      color=color, alpha=0.2)
                axis.set_ylabel(f"{key} (pooled mean, 95 % CI)", color=color)
            ax.set_xlabel("√KL")
            ax.set_title(title)
        fig.tight_layout()
        over_path = path.with_name(path.stem + "-overopt.png")
        fig.savefig(over_path, dpi=110)
        plt.close(fig)
        written.append(str(over_path))
    return written
