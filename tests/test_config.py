import dataclasses
import re
import subprocess
import sys
import tomllib

import pytest

from mvbind.errors import ConfigError
from mvbind.pipeline.config import DEFAULT_CONFIG, SECTIONS, load_config


def test_bundled_pipeline_toml_loads_with_the_reference_constants():
    config = load_config()
    assert config.audio.sample_rate == 16000 and config.audio.mean == -4.268 and config.audio.std == 9.138
    assert config.video.size == 224 and config.video.crops == 3 and config.video.clips_per_video == 5
    assert config.encoder.arch == "huge" and config.source == DEFAULT_CONFIG.name


def test_overrides_are_typed():
    config = load_config(overrides={"extract.workers": "0", "video.remove_borders": "false",
                                    "encoder.arch": "tiny", "encoder.weights": "random", "audio.std": "2.5"})
    assert config.extract.workers == 0 and config.video.remove_borders is False
    assert config.audio.std == 2.5 and config.encoder.arch == "tiny"


@pytest.mark.parametrize("overrides,message", [
    ({"extract.wokers": "1"}, r"\[extract\] wokers: unknown setting; valid keys in \[extract\]:"),
    ({"extract.workers": "two"}, r"\[extract\] workers: expected an integer, got 'two'"),
    ({"extract.workers": "-1"}, "setting extract.workers: must be >= 0, got -1"),
    ({"extract.shard_index": "3"}, r"setting extract.shard_index: must be in \[0, num_shards=1\), got 3"),
    ({"encoder.arch": "giant"}, "setting encoder.arch: unknown architecture 'giant'"),
    ({"encoder.arch": "tiny"}, "setting encoder.weights: pretrained weights exist only for arch 'huge'"),
    ({"video.remove_borders": "maybe"}, "remove_borders: expected true or false"),
    ({"nosection.key": "1"}, "--set nosection.key: expected section.key"),
    ({"video.size": "112"}, "ImageBind's vision encoder needs 224 px"),
])
def test_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(overrides=overrides)
    assert "\n" not in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[extract\nworkers = 1")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(tmp_path / "bad.toml")
    (tmp_path / "sec.toml").write_text("[extrakt]\nworkers = 1\n")
    with pytest.raises(ConfigError, match=r"unknown section \[extrakt\]"):
        load_config(tmp_path / "sec.toml")


# ── one schema: defaults written once, every key checked ─────────────────────────────────────


def test_shipped_toml_holds_every_setting_with_the_schema_defaults():
    # The schema (pipeline/config/schema.py) is where defaults are written; pipeline.toml must hold
    # every key of every section with exactly those values, so the two can't drift apart.
    raw = tomllib.loads(DEFAULT_CONFIG.read_text())
    assert set(raw) == set(SECTIONS)
    for name, cls in SECTIONS.items():
        defaults = dataclasses.asdict(cls())
        assert set(raw[name]) == set(defaults), name
        for key, value in defaults.items():
            shipped = raw[name][key]
            assert (tuple(shipped) if isinstance(shipped, list) else shipped) == value, f"{name}.{key}"


def _all_keys():
    for name, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            yield name, f.name, dataclasses.asdict(cls())[f.name]


@pytest.mark.parametrize("section,key,default", list(_all_keys()), ids=lambda v: str(v)[:30])
def test_every_key_refuses_a_wrong_type_in_one_line(section, key, default):
    if isinstance(default, str):
        return  # any string is a string: choice checks are covered below
    bad = "[oops" if isinstance(default, tuple) else "not-a-number"
    with pytest.raises(ConfigError) as err:
        load_config(overrides={f"{section}.{key}": bad})
    message = str(err.value)
    assert "\n" not in message and f"{key}" in message


@pytest.mark.parametrize("dotted,value", [
    ("video.crops", "2"), ("video.size", "0"), ("video.clips_per_video", "0"), ("video.frames_per_clip", "0"),
    ("audio.clips_per_video", "0"), ("signal.hue_bins", "0"), ("signal.flow_size", "8"), ("train.epochs", "0"),
    ("train.projector", "transformer"), ("eval.split", "dev"), ("library.hop", "-1"), ("recommend.k", "0"),
    ("encoder.device", "tpu"), ("extract.prefetch", "0"),
])
def test_out_of_range_values_name_the_key_in_one_line(dotted, value):
    with pytest.raises(ConfigError, match=rf"^setting {re.escape(dotted)}\b") as err:
        load_config(overrides={dotted: value})
    assert "\n" not in str(err.value)


def test_loading_settings_imports_no_torch_or_pyav():
    code = ("import sys; from mvbind.pipeline.config import load_config; load_config(); "
            "heavy = {'torch', 'av', 'cv2', 'librosa', 'h5py'} & set(sys.modules); "
            "print(sorted(heavy)); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_settings_toml_round_trips_through_load_config(tmp_path):
    from mvbind.pipeline.config import settings_toml

    settings = {"encoder.name": "signal", "paths.cache": 'C:\\caches\\"quoted" ünï', "train.epochs": 7,
                "train.lr": 2.5e-4, "train.audio_dup_groups": False, "eval.ks": [1, 5]}
    path = tmp_path / "pipeline.toml"
    path.write_text(settings_toml(settings, header="written by a test\nsecond line"))
    assert path.read_text().startswith("# written by a test\n# second line\n")
    config = load_config(path)
    assert config.encoder.name == "signal" and config.paths.cache == 'C:\\caches\\"quoted" ünï'
    assert config.train.epochs == 7 and config.train.lr == 2.5e-4 and config.train.audio_dup_groups is False
    assert config.eval.ks == (1, 5) and config.library == load_config().library  # the rest stay the defaults
