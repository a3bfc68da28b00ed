"""YAML pipelines: parse with positions, apply ``--set`` overrides, validate everything at once."""

from cat_framework.pipeline.include import load_source
from cat_framework.pipeline.issues import Issue, PipelineValidationError
from cat_framework.pipeline.overrides import apply_overrides, parse_override
from cat_framework.pipeline.schema import PipelineConfig
from cat_framework.pipeline.source import Source, format_path
from cat_framework.pipeline.validate import (
    Pipeline,
    ResolvedComponent,
    load_pipeline,
    validate_source,
)

__all__ = [
    "Issue",
    "Pipeline",
    "PipelineConfig",
    "PipelineValidationError",
    "ResolvedComponent",
    "Source",
    "apply_overrides",
    "format_path",
    "load_pipeline",
    "load_source",
    "parse_override",
    "validate_source",
]
