"""The building blocks of the pipeline schema: strict models, component specs (a selector plus
parameters checked later against the component's own ``Params``) and the upper bounds every count
is held to (see :mod:`cat_framework.pipeline.schema`)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: upper bounds of sizes (see the module docstring)
MAX_ROLLOUTS = 1024
MAX_TOKENS = 262_144
MAX_STEPS = 10_000_000
MAX_BATCH = 1_000_000
MAX_SEED = 2**32 - 1  # numpy's limit; torch and random accept it too
MAX_THREADS = 4096
#: what a run name may not contain: it would leave (or not name) a folder inside output.dir
_NOT_PLAIN = re.compile(r"[/\\:\x00]|\.\.|^\s*\.?\s*$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _shorthand(selector: str, value: Any) -> Any:
    return {selector: value} if isinstance(value, str) else value


class ComponentSpec(BaseModel):
    """A component selector plus its params (checked later against the component's Params)."""

    model_config = ConfigDict(extra="allow")

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class BackendSpec(ComponentSpec):
    backend: str = Field("transformers", description="Registered backend name.")


class DatasetSpec(ComponentSpec):
    dataset: str = Field(description="Registered dataset name, e.g. math500, gsm8k, healthbench.")


class NamedSpec(ComponentSpec):
    name: str = Field(description="Registered component name.")
