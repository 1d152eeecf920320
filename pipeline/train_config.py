"""Stage-two settings: [train] and [eval] sections of pipeline.toml."""

from dataclasses import dataclass


@dataclass
class TrainConfig:
    pass


@dataclass
class EvalConfig:
    pass


def validate_stage_two(config) -> None:
    """Range checks for [train] and [eval]; errors name the key."""
