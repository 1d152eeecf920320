"""`train --resume`: a run killed with SIGKILL and resumed ends bit for bit where an uninterrupted run ends.

The killed run is a real `python -m mvbind train` process, killed once its metrics.jsonl shows a few
epochs; the resumed run and the reference run use the same settings (one thread, dropout on, so the
random states matter). Everything reads a planted cache (tests/planted.py) in a temp dir.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from mvbind.cli import main as cli_main
from tests.planted import write_planted

EPOCHS = 20
SETTINGS = ["train.hidden_dim=256", "train.embed_dim=32", "train.batch_size=128", "train.threads=1",
            "train.patience=0", "train.dropout=0.2", "eval.chunk_mb=16"]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    mp = pytest.MonkeyPatch()
    mp.setenv("MVBIND_HOME", str(root / "home"))  # no weights file anywhere
    ns = write_planted(root / "cache", 1500, noise=2.0, jitter=0.6, shared_fraction=0.15, seed=3, shard_size=500)
    yield root, ns
    mp.undo()


def args(root, ns, *extra):
    sets = [f"paths.cache={root / 'cache'}", f"paths.runs={root / 'runs'}", *SETTINGS, *extra]
    flags = [x for s in sets for x in ("--set", s)]
    return ["--cache", ns.fingerprint[:10], "--quiet", "--epochs", str(EPOCHS), *flags]


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_time(d: dict) -> dict:
    return {k: v for k, v in d.items() if "seconds" not in k and k not in ("resumed_after_epochs", "run")}


def kill_after(cmd: list[str], log, epochs: int, env: dict) -> None:
    """Start `cmd`, SIGKILL it as soon as `log` holds `epochs` lines."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            if log.exists() and log.read_text().count("\n") >= epochs:
                os.kill(proc.pid, signal.SIGKILL)
                break
            assert proc.poll() is None, "training ended before it could be killed"
            time.sleep(0.005)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


# patience 0: one phase, every epoch runs; phased: plateaus switch phases (the residual run after the linear
# one, from the initial weights and reseeded random states; then two lower rates from best.pt) and end the run
# soup: the rerun alone (the linear run, then the residual run), with clip dropout; the soup of the two runs' best
# epochs is computed after the resumed run ends, from the files the killed one wrote
PHASED = ["train.patience=2", "train.plateau_drops=2", "train.lr=0.003", "train.clip_dropout=0"]
SOUP = ["train.patience=2", "train.lr=0.01", "train.clip_dropout=0.5"]
LR = {"epochs": 0.001, "phased": 0.003, "soup": 0.01}


