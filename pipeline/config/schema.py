"""The settings schema: every section of pipeline.toml as a typed dataclass, with its defaults.

This module is the one place defaults are written: the shipped pipeline.toml must equal them
(tests/test_config.py checks it key by key). Plain types only (the cache fingerprints the
extractor sections), no heavy imports: loading settings never imports torch or PyAV.
Range and choice checks live in `validate.py`, loading and `--set` overrides in `loader.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mvbind.pipeline.config.paths import expand_path

ARCHS = ("huge", "small", "tiny")  # pipeline.imagebind presets; only huge has pretrained weights
ENGINES = ("local", "gpus", "ray")  # where stage one's partitions run (pipeline.engines)


@dataclass
class PathsConfig:
    cache: str = "${MVBIND_HOME}/cache"
    runs: str = "${MVBIND_HOME}/runs"


@dataclass
class EncoderConfig:
    name: str = "imagebind"
    arch: str = "huge"  # huge | small | tiny (small and tiny: random init only)
    weights: str = ""  # path; "" = download to ${MVBIND_HOME}/imagebind_huge.pth; "random" = random init
    seed: int = 0  # used only for random init
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16
    batch_size: int = 8  # videos per forward pass
    forward_clips: int = 256  # clips per forward call within a batch (bounds activation memory)
    # Where ImageBind's input transforms run: "cpu" = the workers make the float32 inputs (the exact
    # reference); "device" = workers ship uint8 pixels and 16 kHz clip waveforms, and resize, crops,
    # normalisation and the filterbank run on encoder.device (same values to float32 rounding, a
    # tenth of the bytes); "auto" = device on a GPU, cpu otherwise. Not part of the cache identity.
    transforms: str = "auto"


@dataclass
class ExtractConfig:
    workers: int = 2  # decoding processes feeding the model; 0 = decode in the main process
    prefetch: int = 4  # items each worker decodes ahead
    shard_size: int = 256  # items per HDF5 shard
    shard_seconds: float = 300.0  # also commit a shard at least this often (bounds work lost to a crash)
    write_queue: int = 2  # full shards waiting for the writer thread; the model waits only past this many
    num_shards: int = 1  # partitions: item belongs to partition hash(key) mod num_shards
    shard_index: int = 0
    retry_failed: bool = False
    item_timeout: float = 0.0  # seconds one input may take to hash and decode; past it, recorded failed (0 = none)
    engine: str = "local"  # local (this process) | gpus (one process per device) | ray (one task per partition)
    devices: str = ""  # gpus engine: e.g. "cuda:0,cuda:1" or "cpu,cpu"; "" = every visible GPU
    max_retries: int = 2  # ray engine: a partition task whose process died runs again (it resumes)


@dataclass(frozen=True)
class AudioSettings:
    """Every constant that changes the audio input (plain types: part of the cache fingerprint)."""

    sample_rate: int = 16000
    clip_duration: float = 2.0
    clips_per_video: int = 3
    num_mel_bins: int = 128
    target_length: int = 204
    mean: float = -4.268
    std: float = 9.138
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    reference_overlap_quirk: bool = True


@dataclass(frozen=True)
class VideoSettings:
    """Every constant that changes the vision input (goes into the extractor fingerprint)."""

    clip_duration: float = 2.0
    clips_per_video: int = 5
    frames_per_clip: int = 2
    size: int = 224
    crops: int = 3
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    remove_borders: bool = True
    border_probe_frames: int = 10  # at least this many frames (clip frames first) for detection
    border_threshold: int = 16  # grey level above which a pixel is content
    border_noise_frac: float = 0.005  # a row/column is content above this fraction of content pixels
    border_blank_spread: int = 12  # frames with a narrower grey histogram (p99 - p1) are skipped
    border_max_std: float = 6.0  # a border strip must be this flat (grey std) to be cropped
    border_min_px: int = 3  # thinner borders are ignored
    border_min_content: float = 0.2  # a smaller content box (fraction of a side) keeps the full frame


FEATURE_VERSION = 2  # the signal encoder's: bump when its computation changes the values (2: shared decoder)


@dataclass(frozen=True)
class SignalSettings:
    """The ``[signal]`` section: every constant that changes a feature (part of the fingerprint)."""

    version: int = FEATURE_VERSION  # feature-code version (changes invalidate cached features)
    # audio
    sample_rate: int = 22050  # analysis rate (Hz); mono mixdown resampled to it
    n_fft: int = 2048  # STFT window (samples)
    hop_length: int = 512  # STFT hop (samples): ~23 ms frames
    n_mels: int = 128  # mel bands for the onset envelope and MFCC
    n_mfcc: int = 13  # MFCC coefficients (means and standard deviations of each)
    contrast_bands: int = 6  # spectral-contrast octave bands (gives contrast_bands + 1 values)
    contrast_fmin: float = 200.0  # lowest contrast band edge (Hz)
    tempo_window: float = 6.0  # seconds of context centred on each clip for tempo and beats
    min_tempo_window: float = 1.5  # shorter audio has no tempo (tempo feature 0, tempo_known 0)
    # video
    frames_per_second: float = 8.0  # frames sampled per clip second (motion, cuts, colour)
    frame_size: int = 160  # long side of the analysis frames (px); smaller videos are not upscaled
    flow_size: int = 96  # long side of the grey frames optical flow runs on (px)
    hue_bins: int = 8  # hue histogram bins (bin 0 centred on red)
    colour_min_saturation: float = 0.2  # a pixel counts for the hue histogram above this S...
    colour_min_value: float = 0.15  # ...and this V (both in [0, 1])
    cut_threshold: float = 0.4  # HSV-histogram total-variation distance counted as a cut
    remove_borders: bool = True  # crop letterbox/pillarbox bars (dark in >= 99% of sampled frames' pixels)
    border_threshold: int = 24  # grey level (0-255) at or below which a border pixel counts as dark


POOLINGS = ("mean", "attention")

PROJECTORS = ("linear", "residual", "mlp")

BRANCH_STARTS = ("rerun", "plateau", "start")

SELECT_METRICS = ("r1", "r5", "r10", "r25", "r50")

EVAL_SPLITS = ("test", "val", "train")


@dataclass
class TrainConfig:
    cache: str = ""  # fingerprint prefix of the namespace; "" = the namespace of this config's extractor settings
    seed: int = 0  # seeds initialisation, batch order and dropout (CPU runs are bit-for-bit repeatable)
    # split (used only when the manifest gives none): stable hash of each music group's smallest key
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_salt: str = "mvbind-split-v1"
    # model
    pooling: str = "mean"  # mean | attention (learned softmax weights over clips; starts as the mean)
    projector: str = "residual"  # linear | residual (linear + zero-initialised MLP branch) | mlp (residual blocks)
    embed_dim: int = 256  # shared space
    hidden_dim: int = 1024  # MLP block width
    depth: int = 1  # residual MLP blocks
    dropout: float = 0.5  # in the MLP branch (residual) or blocks (mlp); docs/STAGE_TWO.md
    clip_dropout: float = 0.5  # training only: each cached clip is left out of an item's pooled input with this
    # probability (at least one stays), drawn anew every step; val, eval and serving pool all clips
    # optimisation
    batch_size: int = 256
    epochs: int = 50
    lr: float = 1e-3
    branch_lr_scale: float = 0.3  # the residual head's MLP branch learns at lr x this (docs/STAGE_TWO.md)
    # phases (docs/STAGE_TWO.md): a phase ends when its val R@K (ties: val loss) has not improved for
    # `patience` epochs; the last one's end ends the run; best.pt is the best epoch of all. patience = 0: one.
    branch_start: str = "rerun"  # residual only. rerun: the linear map alone (= the linear projector's run),
    # then from the same start with the branch (= branch_start "start"), whose best epoch replaces best.pt
    # once its val loss is below the linear run's lowest | plateau: the branch joins the linear map's best
    # epoch | start: the branch trains from the first step (one phase)
    soup: bool = True  # rerun (without plateau_drops): also try one head that averages the two runs' best heads
    # (before normalisation); it replaces best.pt when its val loss is below both runs' lowest
    plateau_drops: int = 0  # then that many phases from the best epoch at plateau_lr_factor x the learning rate
    plateau_lr_factor: float = 0.3
    weight_decay: float = 0.1  # AdamW; not applied to biases, LayerNorm gains, the pooling query, logit_scale
    warmup_epochs: float = 1.0  # linear warm-up, then cosine decay to min_lr
    min_lr: float = 0.0
    # loss
    init_temperature: float = 0.07  # CLIP: logit_scale starts at log(1/0.07)
    max_logit_scale: float = 100.0  # CLIP: clamp exp(logit_scale) at 100
    learn_temperature: bool = True
    multi_positive: bool = True  # members of one music group are all positives (never pushed apart)
    # music groups: items sharing a track
    music_id_groups: bool = True  # same non-empty manifest music_id -> one group
    audio_dup_groups: bool = True  # near-identical audio embeddings -> one group
    audio_dup_threshold: float = 0.98  # cosine of mean-pooled cached audio embeddings
    # early stopping on validation recall (with groups)
    select_metric: str = "r10"  # mean of video->music and music->video Recall@K
    patience: int = 5  # epochs without improvement before stopping; 0 = run all epochs
    threads: int = 1  # torch CPU threads (0 = torch's default); 1 was fastest on a shared 2-core machine (bench)
    device: str = "cpu"  # cpu | cuda | cuda:N (repeatable numbers are promised on CPU only)


@dataclass
class EvalConfig:
    ks: tuple[int, ...] = (1, 5, 10, 25, 50)
    split: str = "test"  # which split of each run (or of the namespace, for baselines) is the gallery
    baselines: bool = True  # add chance and zero-shot ImageBind (raw cosine) rows
    chunk_mb: int = 256  # memory for one block of the similarity matrix while ranking
    out: str = ""  # where eval reports go; "" = <paths.runs>/_evals


INDEX_KINDS = ("auto", "exact", "faiss")

SEARCH_KINDS = ("auto", "exact", "faiss")

PREVIEW_AUDIO = ("replace", "mix")


@dataclass
class LibraryConfig:
    dir: str = "${MVBIND_HOME}/libraries"  # where `index --name NAME` writes NAME.mvlib.h5 (and recommend finds it)
    hop: float = 1.0  # seconds between window starts; window length = audio.clip_duration (fingerprinted)
    max_windows: int = 600  # per track; a longer track gets this many windows spread evenly (fingerprinted)
    index: str = "auto"  # auto (FAISS above faiss_threshold windows) | exact | faiss
    faiss_threshold: int = 200_000  # windows; `auto` builds a FAISS index above this
    faiss_nlist: int = 0  # IVF lists; 0 = about sqrt(windows), a power of two in [16, 65536]
    faiss_target_recall: float = 0.98  # nprobe is raised at build time until recall@10 vs exact reaches this
    faiss_queries: int = 200  # probe queries for measuring that recall at build time
    seed: int = 0  # FAISS training sample and probe queries


@dataclass
class RecommendConfig:
    k: int = 10  # tracks per video
    search: str = "auto"  # auto (FAISS when the library file has an index) | exact | faiss
    nprobe: int = 0  # IVF lists visited per query; 0 = the value tuned when the library was built
    chunk_mb: int = 256  # memory for one block of window scores in exact search
    preview_audio: str = "replace"  # --preview: replace the video's audio with the track, or mix both
    preview_mix_volume: float = 0.3  # mix: level of the video's own audio (the track stays at 1.0)
    text_weight: float = 0.3  # --text: weight of the text in the steered score (0 = video only, 1 = text only)
    beat_align: bool = True  # also suggest a start that puts the video's cuts on the track's beats
    beat_search: float = 2.0  # seconds either side of the window start where the aligned start is looked for
    beat_tolerance: float = 0.1  # seconds: a cut within this of a beat counts as on the beat


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"  # `mvbind serve`: localhost only; another address needs --allow-remote
    port: int = 8000
    k: int = 5  # tracks shown per video on the page (the API takes ?k=)
    max_upload_mb: int = 200  # a bigger upload is refused (413) while it streams, before it is stored
    keep_uploads: int = 32  # uploaded videos kept for playback; older ones are deleted
    indexed_videos: int = 200  # at most this many already-extracted videos offered on the page


@dataclass
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    audio: AudioSettings = field(default_factory=AudioSettings)
    video: VideoSettings = field(default_factory=VideoSettings)
    signal: SignalSettings = field(default_factory=SignalSettings)  # used when encoder.name = "signal"
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    library: LibraryConfig = field(default_factory=LibraryConfig)
    recommend: RecommendConfig = field(default_factory=RecommendConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    source: str = "defaults"

    @property
    def cache_dir(self) -> Path:
        return expand_path(self.paths.cache)

    @property
    def runs_dir(self) -> Path:
        return expand_path(self.paths.runs)


SECTIONS: dict[str, type] = {
    "paths": PathsConfig,
    "encoder": EncoderConfig,
    "audio": AudioSettings,
    "video": VideoSettings,
    "signal": SignalSettings,
    "extract": ExtractConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "library": LibraryConfig,
    "recommend": RecommendConfig,
    "serve": ServeConfig,
}
