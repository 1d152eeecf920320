"""Clip dropout (training pools a random subset of each item's clips) and the soup of a rerun's two heads.

Checked against independent numpy/float64 arithmetic, plus the rule that picks the soup in a real `train`.
"""

import json

import numpy as np
import pytest
import torch

from mvbind.cli import main as cli_main
from mvbind.pipeline.binding.pooling import AttentionPool, MeanPool
from mvbind.pipeline.binding.projector import BindingModel, ProjectorSpec
from mvbind.pipeline.binding.training import clip_mask, soup_state
from tests.planted import write_planted


def test_clip_mask_keeps_at_least_one_clip_and_drops_at_the_rate():
    gen = torch.Generator().manual_seed(0)
    keep = clip_mask(20000, 3, 0.5, gen)
    assert keep.shape == (20000, 3) and bool(keep.any(1).all())
    # P(kept) = 1/2 + P(row empty) / 3 = 1/2 + 1/24 with p = 1/2; binomial std over 60 000 draws is 0.002
    assert abs(float(keep.float().mean()) - (0.5 + 1 / 24)) < 0.01
    single = clip_mask(1000, 1, 0.9, gen)  # one clip: always kept
    assert bool(single.all())
    again = clip_mask(64, 15, 0.5, torch.Generator().manual_seed(7))
    assert torch.equal(again, clip_mask(64, 15, 0.5, torch.Generator().manual_seed(7)))


