"""A sampler on servers that every trainer process shares (``vllm serve`` replicas, the
``vllm-server`` backend): the separate-engine placement, except that the main process alone
sends the weights and checks what the servers then hold, while the others take part in
producing the tensors (a collective each under FSDP2) and share the outcome. A server keeps
whatever it last received, so a run begins by pushing the weights it starts from."""

from __future__ import annotations

from cat_framework.engine import parity
from cat_framework.engine.main_decides import main_decides
from cat_framework.engine.placement.separate_engine import SeparateEngine
from cat_framework.errors import CatError


class Server(SeparateEngine):
    """Pushes from the main process only; a failed push or parity check stops every process
    with the same message (:func:`~cat_framework.engine.main_decides.main_decides`)."""

    topology = "server"

    def begin(self) -> dict[str, float]:
        return self.push()

    def send(self, pushed: parity.Pushed) -> None:
        acc = self.setup.accelerator
        main = bool(acc.is_main_process)
        if acc.num_processes > 1:  # every process's sampling has ended: a paused server would
            acc.wait_for_everyone()  # queue a late request, and that process never reaches the push
        if not main:
            for _ in self.trained_tensors():  # the collectives the main process's push needs
                pass
        main_decides(lambda: self._main_sends(pushed), main=main, default=None)

    def _main_sends(self, pushed: parity.Pushed) -> None:
        """The push and its check; any failure becomes a message every process raises (an
        error the main process kept to itself would leave the others waiting for it)."""
        try:
            super().send(pushed)
        except CatError:
            raise
        except Exception as exc:
            raise CatError(
                f"pushing the weights to the {self.sampler.name} servers failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc


__all__ = ["Server"]
