"""A routing rule: when (a condition) → then (an action). Pydantic models, ``extra="forbid"``."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, StrictStr, field_validator, model_validator

from dicomnode.route.conditions import Condition, _Strict

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class Action(_Strict):
    """What a matching rule does. ``pipeline`` and ``forward`` may be combined; ``discard`` stands alone."""

    pipeline: StrictStr | None = None  # a registered pipeline name (dicomnode.pipelines.registry)
    params: dict[str, Any] = Field(default_factory=dict)  # passed to the pipeline
    send_to: list[StrictStr] = Field(default_factory=list)  # destination names from the config
    forward: bool = False  # send the original instances, unprocessed, to send_to
    discard: bool = False  # do nothing with the series (the decision is recorded)
    quiet_seconds: float | None = Field(None, ge=0)  # completion quiet period for matching series
    stop: bool = False  # later rules are not evaluated
    # results whose QC verdict is fail: held for an operator or sent anyway (default: each destination's)
    on_qc_fail: Literal["hold", "send"] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Action:
        if self.discard and (self.pipeline or self.forward or self.send_to):
            raise ValueError("discard cannot be combined with pipeline, forward or send_to")
        if self.forward and not self.send_to:
            raise ValueError("forward needs send_to: the destinations that receive the originals")
        if self.on_qc_fail is not None and not self.pipeline:
            raise ValueError("on_qc_fail is given but no pipeline (only pipeline results have a QC verdict)")
        if self.params and not self.pipeline:
            raise ValueError("params are given but no pipeline")
        if self.send_to and not (self.pipeline or self.forward):
            raise ValueError(
                "send_to needs a pipeline (results are sent) or forward: true (originals are sent)"
            )
        if len(set(self.send_to)) != len(self.send_to):
            raise ValueError(f"send_to names a destination twice: {self.send_to}")
        if not (self.pipeline or self.forward or self.discard or self.stop or self.quiet_seconds is not None):
            raise ValueError(
                "an action needs at least one of pipeline, forward, discard, quiet_seconds, stop"
            )
        return self

    @property
    def kind(self) -> str:
        """``pipeline``, ``forward``, ``pipeline+forward``, ``discard`` or ``none``."""
        if self.discard:
            return "discard"
        parts = (["pipeline"] if self.pipeline else []) + (["forward"] if self.forward else [])
        return "+".join(parts) or "none"

    def describe(self) -> str:
        """One line for people: ``pipeline liver-ct → pacs quiet 20 s stop``."""
        parts = []
        if self.discard:
            parts.append("discard")
        if self.pipeline:
            parts.append(f"pipeline {self.pipeline}")
        if self.forward:
            parts.append("forward originals")
        if self.send_to:
            parts.append("→ " + ", ".join(self.send_to))
        if self.quiet_seconds is not None:
            parts.append(f"quiet {self.quiet_seconds:g} s")
        if self.stop:
            parts.append("stop")
        return " ".join(parts) or "-"


class Rule(_Strict):
    name: StrictStr
    description: StrictStr = ""
    enabled: bool = True
    priority: int = 0  # higher first; also the priority of the jobs the rule creates
    level: Literal["series", "study"] = "series"
    fallback: bool = False  # applies only when no ordinary rule of its level matched
    when: Condition | None = None  # omitted: always holds
    then: Action
    # the node's own outputs (route.ownership): never routed (ignore, default) or forwarded when asked
    own_outputs: Literal["ignore", "forward"] = "ignore"

    @model_validator(mode="after")
    def _own_outputs(self) -> Rule:
        if self.own_outputs == "ignore":
            return self
        if self.level != "series":
            raise ValueError(
                "own_outputs: forward is only for series rules (study rules never see the node's own "
                "outputs: their series are left out of the study)"
            )
        if self.then.pipeline:
            raise ValueError(
                f"own_outputs: forward cannot run pipeline '{self.then.pipeline}' on the node's own outputs "
                "(that is the loop it prevents): use a forward-only rule"
            )
        if not self.then.forward:
            raise ValueError("own_outputs: forward needs then.forward: true and send_to (the destinations)")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.match(NAME_PATTERN, value):
            raise ValueError(
                f"rule name '{value}' may only contain letters, digits, '_', '.' and '-' "
                "(1-64 characters, starting with a letter or digit)"
            )
        return value
