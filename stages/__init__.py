"""The stages: one plain function per command (orchestration only; callable from tests and notebooks)."""