@pytest.mark.parametrize("mode", ["epochs", "phased", "soup"])
def test_killed_run_resumes_to_the_same_weights(home, capsys, mode):
    root, ns = home
    runs = root / "runs"
    phased = mode != "epochs"
    extra = {"epochs": [], "phased": PHASED, "soup": SOUP}[mode]
    whole_name, name = f"whole-{mode}", f"killed-{mode}"
    whole_dir = runs / whole_name
    assert cli_main(["train", "--name", whole_name, *args(root, ns, *extra)]) == 0
    final_a = json.loads((whole_dir / "final_metrics.json").read_text())
    kill_at = 3
    if phased:  # kill once an epoch after the first switch is logged: last.pt then holds the new phase
        switches = 3 if mode == "phased" else 1
        assert len(final_a["phase_changes_after_epochs"]) == switches and "early stop" in final_a["stop_reason"]
        kill_at = final_a["phase_changes_after_epochs"][0] + 1
        assert (final_a["soup"] is not None) == (mode == "soup")

    killed = runs / name
    env = {**os.environ, "MVBIND_HOME": str(root / "home")}
    kill_after([sys.executable, "-m", "mvbind", "train", "--name", name, *args(root, ns, *extra)],
               killed / "metrics.jsonl", kill_at, env)
    assert not (killed / "final_metrics.json").exists()
    stopped_at = torch.load(killed / "last.pt", weights_only=True)["epoch"]
    assert kill_at - 1 <= stopped_at < final_a["epochs_run"]
    assert torch.load(killed / "last.pt", weights_only=True)["training"]["progress"]["phase"] == (1 if phased else 0)
    with open(killed / "metrics.jsonl", "a") as f:  # what a kill in the middle of a write leaves
        f.write('{"epoch": 99, "train_lo')
    capsys.readouterr()

    # other settings than the run's: refused in one line, nothing touched
    before = (killed / "metrics.jsonl").read_bytes()
    assert cli_main(["train", "--resume", name, *args(root, ns, *extra, "train.lr=0.0025")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"train.lr {LR[mode]} → 0.0025" in err[0] and "config.json" in err[0]
    assert (killed / "metrics.jsonl").read_bytes() == before

    assert cli_main(["train", "--resume", name, *args(root, ns, *extra)]) == 0
    assert f"resuming {name} after epoch {stopped_at}" in capsys.readouterr().err

    for file in ("best.pt", "last.pt") + (("linear_best.pt", "residual_best.pt") if mode == "soup" else ()):
        a = torch.load(whole_dir / file, weights_only=True)
        b = torch.load(killed / file, weights_only=True)
        assert a["epoch"] == b["epoch"] and a["state_dict"].keys() == b["state_dict"].keys()
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]), file
    last_a = torch.load(whole_dir / "last.pt", weights_only=True)["training"]
    last_b = torch.load(killed / "last.pt", weights_only=True)["training"]
    moments = [(s, k) for s in last_a["optimizer"]["state"] for k in last_a["optimizer"]["state"][s]]
    assert moments and all(torch.equal(last_a["optimizer"]["state"][s][k], last_b["optimizer"]["state"][s][k])
                           for s, k in moments)
    assert all(torch.equal(last_a["rng"][k], last_b["rng"][k]) for k in ("torch", "batch_order"))

    whole, resumed = records(whole_dir), records(killed)
    assert [r["epoch"] for r in resumed] == list(range(1, final_a["epochs_run"] + 1))  # continued, no epoch twice
    assert [without_time(r) for r in resumed] == [without_time(r) for r in whole]
    final_b = json.loads((killed / "final_metrics.json").read_text())
    assert without_time(final_a) == without_time(final_b) and final_b["resumed_after_epochs"] == [stopped_at]
    assert final_a["stop_reason"].startswith("early stop") == phased and (killed / "curves.png").is_file()

    # a finished run is not resumed again
    assert cli_main(["train", "--resume", name, *args(root, ns, *extra)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the run finished" in err[0]


def test_resume_before_the_first_epoch_ended_starts_over(home, capsys):
    # A run killed before any last.pt: the run directory exists (settings, split), no epoch is kept.
    root, ns = home
    runs = root / "runs"
    short = args(root, ns)
    short[short.index("--epochs") + 1] = "2"
    assert cli_main(["train", "--name", "early", *short]) == 0
    assert cli_main(["train", "--name", "early-ref", *short]) == 0
    for name in ("last.pt", "best.pt", "final_metrics.json"):
        (runs / "early" / name).unlink()
    (runs / "early" / "metrics.jsonl").write_text('{"epoch": 1, "step"')
    capsys.readouterr()
    assert cli_main(["train", "--resume", str(runs / "early"), "--overwrite", *short]) == 2
    assert "give one of them" in capsys.readouterr().err
    assert cli_main(["train", "--resume", str(runs / "early"), *short]) == 0
    assert "no epoch had finished" in capsys.readouterr().err
    assert [r["epoch"] for r in records(runs / "early")] == [1, 2]
    a = torch.load(runs / "early" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(runs / "early-ref" / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_recorded_before_the_phase_settings_resumes_as_it_trained():
    # config.json of a run from before train.branch_start / plateau_*: it trained as branch_start "start"
    # with no drops, so a resume with those values continues it; the new defaults are a change of settings
    from mvbind.pipeline.binding.resume import changed_settings
    from mvbind.pipeline.config import load_config, to_dict

    old = json.loads(json.dumps(to_dict(load_config(overrides={"train.branch_start": "start"}))))
    for key in ("branch_start", "plateau_drops", "plateau_lr_factor"):
        del old["train"][key]
    assert changed_settings(old, load_config(overrides={"train.branch_start": "start"})) == []
    assert changed_settings(old, load_config()) == ['train.branch_start "start" → "rerun"']