def test_masked_mean_pool_is_the_normalised_mean_of_the_kept_clips():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 4, 8)).astype(np.float16)
    mask = np.array([[1, 0, 0, 1], [1, 1, 1, 1], [0, 0, 1, 0], [0, 1, 1, 0], [1, 0, 1, 1]], bool)
    got = MeanPool()(torch.from_numpy(x), torch.from_numpy(mask)).numpy()
    kept = (x.astype(np.float64) * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    want = kept / np.linalg.norm(kept, axis=1, keepdims=True)
    # float32 sums of <= 4 fp16-exact terms and a normalisation: a few ulps of 1
    assert np.abs(got - want).max() < 1e-6
    full = MeanPool()(torch.from_numpy(x), torch.ones(5, 4, dtype=torch.bool))
    assert torch.allclose(full, MeanPool()(torch.from_numpy(x)), atol=1e-6)


def test_masked_attention_pool_gives_dropped_clips_no_weight():
    torch.manual_seed(0)
    pool = AttentionPool(8)
    torch.nn.init.normal_(pool.query)
    x = torch.randn(3, 4, 8)
    mask = torch.tensor([[True, False, True, False], [True, True, True, True], [False, False, False, True]])
    got = pool(x, mask)
    for i in range(3):  # the same pool over the kept clips alone
        assert torch.allclose(got[i], pool(x[i:i + 1, mask[i]])[0], atol=1e-6)


def test_soup_is_one_residual_head_computing_the_mean_of_the_two_heads():
    spec = ProjectorSpec(audio_dim=6, video_dim=5, audio_clips=1, video_clips=1, projector="residual", embed_dim=4,
                         hidden_dim=7, dropout=0.0)
    torch.manual_seed(0)
    linear, residual = BindingModel(spec), BindingModel(spec)
    for p in residual.parameters():  # a trained branch: every weight away from its initial value
        torch.nn.init.normal_(p)
    linear.set_branch(False)
    soup = BindingModel(spec)
    soup.load_state_dict(soup_state(linear.state_dict(), residual.state_dict(), 0.25))
    for m in (linear, residual, soup):
        m.eval()
    x = {"video": torch.randn(9, 5, dtype=torch.float64), "audio": torch.randn(9, 6, dtype=torch.float64)}
    for modality, inp in x.items():
        def raw(model, inp=inp, modality=modality):  # the head's output before normalisation, in float64
            head = model.heads[modality].double()
            z = head.proj(inp)
            return z + head.branch(inp) if head.branch is not None and head.branch_on else z
        want = 0.25 * raw(linear) + 0.75 * raw(residual)
        got = raw(soup)
        # the soup's weights are float32 means (one rounding, 2^-24 relative, each); outputs are sums of
        # <= 7 such terms of size <= ~10 here, so 1e-5 is far above rounding and far below any real mismatch
        assert torch.allclose(got, want, atol=1e-5, rtol=0)
    assert torch.isclose(soup.logit_scale.double(), 0.25 * linear.logit_scale.double()
                         + 0.75 * residual.logit_scale.double(), atol=1e-6)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("soup")
    mp = pytest.MonkeyPatch()
    mp.setenv("MVBIND_HOME", str(root / "home"))
    ns = write_planted(root / "cache", 1200, noise=2.0, jitter=0.6, seed=4, shard_size=600)
    yield root, ns
    mp.undo()


@pytest.mark.parametrize("clip_dropout", ["0", "0.5"])
def test_rerun_keeps_the_soup_only_when_its_val_loss_is_below_both_runs(planted, clip_dropout):
    root, ns = planted
    sets = [f"paths.cache={root / 'cache'}", f"paths.runs={root / 'runs'}", "train.hidden_dim=128",
            "train.embed_dim=32", "train.batch_size=128", "train.threads=1", "train.patience=2", "train.lr=0.003",
            f"train.clip_dropout={clip_dropout}", "eval.chunk_mb=16"]
    name = f"soup-{clip_dropout}"
    assert cli_main(["train", "--name", name, "--cache", ns.fingerprint[:10], "--quiet", "--epochs", "40",
                     *[x for s in sets for x in ("--set", s)]]) == 0
    run = root / "runs" / name
    final = json.loads((run / "final_metrics.json").read_text())
    soup = final["soup"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (switch,) = final["phase_changes_after_epochs"]
    lowest = [min(r["val_loss"] for r in records[:switch]), min(r["val_loss"] for r in records[switch:])]
    assert soup["lowest_val_loss"] == pytest.approx(lowest, rel=0, abs=0)
    lin = torch.load(run / "linear_best.pt", weights_only=True)
    res = torch.load(run / "residual_best.pt", weights_only=True)
    assert lin["epoch"] <= switch < res["epoch"]
    # the residual run's best is its own best val R@K epoch (ties: the lower val loss), not the run's
    phase2 = records[switch:]
    best2 = max(phase2, key=lambda r: (r["val_r10_mean"], -r["val_loss"]))
    assert res["epoch"] == best2["epoch"]
    best = torch.load(run / "best.pt", weights_only=True)
    assert soup["kept"] == (soup["val_loss"] < min(lowest))
    # the weight is the one of 1/8 .. 7/8 with the lowest val loss
    losses = soup["val_loss_by_weight"]
    assert list(losses) == [str(i / 8) for i in range(1, 8)] and soup["val_loss"] == pytest.approx(min(losses.values()))
    assert losses[str(soup["linear_weight"])] == min(losses.values())
    want = soup_state(lin["state_dict"], res["state_dict"], soup["linear_weight"])
    is_soup = all(torch.equal(best["state_dict"][k], v) for k, v in want.items())
    assert is_soup == soup["kept"]
    if soup["kept"]:
        assert best["metrics"]["soup"] == {"linear_epoch": lin["epoch"], "residual_epoch": res["epoch"],
                                           "linear_weight": soup["linear_weight"]}
        assert final["best_epoch"] == res["epoch"]


def test_clips_that_do_not_fit_are_refused_in_one_line_naming_the_setting():
    from types import SimpleNamespace

    from mvbind.pipeline.binding.training import clip_memory_error

    t = SimpleNamespace(pooling="mean", clip_dropout=0.5)
    per_item = (3 * 1024 + 15 * 1024) * 2  # ImageBind's clips, fp16: 36 864 bytes
    assert clip_memory_error(1000, (3, 1024), (15, 1024), t, 2 * 1000 * per_item) is None  # exactly half: fits
    err = clip_memory_error(1_000_000, (3, 1024), (15, 1024), t, 24 * 2**30)
    assert err is not None and "\n" not in err
    assert err.startswith("train.clip_dropout = 0.5") and "36.9 GB for 1000000 items" in err
    assert "set train.clip_dropout = 0" in err
    attention = clip_memory_error(1_000_000, (3, 1024), (15, 1024), SimpleNamespace(pooling="attention",
                                                                                     clip_dropout=0.0), 2**30)
    assert attention is not None and 'train.pooling = "attention"' in attention
    assert clip_memory_error(10**9, (3, 1024), (15, 1024), SimpleNamespace(pooling="mean", clip_dropout=0.0),
                             2**30) is None  # pooled inputs: never refused
    assert clip_memory_error(10**9, (3, 1024), (15, 1024), t, None) is None  # unknown: not refused


def test_kernel_pooling_equals_the_masked_mean_pool():
    from mvbind.pipeline.binding.fastops import masked_clip_sum

    g = torch.Generator().manual_seed(3)
    clips = (torch.randn(50, 15, 64, generator=g) * 3).half()
    idx = torch.randperm(50, generator=g)[:20]
    mask = clip_mask(20, 15, 0.5, g)
    got = masked_clip_sum(clips, idx, mask)
    want = (clips[idx].double() * mask[..., None]).sum(1)  # float64: exact for <= 15 fp16 terms
    # float32 sums of <= 15 exactly converted fp16 terms of size <= ~15: error <= 15 · 2^-24 · Σ|x| < 2e-4
    assert float((got.double() - want).abs().max()) < 2e-4
    assert torch.equal(got, masked_clip_sum(clips, idx, mask))  # deterministic
    pooled = torch.nn.functional.normalize(got, dim=-1)
    assert torch.allclose(pooled, MeanPool()(clips[idx], mask), atol=1e-6)
    torch_path = masked_clip_sum(clips.float(), idx, mask)  # not fp16: the torch fallback
    assert float((torch_path.double() - want).abs().max()) < 2e-4


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_prefetched_pooling_trains_bit_for_bit_as_inline(pooling):
    g = torch.Generator().manual_seed(0)
    video = torch.randn(600, 15, 32, generator=g).half()
    audio = (20 * torch.randn(600, 3, 24, generator=g)).half()
    spec = ProjectorSpec(audio_dim=24, video_dim=32, audio_clips=3, video_clips=15, projector="residual",
                         pooling=pooling, embed_dim=8, hidden_dim=16, dropout=0.3)
    import os
    import threading

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("prefetching needs a core beside torch's one thread")
    results, threads_before, seen = [], torch.get_num_threads(), set()
    torch.set_num_threads(1)  # train.threads' default: a core to spare, so the pooling runs ahead in a thread
    original = torch.nn.functional.normalize

    def normalize(*args, **kwargs):  # records which threads pool (it runs in the pooling step)
        seen.add(threading.current_thread().name.split("_")[0])
        return original(*args, **kwargs)

    torch.nn.functional.normalize = normalize
    try:
        results = _train_twice(video, audio, spec)
    finally:
        torch.nn.functional.normalize = original
        torch.set_num_threads(threads_before)
    assert ("clip-pool" in seen) == (pooling == "mean")  # the mean pooling ran ahead in its thread
    (la, sa, ga), (lb, sb, gb) = results
    assert la == lb and torch.equal(ga, gb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def _train_twice(video, audio, spec):
    from mvbind.pipeline.binding.loss import BindingLoss
    from mvbind.pipeline.binding.projector import param_groups
    from mvbind.pipeline.binding.training import train_epoch

    results = []
    for prefetch in (True, False):
        torch.manual_seed(1)
        model = BindingModel(spec)
        opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-2)
        gen = torch.Generator().manual_seed(2)
        losses = [train_epoch(model, opt, BindingLoss(), video, audio, None, batch_size=64, generator=gen,
                              lr_of_step=lambda i: 1e-2, clip_dropout=0.5, prefetch=prefetch)[0] for _ in range(2)]
        results.append((losses, model.state_dict(), gen.get_state()))
    return results
