"""Stage two end to end on planted caches: train, evaluate, refuse bad input.

The caches hold synthetic per-clip embeddings whose audio and video come from different
fixed random nonlinear maps of shared latent factors (pipeline.planted): a trained projector
can find the pairing, raw cosine can't. No encoder weights exist (MVBIND_HOME is empty), the
encoder modules are made unimportable, and no item path exists on disk.
"""

import copy
import json
import math
import shutil
import sys

import numpy as np
import pytest
import torch

from mvbind.cache import FeatureCache, Row
from mvbind.cli import main as cli_main
from mvbind.pipeline.binding.pairs import select_namespace
from mvbind.pipeline.binding.projector import BindingModel, ProjectorSpec
from mvbind.pipeline.binding.training import lr_at
from mvbind.pipeline.config import load_config
from mvbind.stages.evaluate import evaluate
from tests.planted import write_planted

SMALL_MODEL = ["train.hidden_dim=128", "train.embed_dim=32", "train.batch_size=128", "train.threads=1",
               "train.patience=4", "eval.chunk_mb=16"]
BLOCKED = ("mvbind.pipeline.encoders.base", "mvbind.pipeline.encoders.imagebind.encoder",
           "mvbind.pipeline.encoders.imagebind.model", "mvbind.pipeline.encoders.imagebind.weights",
           "mvbind.pipeline.encoders.signal.encoder")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage2")
    mp = pytest.MonkeyPatch()
    mp.setenv("MVBIND_HOME", str(root / "home"))  # no weights file anywhere
    for name in BLOCKED:  # stage two must not need an encoder or a decoder
        mp.setitem(sys.modules, name, None)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield root
    torch.set_num_threads(before)
    mp.undo()


def options(root, cache="cache", *extra):
    sets = [f"paths.cache={root / cache}", f"paths.runs={root / 'runs'}", *SMALL_MODEL, *extra]
    return [x for s in sets for x in ("--set", s)]


def config(root, cache="cache", **overrides):
    base = {"paths.cache": str(root / cache), "paths.runs": str(root / "runs")}
    base.update(dict(s.split("=", 1) for s in SMALL_MODEL))
    base.update(overrides)
    return load_config(overrides=base)


@pytest.fixture(scope="module")
def planted(home):
    ns = write_planted(home / "cache", 1500, noise=2.0, jitter=0.6, shared_fraction=0.15, no_audio=6, seed=0,
                       shard_size=400)
    return ns


@pytest.fixture(scope="module")
def trained(home, planted):
    code = cli_main(["train", "--cache", planted.fingerprint[:10], "--name", "planted", "--quiet", "--epochs", "12",
                             *options(home)])
    assert code == 0
    return home / "runs" / "planted"


