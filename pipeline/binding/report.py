"""Reports: a Markdown table comparing runs and baselines, a PNG of recall@K curves (eval), and a run's
training curves (train)."""

from __future__ import annotations

import json
from pathlib import Path

DIRECTIONS = (("video_to_music", "video→music"), ("music_to_video", "music→video"))


def differing_settings(settings: list[dict]) -> list[dict]:
    """Each dict cut to the keys whose values are not the same in all of them: what tells runs apart."""
    keys = list(dict.fromkeys(k for s in settings for k in s))
    differ = [k for k in keys if len({json.dumps(s.get(k), sort_keys=True) for s in settings}) > 1]
    return [{k: s.get(k) for k in differ} for s in settings]


def settings_text(settings: dict | None) -> str:
    """`lr=0.002, embed_dim=64` (floats in their shortest form)."""
    def shown(v) -> str:
        return f"{v:g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, (list, dict)) else str(v)

    return ", ".join(f"{k}={shown(v)}" for k, v in (settings or {}).items())


def markdown_table(rows: list[dict], ks) -> str:
    """One line per method and direction: Recall@K (%), median and mean rank, gallery size; with a settings
    column when rows carry the settings that differ between the evaluated runs."""
    with_settings = any(row.get("settings") for row in rows)
    text = ["method"] + (["settings"] if with_settings else []) + ["direction", "gallery"]
    head = text + [f"R@{k}" for k in ks] + ["median rank", "mean rank"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(text) + ["---:"] * (len(ks) + 2)) + "|"]
    for row in rows:
        for key, label in DIRECTIONS:
            m = row.get(key)
            if m is None:
                cells = ["n/a"] * (len(ks) + 2)
            else:
                cells = [f"{100 * m[f'R@{k}']:.1f}" for k in ks] + [f"{m['median_rank']:g}", f"{m['mean_rank']:.1f}"]
            first = [row["name"]] + ([settings_text(row.get("settings"))] if with_settings else [])
            lines.append("| " + " | ".join(first + [label, str(row["gallery"])] + cells) + " |")
    return "\n".join(lines) + "\n"


def recall_axes(ax, title: str, ks, longest: int) -> None:
    """One recall@K panel's axes: log K with the Ks as ticks, a light grid."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ticks = [k for k in ks if k <= longest]
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(k) for k in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("K")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)


def plot_recall(rows: list[dict], path: Path, *, title: str = "", ks=(1, 5, 10, 25, 50)) -> None:
    """Recall@K for K = 1..max, one panel per direction, one line per method (matplotlib, Agg)."""

    plt = _pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, (key, label) in zip(axes, DIRECTIONS):
        longest = 1
        for row in rows:
            curve = row.get("curves", {}).get(key)
            if not curve:
                continue
            longest = max(longest, len(curve))
            style = {"chance": dict(ls="--", color="0.5"), "zero_shot": dict(ls=":", lw=2)}.get(row["kind"], {})
            ax.plot(range(1, len(curve) + 1), [100 * c for c in curve], label=f"{row['name']} (n={row['gallery']})",
                    **style)
        recall_axes(ax, label, ks, longest)
    axes[0].set_ylabel("Recall@K (%)")
    axes[0].set_ylim(0, 100)
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # the legend, right of the panels, never covers a curve
    plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def curves_figure(records: list[dict], *, select_metric: str = "r10", title: str = ""):
    """A run's metrics.jsonl as three panels over epochs: train and val loss; val Recall@K both ways and
    their mean (the selection score), the best epoch marked; the temperature 1/exp(logit_scale).
    Each legend sits outside its panel, right of it, so it never covers a curve."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    k = select_metric[1:]
    epochs = [r["epoch"] for r in records]

    def series(get) -> list[float]:
        out = []
        for r in records:
            try:
                out.append(float(get(r)))
            except (KeyError, TypeError):
                out.append(float("nan"))  # an older run without this figure: a gap, not a crash
        return out

    fig, axes = plt.subplots(3, 1, figsize=(9, 8.5), sharex=True)
    loss, recall, temp = axes
    loss.plot(epochs, series(lambda r: r["train_loss"]), marker=".", label="train loss")
    loss.plot(epochs, series(lambda r: r["val_loss"]), marker=".", label="val loss")
    loss.set_ylabel("contrastive loss")
    for key, label in DIRECTIONS:
        recall.plot(epochs, series(lambda r, key=key: 100 * r["val"][key][f"R@{k}"]), marker=".",
                    label=f"val R@{k} {label}")
    recall.plot(epochs, series(lambda r: 100 * r[f"val_r{k}_mean"]), color="0.3", ls="--", label="mean (selects)")
    best = [r["epoch"] for r in records if r.get("improved")]
    if best:
        for ax in axes:
            ax.axvline(best[-1], color="0.6", ls=":", lw=1, label=f"best epoch {best[-1]}" if ax is recall else None)
    recall.set_ylabel(f"val Recall@{k} (%)")
    temp.plot(epochs, series(lambda r: 1 / r["logit_scale"]), marker=".", color="tab:purple",
              label="temperature 1/exp(logit_scale)")
    temp.set_ylabel("temperature")
    temp.set_xlabel("epoch")
    temp.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(records: list[dict], path: Path, *, select_metric: str = "r10", title: str = "") -> None:
    """Write `curves_figure` as a PNG (the legends, outside the panels, are kept inside the image)."""
    plt = _pyplot()
    fig = curves_figure(records, select_metric=select_metric, title=title)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
