"""A deterministic backend for tests of the plumbing (not of models): echoes scripted text."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pydantic import Field

from cat_framework import Backend, Completion, ComponentParams, GenerationRequest


class EchoBackend(Backend):
    """Answers each request with ``reply`` (or a scripted function of the request)."""

    name = "echo"

    class Params(ComponentParams):
        reply: str = Field("42", description="Text every completion carries.")

    def __init__(
        self,
        params=None,
        *,
        roles=None,
        script: Callable[[GenerationRequest, int], str] | None = None,
    ):
        super().__init__(params, roles=roles)
        self.script = script
        self.calls: list[list[GenerationRequest]] = []

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        self.calls.append(list(requests))
        out = []
        for req in requests:
            texts = [
                self.script(req, i) if self.script else self.params.reply for i in range(req.n)
            ]
            out.append(
                [
                    Completion(text=t, token_ids=[1] * len(t), logprobs=[-0.1] * len(t))
                    for t in texts
                ]
            )
        return out

    def score(self, contexts, continuations):
        return [[-0.1] * len(c) for c in continuations]
