"""The whole offline demo path on a tiny collection: demo-data → extract → train → eval → index → recommend."""

import json

from mvbind.stages.demo import run_demo


def test_demo_runs_end_to_end_on_a_tiny_collection(tmp_path):
    lines = []
    result = run_demo(tmp_path / "demo", videos=30, library_tracks=2, seed=3, workers=1, held_out=2, k=3,
                      video_seconds=(4.0, 5.0), track_seconds=(8.0, 10.0), batch_size=8, progress=False,
                      notify=lines.append)
    text = "\n".join(lines)
    assert (result.run_dir / "best.pt").exists() and (result.eval_dir / "recall_at_k.png").exists()
    assert result.library.exists()
    metrics = json.loads((result.eval_dir / "metrics.json").read_text())
    methods = {row["name"] for row in metrics["rows"]}
    assert {"demo", "chance"} <= methods
    assert "| demo | video→music |" in text and "| chance |" in text
    assert len(result.held_out) == 2 and all(c["video"] for c in result.held_out)
    assert "music is generated" in text
    # A second run reuses the collection and the cache: nothing is generated or extracted again.
    again = []
    run_demo(tmp_path / "demo", videos=30, library_tracks=2, seed=3, workers=1, held_out=2, k=3,
             video_seconds=(4.0, 5.0), track_seconds=(8.0, 10.0), batch_size=8, progress=False, notify=again.append)
    again = "\n".join(again)
    assert "reusing the demo collection" in again and "extracted 0, reused from cache 30" in again
