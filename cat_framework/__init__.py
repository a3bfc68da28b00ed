"""cat-framework: Compute as Teacher (arXiv 2509.14234) as a plugin framework.

The public API plugin authors and users import. Importing this package loads no plugin and no
model library: plugins load when :func:`load_plugins` (or the CLI) is called.
"""

from cat_framework.components import (
    Aggregator,
    Backend,
    Component,
    ComponentParams,
    Dataset,
    RewardDeriver,
    Roles,
    ServerCommand,
    TrainableBackend,
    WeightChecksums,
)
from cat_framework.errors import (
    BackendError,
    CatError,
    ComponentClashError,
    ConfigError,
    NotSupportedError,
    PartialBatchError,
    PluginLoadError,
    UnknownComponentError,
)
from cat_framework.hookspecs import hookimpl, hookspec
from cat_framework.plugins import Plugins, default_plugins, load_plugins
from cat_framework.records import (
    ReferenceRecord,
    RolloutRecord,
    RunRecord,
    read_records,
)
from cat_framework.registry import Provenance, Registry
from cat_framework.types import (
    Completion,
    Criterion,
    GenerationRequest,
    Prompt,
    Reference,
    Rewards,
    RolloutGroup,
    Verdict,
)
from cat_framework.version import __version__

__all__ = [
    "Aggregator",
    "Backend",
    "BackendError",
    "CatError",
    "Completion",
    "Component",
    "ComponentClashError",
    "ComponentParams",
    "ConfigError",
    "Criterion",
    "Dataset",
    "GenerationRequest",
    "NotSupportedError",
    "PartialBatchError",
    "PluginLoadError",
    "Plugins",
    "Prompt",
    "Provenance",
    "Reference",
    "ReferenceRecord",
    "Registry",
    "RewardDeriver",
    "Rewards",
    "Roles",
    "RolloutGroup",
    "RolloutRecord",
    "RunRecord",
    "ServerCommand",
    "TrainableBackend",
    "UnknownComponentError",
    "Verdict",
    "WeightChecksums",
    "__version__",
    "default_plugins",
    "hookimpl",
    "hookspec",
    "load_plugins",
    "read_records",
]
