"""`recommend`: the tracks of a music library that fit a video, each with the moment to start from.

    video(s) ─► `Recommender` (cached videos are read from the cache, new ones embedded in memory,
                no extract lock) ─► the run's video head (or zero-shot) ─► library search: tracks
                ranked by their best-matching window; suggested start = that window's start
             ─► a report (table or JSON); with `preview`, the video with its top track

Refuses, in one line, a library built for other encoder settings or another projector.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from mvbind.pipeline.config import Config
from mvbind.pipeline.console import say
from mvbind.pipeline.library.projector import Projector
from mvbind.pipeline.library.recommender import Recommendation, Recommender, RecommendReport
from mvbind.pipeline.library.store import Library
from mvbind.pipeline.media.preview import write_preview

__all__ = ["Recommendation", "RecommendReport", "Recommender", "recommend"]


def recommend(config: Config, videos: list[str | Path], *, library: str | Path | Library,
              run: str | Path | None = None, projector: Projector | None = None,
              recommender: Recommender | None = None, k: int | None = None, search: str | None = None,
              preview: str | Path | None = None, text: str | None = None, text_weight: float | None = None,
              progress: bool = True, notify: Callable[[str], None] = say) -> RecommendReport:
    """Top-k library tracks for each video (steered by `text` when given; by the text alone without
    videos); writes previews into `preview` when given.

    Builds a `Recommender` (run, library and encoder loaded once) unless one is passed: to answer
    many queries, keep one (`mvbind.Recommender`) and call its `recommend` directly."""
    t0 = time.perf_counter()
    if recommender is None:
        recommender = Recommender(config, library=library, run=run, projector=projector, progress=progress)
    report = recommender.recommend(videos, k=k, search=search, text=text, text_weight=text_weight, notify=notify)
    if preview is not None:
        rc = config.recommend
        t = time.perf_counter()
        out_dir = Path(preview)
        out_dir.mkdir(parents=True, exist_ok=True)
        used: set[str] = set()
        for rec in report.recommendations:
            if not rec.results or not rec.key:  # a text-only search has no video to preview
                continue
            top = rec.results[0]
            rec.preview, rec.preview_audio = write_preview(
                Path(rec.video), Path(top["track"]), top["start"], out_dir, duration=rec.duration,
                mode=rc.preview_audio, mix_volume=rc.preview_mix_volume, used=used, notify=notify)
        report.seconds["preview"] = time.perf_counter() - t
    report.seconds["total"] = time.perf_counter() - t0
    return report
