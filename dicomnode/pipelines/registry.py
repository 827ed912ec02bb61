"""Registry of pipelines (placeholder: replaced by the imaging issue's YAML-declared registry)."""

from __future__ import annotations


def available_pipelines() -> list[str]:
    """Names of the pipelines rules may refer to."""
    return ["brain-mr", "forward", "liver-ct", "lung-ct"]
