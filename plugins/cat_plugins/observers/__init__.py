"""Built-in observers: lifecycle-hook implementations that log runs.

The plugin manager registers this module, so each observer's hookimpls are imported here. They
use ``specname`` (``tensorboard_on_run_start`` implements ``on_run_start``) so several observers
can live side by side; none imports its heavy dependency until a run starts.
"""

from cat_plugins.observers.tensorboard import (
    tensorboard_on_run_end,
    tensorboard_on_run_start,
    tensorboard_on_step_end,
)

__all__ = ["tensorboard_on_run_end", "tensorboard_on_run_start", "tensorboard_on_step_end"]
