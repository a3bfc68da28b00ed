"""A scripted backend whose chosen requests fail for good, reported the way the ``openai`` backend
reports it (:class:`PartialBatchError` carrying every result that did arrive)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cat_framework import BackendError, Completion, GenerationRequest
from cat_plugins.backends.openai_wire import PartialBatchError
from tests.helpers.echo_backend import EchoBackend


class FlakyBackend(EchoBackend):
    """:class:`EchoBackend` where requests for which ``fails(request)`` is true fail."""

    name = "flaky"

    def __init__(
        self,
        script: Callable[[GenerationRequest, int], str],
        fails: Callable[[GenerationRequest], bool],
        **kwargs: Any,
    ) -> None:
        super().__init__(script=script, **kwargs)
        self.fails = fails

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        out: list[Any] = super().generate(requests)
        failed = [i for i, req in enumerate(requests) if self.fails(req)]
        if not failed:
            return out
        errors: list[BaseException | None] = [None] * len(out)
        for i in failed:
            out[i] = None
            errors[i] = BackendError("http://judge/v1 kept failing after 5 attempt(s): 503")
        raise PartialBatchError(f"{len(failed)} of {len(out)} requests failed", out, failed, errors)
