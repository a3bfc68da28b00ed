"""A deterministic backend for tests of the plumbing (not of models): scripted replies."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pydantic import Field

from cat_framework import Backend, Completion, ComponentParams, GenerationRequest


class EchoBackend(Backend):
    """The i-th sample of every request is ``replies[i % len(replies)]`` (or ``script(req, i)``).

    Records every batch it receives in ``calls`` so tests can assert on batching and prompts.
    """

    name = "echo"

    class Params(ComponentParams):
        replies: list[str] = Field(default_factory=lambda: ["42"], description="Cycled replies.")

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
        self.score_calls: list[tuple[list, list]] = []

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        self.calls.append(list(requests))
        replies = self.params.replies
        out = []
        for req in requests:
            texts = [
                self.script(req, i) if self.script else replies[i % len(replies)]
                for i in range(req.n)
            ]
            out.append(
                [
                    Completion(
                        text=t,
                        token_ids=list(range(len(t.split()) or 1)),
                        logprobs=[-0.5] * (len(t.split()) or 1),
                        finish_reason="stop",
                    )
                    for t in texts
                ]
            )
        return out

    def score(self, contexts, continuations):
        self.score_calls.append((list(contexts), list(continuations)))
        # longer continuations are "more surprising" per token: a simple, predictable ranking
        return [[-0.1 * len(c)] * max(1, len(c)) for c in continuations]
