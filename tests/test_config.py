import pytest

from mvbind.errors import ConfigError
from mvbind.pipeline.config.loader import DEFAULT_CONFIG, load_config


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
