"""Where the trained weights, pi_0 and the sampler live, and how weights move between them:
the :class:`Placement` contract (:mod:`.contract`), one class per topology, and the table
that chooses one (:mod:`.table`)."""

from cat_framework.engine.placement.colocated import Colocated
from cat_framework.engine.placement.contract import Loaded, Moves, Placement, Sampled, Setup
from cat_framework.engine.placement.gathered_copy import GatheredCopy
from cat_framework.engine.placement.on_shards import OnShards
from cat_framework.engine.placement.one_step_off import OneStepOff
from cat_framework.engine.placement.roles import training_roles
from cat_framework.engine.placement.separate_engine import SeparateEngine
from cat_framework.engine.placement.server import Server
from cat_framework.engine.placement.table import (
    Choice,
    Launch,
    build_placement,
    check_placement,
    choose,
    needs_frozen_copy,
    pi0_generates,
    trainable_class,
)

__all__ = [
    "Choice",
    "Colocated",
    "GatheredCopy",
    "Launch",
    "Loaded",
    "Moves",
    "OnShards",
    "OneStepOff",
    "Placement",
    "Sampled",
    "SeparateEngine",
    "Server",
    "Setup",
    "build_placement",
    "check_placement",
    "choose",
    "needs_frozen_copy",
    "pi0_generates",
    "trainable_class",
    "training_roles",
]