def test_train_writes_a_complete_run_dir(trained, planted):
    for name in ("config.json", "cache.json", "split.json", "groups.json", "model.json", "metrics.jsonl",
                 "best.pt", "last.pt", "final_metrics.json", "curves.png"):
        assert (trained / name).is_file(), name
    cache = json.loads((trained / "cache.json").read_text())
    assert cache["fingerprint"] == planted.fingerprint
    assert cache["skipped"]["no_audio"] == 6 and cache["usable_pairs"] == 1494
    split = json.loads((trained / "split.json").read_text())
    assert split["rule"] == "hash"
    assert not set(split["test"]) & (set(split["train"]) | set(split["val"]))
    assert len(split["train"]) + len(split["val"]) + len(split["test"]) == 1494
    groups = json.loads((trained / "groups.json").read_text())
    assert groups["summary"]["groups"] >= 60 and groups["summary"]["largest"] == 3
    for members in groups["groups"]:  # a shared track never straddles splits
        assert len({s for s in ("train", "val", "test") for k in members if k in set(split[s])}) == 1
    epochs = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    final = json.loads((trained / "final_metrics.json").read_text())
    assert len(epochs) == final["epochs_run"] and epochs[final["best_epoch"] - 1]["improved"]
    assert {"train_loss", "val_loss", "lr", "logit_scale", "val"} <= set(epochs[0])
    assert all(0 < e["val_loss"] < 10 for e in epochs)  # every epoch, a real number
    assert epochs[-1]["val_loss"] < epochs[0]["val_loss"]  # it learns what generalises
    ck = torch.load(trained / "best.pt", weights_only=True)
    assert ck["fingerprint"] == planted.fingerprint and ck["epoch"] == final["best_epoch"]
    last = torch.load(trained / "last.pt", weights_only=True)
    assert last["epoch"] == final["epochs_run"] and last["training"]["progress"]["best_epoch"] == final["best_epoch"]
    assert (trained / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curve_legends_never_cover_a_curve(trained):
    from mvbind.pipeline.binding.report import curves_figure

    epochs = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    fig = curves_figure(epochs, select_metric="r10")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert len(fig.axes) == 3
    for ax in fig.axes:
        legend, box = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
        assert legend.x0 >= box.x1  # right of the panel, outside it
        assert len(ax.get_legend().get_texts()) == len([line for line in ax.get_lines() if line.get_label()[0] != "_"])


def test_trained_projector_beats_chance_and_raw_cosine_on_test(trained, home, capsys):
    code = cli_main(["eval", "planted", "--name", "planted-eval", *options(home)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| planted | video→music |" in printed and "| zero-shot planted cosine |" in printed
    out = home / "runs" / "_evals" / "planted-eval"
    metrics = json.loads((out / "metrics.json").read_text())
    rows = {r["kind"]: r for r in metrics["rows"]}
    test_size = len(json.loads((trained / "split.json").read_text())["test"])
    assert rows["run"]["gallery"] == rows["chance"]["gallery"] == rows["zero_shot"]["gallery"] == test_size
    for direction in ("video_to_music", "music_to_video"):
        run, chance, raw = (rows[k][direction] for k in ("run", "chance", "zero_shot"))
        assert run["R@10"] > 5 * chance["R@10"] and run["R@10"] > raw["R@10"] + 0.3
        assert run["R@1"] > 5 * max(chance["R@1"], raw["R@1"])
        assert run["median_rank"] < raw["median_rank"] / 4
    assert (out / "table.md").read_text().count("|") > 50
    assert (out / "recall_at_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_namespace_falls_back_to_the_only_one_without_encoder(home, planted):
    notes = []
    ns = select_namespace(home / "cache", "", config(home), say=notes.append)
    assert ns.fingerprint == planted.fingerprint and "the only one" in notes[0]
    assert notes == [f"using cache namespace {planted.fingerprint[:16]} (planted), the only one in {home / 'cache'}"]


def test_several_namespaces_are_listed_in_one_line(home, planted, capsys):
    # The default config names ImageBind, whose weights are missing: no word about them, just the choices.
    other = write_planted(home / "cache-two", 50, seed=5)
    shutil.copytree(planted.root, home / "cache-two" / planted.root.name)
    capsys.readouterr()
    assert cli_main(["train", "--quiet", "--name", "which", *options(home, "cache-two")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: 2 cache namespaces in")
    assert f"{planted.fingerprint[:16]} (planted)" in lines[0] and f"{other.fingerprint[:16]} (planted)" in lines[0]
    assert "--cache PREFIX" in lines[0] and "weights" not in lines[0]


def test_baselines_need_no_run(home, planted):
    out, metrics = evaluate(config(home), [], cache=planted.fingerprint[:8], name="baselines")
    kinds = [r["kind"] for r in metrics["rows"]]
    assert kinds == ["chance", "zero_shot"] and metrics["rows"][0]["gallery"] > 100
    assert (out / "recall_at_k.png").exists()


def small_cache(home, name, n=400, **kw):
    return write_planted(home / name, n, noise=1.0, seed=1, **kw)


def test_same_command_gives_same_numbers(home):
    ns = small_cache(home, "cache-small")
    args = ["--cache", ns.fingerprint[:8], "--quiet", "--epochs", "2",
            *options(home, "cache-small", "train.batch_size=64", "train.pooling=attention")]
    assert cli_main(["train", "--name", "det-a", *args]) == 0
    assert cli_main(["train", "--name", "det-b", *args]) == 0

    def numbers(run):
        lines = [json.loads(x) for x in (home / "runs" / run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in rec.items() if "seconds" not in k} for rec in lines]

    assert numbers("det-a") == numbers("det-b")
    a = torch.load(home / "runs" / "det-a" / "best.pt", weights_only=True)["state_dict"]
    b = torch.load(home / "runs" / "det-b" / "best.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "pools.video.query" in a  # attention pooling was trained
    _, metrics = evaluate(config(home, "cache-small"), ["det-a"], name="det-eval", baselines=False)
    assert metrics["rows"][0]["video_to_music"]["R@50"] > 0


def test_eval_table_shows_the_settings_that_differ(home, capsys):
    ns = small_cache(home, "cache-small")
    base = ["--cache", ns.fingerprint[:8], "--quiet", "--epochs", "1"]
    assert cli_main(["train", "--name", "cmp-a", *base, *options(home, "cache-small", "train.batch_size=64")]) == 0
    assert cli_main(["train", "--name", "cmp-b", *base, "--lr", "0.002",
                     *options(home, "cache-small", "train.batch_size=64", "train.embed_dim=16",
                              "train.projector=linear")]) == 0
    capsys.readouterr()
    assert cli_main(["eval", "cmp-a", "cmp-b", "--name", "cmp", *options(home, "cache-small")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| method | settings | direction |")
    assert "| cmp-a | projector=residual, embed_dim=32, lr=0.001 | video→music |" in printed
    assert "| cmp-b | projector=linear, embed_dim=16, lr=0.002 | music→video |" in printed
    assert "| chance |  | video→music |" in printed
    rows = json.loads((home / "runs" / "_evals" / "cmp" / "metrics.json").read_text())["rows"]
    assert rows[1]["settings"] == {"projector": "linear", "embed_dim": 16, "lr": 0.002}
    assert (home / "runs" / "_evals" / "cmp" / "table.md").read_text().count("projector=linear") == 2
    capsys.readouterr()
    assert cli_main(["eval", "cmp-a", "--name", "cmp-one", *options(home, "cache-small")]) == 0
    assert "settings" not in capsys.readouterr().out  # one run: nothing to tell apart


def test_existing_run_dir_is_refused_unless_overwrite(home, capsys):
    ns = small_cache(home, "cache-small")
    args = ["--cache", ns.fingerprint[:8], "--quiet", "--epochs", "1", *options(home, "cache-small",
                                                                                  "train.batch_size=64")]
    assert cli_main(["train", "--name", "again", *args]) == 0
    marker = home / "runs" / "again" / "note.txt"
    marker.write_text("mine")
    capsys.readouterr()
    assert cli_main(["train", "--name", "again", *args]) == 2
    err = capsys.readouterr().err
    assert "again already exists" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert marker.exists()  # nothing deleted
    assert cli_main(["train", "--name", "again", "--overwrite", *args]) == 0
    assert "removing the existing directory" in capsys.readouterr().err and not marker.exists()
    stranger = home / "runs" / "not-a-run"
    stranger.mkdir(parents=True)
    (stranger / "thesis.tex").write_text("precious")
    assert cli_main(["train", "--name", "not-a-run", "--overwrite", *args]) == 2
    assert "refusing to delete" in capsys.readouterr().err and (stranger / "thesis.tex").exists()


def test_checkpoint_from_another_cache_or_shape_is_refused(home, trained, capsys):
    other = small_cache(home, "cache")  # a second namespace in the planted run's cache dir
    try:
        code = cli_main(["eval", "planted", "--cache", other.fingerprint[:8], "--name", "wrong", *options(home)])
        err = capsys.readouterr().err
        assert code == 2 and "trained on cache" in err and len(err.strip().splitlines()) == 1
        clone = home / "runs" / "planted-clone"
        shutil.copytree(trained, clone)
        spec = json.loads((clone / "model.json").read_text())
        spec["embed_dim"] = 16
        (clone / "model.json").write_text(json.dumps(spec))
        code = cli_main(["eval", "planted-clone", "--name", "clone", *options(home)])
        err = capsys.readouterr().err
        assert code == 2 and "projector shape differs" in err and "embed_dim 32 (expected 16)" in err
    finally:
        shutil.rmtree(other.root)  # keep the planted cache dir to one namespace


@pytest.mark.parametrize("case", ["missing", "empty", "few", "no-val", "nan", "range"])
def test_bad_input_is_one_line(home, case, capsys):
    cache = f"cache-{case}"
    extra = []
    prefix = "0000"
    if case == "empty":
        prefix = FeatureCache(home / cache).create({"shapes": {"audio": [3, 8], "video": [15, 8]}}).fingerprint[:8]
    elif case == "few":
        prefix = write_planted(home / cache, 60, seed=2).fingerprint[:8]
    elif case == "no-val":
        prefix = small_cache(home, cache).fingerprint[:8]
        extra = ["train.val_fraction=0", "train.batch_size=32"]
    elif case == "nan":
        ns = small_cache(home, cache, shard_size=100)
        bad = np.zeros((15, 64), np.float32)
        bad[3, 7] = np.nan
        ns.write_shard([Row("f" * 32, "/nonexistent/x.mp4", np.ones((3, 64)), np.ones((15, 64)), 1.0),
                        Row("e" * 32, "/nonexistent/y.mp4", np.ones((3, 64)), bad, 1.0)])
        prefix = ns.fingerprint[:8]
    elif case == "range":
        extra = ["train.lr=-1"]
    code = cli_main(["train", "--cache", prefix, "--quiet", "--name", f"bad-{case}", *options(home, cache, *extra)])
    lines = capsys.readouterr().err.strip().splitlines()  # notices first, then the one-line error
    err = lines[-1]
    assert code == 2 and err.startswith("error: ") and sum(x.startswith("error") for x in lines) == 1
    expected = {
        "missing": "no cache namespace matches '0000'",
        "empty": "holds no items",
        "few": "fewer than train.batch_size = 128",
        "no-val": "the val split is empty",
        "nan": "row 1 (key eeee",
        "range": "setting train.lr: must be > 0, got -1",
    }[case]
    assert expected in err
    if case == "nan":
        assert ".h5 row 1" in err and "nan or inf" in err
    assert not (home / "runs" / f"bad-{case}").exists()  # nothing written for a refused run


def test_residual_runs_the_linear_projector_then_the_residual_one_and_keeps_the_better(home, planted):
    sets = options(home, "cache", "train.patience=2")
    base = ["--cache", planted.fingerprint[:10], "--quiet", "--epochs", "30", *sets]
    runs = home / "runs"
    assert cli_main(["train", "--name", "rerun", *base, "--set", "train.plateau_drops=1"]) == 0
    assert cli_main(["train", "--name", "rerun-linear", *base, "--set", "train.projector=linear"]) == 0
    assert cli_main(["train", "--name", "rerun-start", *base, "--set", "train.branch_start=start"]) == 0

    def records(run):
        return [{k: v for k, v in json.loads(line).items() if "seconds" not in k}
                for line in (runs / run / "metrics.jsonl").read_text().splitlines()]

    def numbers(recs):  # what does not depend on where in the run an epoch falls
        return [{k: v for k, v in r.items() if k not in ("epoch", "step", "phase", "improved")} for r in recs]

    rerun, linear, start = records("rerun"), records("rerun-linear"), records("rerun-start")
    final = json.loads((runs / "rerun" / "final_metrics.json").read_text())
    first, second = final["phase_changes_after_epochs"]  # the residual run begins, then the lower rate
    assert [r["phase"] for r in rerun] == [0] * first + [1] * (second - first) + [2] * (len(rerun) - second)
    # phase 1: exactly the linear projector's run (the frozen branch is skipped, the maps start alike) ...
    assert rerun[:first] == linear
    # ... phase 2: exactly the run whose branch trains from the first step (same weights, random states, schedule)
    assert numbers(rerun[first:second]) == numbers(start)
    # the residual run's epochs replace best.pt only once its val loss is below the linear run's lowest
    lowest_linear, lowest = min(r["val_loss"] for r in linear), math.inf
    for r in rerun[first:second]:
        lowest = min(lowest, r["val_loss"])
        assert not r["improved"] or lowest < lowest_linear
    assert any(r["improved"] for r in rerun[first:second]) == (min(r["val_loss"] for r in start) < lowest_linear)
    assert 0.2 < rerun[second]["lr"] / rerun[second - 1]["lr"] <= 0.3  # 0.3 x the cosine, which goes on
    best = torch.load(runs / "rerun" / "best.pt", weights_only=True)
    assert best["epoch"] == final["best_epoch"]
    # the optimiser state goes with it while a later phase may start from it (then best.pt is larger)
    assert ("training" in best) == (final["best_epoch"] <= second)


def test_a_phase_begins_from_the_best_epoch_or_as_a_new_run():
    from mvbind.pipeline.binding.training import Phase, begin_phase, phases

    torch.manual_seed(5)
    model = BindingModel(ProjectorSpec(audio_dim=6, video_dim=4, audio_clips=1, video_clips=1, projector="residual",
                                       embed_dim=3, hidden_dim=8))
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        v, a, _ = model(torch.randn(4, 4), torch.randn(4, 6))
        (-(v * a).sum()).backward()
        opt.step()
    best = {"state_dict": {k: v.clone() for k, v in model.state_dict().items()},
            "training": {"optimizer": copy.deepcopy(opt.state_dict())}}
    torch.randperm(10, generator=gen)
    opt.step()  # moves on from "best"
    begin_phase(Phase(True, 0.3), model, opt, gen, seed=5, best=best)
    assert all(torch.equal(v, best["state_dict"][k]) for k, v in model.state_dict().items())
    assert torch.equal(opt.state_dict()["state"][1]["exp_avg"], best["training"]["optimizer"]["state"][1]["exp_avg"])
    begin_phase(Phase(True, start="init"), model, opt, gen, seed=5, best={})
    assert all(torch.equal(v, initial[k]) for k, v in model.state_dict().items()) and not opt.state
    fresh = torch.Generator().manual_seed(5)
    assert torch.equal(torch.randperm(10, generator=gen), torch.randperm(10, generator=fresh))

    t = load_config(overrides={"train.plateau_drops": "2"}).train
    assert [(p.branch, p.lr_factor, p.start) for p in phases(t)] == [
        (False, 1.0, "init"), (True, 1.0, "init"), (True, 0.3, "best"), (True, pytest.approx(0.09), "best")]
    t.branch_start = "plateau"
    assert [p.start for p in phases(t)][:2] == ["init", "best"]
    t.projector = "linear"  # no branch: the phases are the drops alone
    assert [(p.branch, p.lr_factor) for p in phases(t)] == [(True, 1.0), (True, 0.3), (True, pytest.approx(0.09))]
    t.patience = 0  # no plateau ever: one phase
    assert len(phases(t)) == 1


def test_lr_warmup_then_cosine():
    lr = [lr_at(i, base=1.0, floor=0.1, warmup=4, total=20) for i in range(21)]
    assert lr[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lr[4] == pytest.approx(1.0) and lr[12] == pytest.approx(0.55) and lr[20] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lr[4:], lr[5:]))


def test_unreadable_checkpoint_is_refused(tmp_path):
    from mvbind.pipeline.binding.checkpoint import CheckpointError, load_checkpoint

    bad = tmp_path / "best.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a loadable weights-only checkpoint"):
        load_checkpoint(bad)
    torch.save({"format": "something-else"}, bad)
    with pytest.raises(CheckpointError, match="not an mvbind projector checkpoint"):
        load_checkpoint(bad)


def test_checkpoints_from_before_modality_keyed_heads_still_load():
    # Heads and pools are keyed by modality (heads.video.*); runs trained before that stored
    # video_head.* / video_pool.*, and must load into the same model, strictly, unchanged.
    spec = ProjectorSpec(audio_dim=12, video_dim=16, audio_clips=3, video_clips=5, pooling="attention",
                         projector="mlp", embed_dim=8, hidden_dim=32)
    torch.manual_seed(0)
    trained = BindingModel(spec)
    old = {k.replace("heads.video.", "video_head.").replace("heads.audio.", "audio_head.")
            .replace("pools.video.", "video_pool.").replace("pools.audio.", "audio_pool."): v
           for k, v in trained.state_dict().items()}
    assert any(k.startswith("video_head.") for k in old) and not any(k.startswith("heads.") for k in old)
    fresh = BindingModel(spec)
    fresh.load_state_dict(old, strict=True)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in trained.state_dict().items())
