"""mvbind: recommend background music for short videos (MVBind on frozen ImageBind encoders).

The public API, for notebooks and services (everything the command line does)::

    import mvbind
    config = mvbind.load_config(overrides={"encoder.name": "signal"})
    mvbind.extract(config, "videos/")                       # stage one → feature cache
    mvbind.import_features(config, "features.npz")          # … or features extracted elsewhere
    run_dir = mvbind.train(config, name="base")             # stage two → runs/base
    out_dir, metrics = mvbind.evaluate(config, ["base"])    # Recall@K vs chance and zero-shot
    mvbind.index(config, "music/", run="base", name="mylib")
    rec = mvbind.Recommender(config, library="mylib", run="base")   # loads everything once
    report = rec.recommend(["clip.mp4"], k=5)

Names are imported on first use, so `import mvbind` is cheap (no torch until a stage runs).
The code lives in the design card's folders, installed as `mvbind.pipeline` (the library:
media, encoders, binding, library), `mvbind.stages` (one function per command) and
`mvbind.cache` (the feature cache); `mvbind.cli` is the command line.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = {
    "load_config": "mvbind.pipeline.config",
    "Config": "mvbind.pipeline.config",
    "extract": "mvbind.stages.extract",
    "train": "mvbind.stages.train",
    "evaluate": "mvbind.stages.evaluate",
    "import_features": "mvbind.stages.import_features",
    "index": "mvbind.stages.index",
    "recommend": "mvbind.stages.recommend",
    "Recommender": "mvbind.pipeline.library.recommender",
    "open_cache": "mvbind.pipeline.reader",
    "read_features": "mvbind.pipeline.reader",
    "MvbindError": "mvbind.errors",
}

__all__ = [
    "Config",
    "MvbindError",
    "Recommender",
    "evaluate",
    "extract",
    "import_features",
    "index",
    "load_config",
    "open_cache",
    "read_features",
    "recommend",
    "train",
]
assert sorted(__all__) == sorted(_API)

if TYPE_CHECKING:  # for editors and type checkers; at run time names load lazily below
    from mvbind.errors import MvbindError
    from mvbind.pipeline.config import Config, load_config
    from mvbind.pipeline.library.recommender import Recommender
    from mvbind.pipeline.reader import open_cache, read_features
    from mvbind.stages.evaluate import evaluate
    from mvbind.stages.extract import extract
    from mvbind.stages.import_features import import_features
    from mvbind.stages.index import index
    from mvbind.stages.recommend import recommend
    from mvbind.stages.train import train


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'mvbind' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
