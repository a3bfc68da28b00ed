"""Work only the main process does, with an outcome every process shares.

Under ``accelerate launch`` the main process alone judges and prepares the run directory (fresh
or resumed, links, record schemas, pruning). When it refuses, the others must stop too: a
process that raised never reaches the barrier the others wait at, and they would wait there
until the collective's timeout (``CAT_DIST_TIMEOUT``, 30 minutes by default) with no message.
So the main process's refusal (a :class:`CatError`: a message, never an object) is broadcast
and raised everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from cat_framework.engine.process_group import join_process_group
from cat_framework.errors import CatError

T = TypeVar("T")


def main_decides(work: Callable[[], T], *, main: bool, default: T) -> T:
    """``work()`` on the main process (``default`` elsewhere); a :class:`CatError` it raises is
    raised on every process, with the same message."""
    result, error = default, None
    if main:
        try:
            result = work()
        except CatError as exc:
            error = str(exc)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        error = _from_main(error)
    if error is not None:
        raise CatError(error)
    return result


def _from_main(error: str | None) -> str | None:
    import torch.distributed as dist

    join_process_group()  # the process group, once, joined in bounded time
    box = [error]
    dist.broadcast_object_list(box, src=0)  # a str or None from our own main process
    return box[0]


__all__ = ["main_decides"]
