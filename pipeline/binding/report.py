"""Evaluation reports: a Markdown table comparing runs and baselines, and a PNG of recall@K curves."""

from __future__ import annotations

from pathlib import Path

DIRECTIONS = (("video_to_music", "video→music"), ("music_to_video", "music→video"))


def markdown_table(rows: list[dict], ks) -> str:
    """One line per method and direction: Recall@K (%), median and mean rank, gallery size."""
    head = ["method", "direction", "gallery"] + [f"R@{k}" for k in ks] + ["median rank", "mean rank"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(ks) + 2)) + "|"]
    for row in rows:
        for key, label in DIRECTIONS:
            m = row.get(key)
            if m is None:
                cells = ["n/a"] * (len(ks) + 2)
            else:
                cells = [f"{100 * m[f'R@{k}']:.1f}" for k in ks] + [f"{m['median_rank']:g}", f"{m['mean_rank']:.1f}"]
            lines.append("| " + " | ".join([row["name"], label, str(row["gallery"])] + cells) + " |")
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
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

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
    axes[1].legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
