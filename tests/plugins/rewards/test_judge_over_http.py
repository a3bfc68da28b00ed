"""The rubric reward judged by the ``openai`` backend over real HTTP (a server on 127.0.0.1 in
this process) that injects the faults remote judges produce: 500s, a 200 with a cut JSON body, a
200 with an HTML proxy page, ``choices: []``, and a 429 whose ``Retry-After`` is an HTTP date.

Recovered faults cost nothing; requests that keep failing make only their (rollout, criterion)
pairs unscorable; every finished verdict is kept; no exception escapes (issue 9 item 6), and a
rollout with failed verdicts gets no reward instead of an inflated one (issue 10 item 2).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from cat_framework import Completion, Prompt, Reference, Roles, RolloutGroup
from cat_plugins.backends.openai_backend import OpenAIBackend
from cat_plugins.rewards.rubric import RubricReward
from tests.helpers.echo_backend import EchoBackend
from tests.helpers.openai_server import (
    FakeServer,
    Fault,
    by_attempt,
    cut_json,
    html_page,
    http_date,
    message_text,
    no_choices,
    rate_limited,
    run_fake_server,
    server_error,
)

KEYWORDS = ("salt", "exercise", "doctor", "sleep", "alcohol")
RUBRIC = (
    "<rubric>" + "".join(f"<criterion>Mentions {w}</criterion>" for w in KEYWORDS) + "</rubric>"
)
REF = Reference(text="Cut salt, exercise, see a doctor, sleep well, limit alcohol.", method="t")


def pair(body: dict[str, Any]) -> tuple[str, str]:
    """(criterion keyword, response text) of a judge request."""
    text = message_text(body)
    criterion = re.search(r"<criterion>\s*Mentions (\w+)", text).group(1)
    return criterion, re.search(r"<response>(.*?)</response>", text, re.S).group(1).strip()


def keyword_judge(body: dict[str, Any], k: int) -> str:
    criterion, response = pair(body)
    return f"<answer>{'yes' if criterion in response else 'no'}</answer>"


#: (criterion, rollout text) -> the faults of its 1st, 2nd, ... attempt; max_retries=2 allows 3
FAULTS: dict[tuple[str, str], list[Fault]] = {
    ("salt", "salt exercise doctor sleep alcohol"): [server_error(500)] * 3,  # fails for good
    ("exercise", "salt exercise"): [cut_json(), html_page()],  # recovers on the 3rd attempt
    ("doctor", "salt exercise"): [no_choices()],
    ("sleep", "sleep"): [rate_limited(http_date(1.0))],
    **{(w, "alcohol"): [html_page()] * 3 for w in KEYWORDS[:4]},  # 4 of 5 fail for good
}


@pytest.fixture
def judge_server() -> Iterator[FakeServer]:
    for server in run_fake_server():
        server.reply = keyword_judge
        server.plan = by_attempt(lambda body: FAULTS.get(pair(body), []))
        yield server


def group(pid: str, *texts: str) -> RolloutGroup:
    prompt = Prompt(id=pid, messages=[{"role": "user", "content": "q"}])
    return RolloutGroup(prompt, [Completion(text=t, token_ids=[1] * 5) for t in texts])


def test_faulty_judge_server_keeps_finished_verdicts_and_scores_nothing_it_lost(
    judge_server: FakeServer,
) -> None:
    judge = OpenAIBackend(
        {"base_url": judge_server.url, "api_key": "k", "max_retries": 2, "backoff": 0.01}
    )
    anchor = EchoBackend(script=lambda req, i: RUBRIC)
    reward = RubricReward(roles=Roles(EchoBackend(), anchor, judge))
    texts = ("salt exercise doctor sleep alcohol", "salt exercise", "sleep", "alcohol")
    groups = [group("a", *texts), group("b", "doctor")]

    out = reward.derive(groups, [REF, REF])  # no exception escapes

    assert [r.values for r in out] == [(None, 0.4, 0.2, None), (0.2,)]
    full, two, sleep, alcohol = out[0].details
    # one failed pair: the rollout is unscorable, its four finished verdicts are kept
    assert (full["n_failed"], full["unscorable"], full["n_met"]) == (1, True, 4)
    assert [v["met"] for v in full["verdicts"]] == [None, True, True, True, True]
    assert full["verdicts"][0]["failed"] is True and "500" in full["verdicts"][0]["error"]
    # recovered faults (cut JSON, HTML, no choices, 429 + HTTP date) cost nothing
    assert (two["n_unscorable"], two["score"]) == (0, 0.4)
    assert (sleep["n_unscorable"], sleep["score"]) == (0, 0.2)
    # one "yes" and four failed: not 1.0 (the old re-normalisation), no reward at all
    assert (alcohol["n_failed"], alcohol["n_met"], alcohol["score"]) == (4, 1, None)
    assert [v["failed"] for v in alcohol["verdicts"]] == [True] * 4 + [False]
    # the counts a run's metrics sum (judge/failed)
    assert sum(d["n_failed"] for r in out for d in r.details) == 5
    assert sum(d["unscorable"] for r in out for d in r.details) == 2
    # every (rollout, criterion) pair was asked; retries only for the injected faults
    posts = [pair(b) for b in judge_server.posts()]
    assert len(set(posts)) == 5 * 5
    assert len(posts) == 25 + 2 + 2 + 1 + 1 + 4 * 2
