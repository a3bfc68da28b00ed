"""Early stopping on a held-out validation loss, as pure functions and plain state.

CaT-SFT as published (arXiv 2509.14234, v1 Table 2) stops "early ... on lowest validation loss".
The paper gives no split, cadence or patience, so these are settings (``trainer.sft_validation``,
``sft_validate_every``, ``sft_patience``). Everything here is a function of the seed, the prompt
ids and the losses seen so far, and the state is plain JSON kept in every checkpoint's
``state.json``: a run killed and resumed makes exactly the decisions an uninterrupted one makes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from cat_framework.engine.schedule import derive_seed
from cat_framework.errors import CatError

#: the checkpoint ``state.json`` key the early-stopping state lives under
STATE_KEY = "sft_early_stopping"


def held_out(ids: Sequence[str], share: float, seed: int) -> set[str]:
    """The validation ids: the ``round(share * n)`` ids (at least 1, at most ``n - 1``) that rank
    first by a seeded hash of the id. It depends only on the ids and the seed, not on their
    order, so the split is the same on every process and at every resume, and a prompt is never
    both trained on and validated on. ``share`` 0: none."""
    if share <= 0:
        return set()
    unique = sorted(set(ids))
    if len(unique) < 2:
        raise CatError(
            f"trainer.sft_validation={share} holds out prompts for the validation loss, but only "
            f"{len(unique)} prompt(s) have a reference: at least 2 are needed (one to train on)"
        )
    count = min(len(unique) - 1, max(1, round(share * len(unique))))
    ranked = sorted(unique, key=lambda i: derive_seed("sft-validation", seed, i))
    return set(ranked[:count])


def validation_due(step: int, every: int, per_epoch: int, last: int) -> bool:
    """Whether the validation loss is computed after ``step``: every ``every`` steps (0: at the
    end of each epoch of ``per_epoch`` steps) and always after the last step, so the model
    training would end with is a candidate for the best one."""
    period = every or per_epoch
    return step == last or step % max(period, 1) == 0


@dataclass
class EarlyStopping:
    """The lowest validation loss so far, the step it was measured at, and how many validations
    in a row have not beaten it. ``patience`` None: never stop early (the best is still kept)."""

    patience: int | None
    best: float | None = None
    best_step: int | None = None
    bad: int = 0
    stopped: bool = False

    def observe(self, step: int, loss: float) -> bool:
        """Record the validation loss after ``step``; True when it is a new lowest. A loss that
        only ties, or is not finite, is no improvement."""
        if math.isfinite(loss) and (self.best is None or loss < self.best):
            self.best, self.best_step, self.bad = loss, step, 0
            return True
        self.bad += 1
        if self.patience is not None and self.bad >= self.patience:
            self.stopped = True
        return False

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps (under :data:`STATE_KEY`); patience is a setting, not state."""
        data = asdict(self)
        del data["patience"]
        return {STATE_KEY: data}

    @classmethod
    def resume(cls, patience: int | None, state: Mapping[str, Any]) -> EarlyStopping:
        """From a checkpoint's state (a fresh one when it has none). The run directory may come
        from someone else: every value is type-checked, a damaged one refused by name."""
        data = state.get(STATE_KEY)
        if data is None:
            return cls(patience)
        if not isinstance(data, dict) or set(data) != {"best", "best_step", "bad", "stopped"}:
            raise CatError(f"checkpoint state '{STATE_KEY}' is damaged: {str(data)[:120]}")
        best, best_step, bad, stopped = (data[k] for k in ("best", "best_step", "bad", "stopped"))
        valid = (
            (best is None) == (best_step is None)
            and (best is None or (type(best) in (int, float) and math.isfinite(best)))
            and (best_step is None or (type(best_step) is int and best_step >= 1))
            and type(bad) is int
            and bad >= 0
            and type(stopped) is bool
        )
        if not valid:
            raise CatError(f"checkpoint state '{STATE_KEY}' is damaged: {str(data)[:120]}")
        return cls(patience, None if best is None else float(best), best_step, bad, stopped)


__all__ = ["STATE_KEY", "EarlyStopping", "held_out", "validation_due"]
