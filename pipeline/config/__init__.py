"""Settings: one typed `Config` (schema.py), loaded from pipeline.toml with overrides (loader.py),
validated once (validate.py). Importing this never imports torch or PyAV."""

from mvbind.pipeline.config.loader import DEFAULT_CONFIG, build_config, load_config, settings_toml, to_dict
from mvbind.pipeline.config.paths import expand_path, mvbind_home
from mvbind.pipeline.config.schema import SECTIONS, Config

__all__ = ["DEFAULT_CONFIG", "SECTIONS", "Config", "build_config", "expand_path", "load_config", "mvbind_home",
           "settings_toml", "to_dict"]
