"""Unscorable rewards (issue 10 item 2, issue 9 item 6): an unparsed or failed verdict is never a
"no", never silently re-normalised away, and a failed judge request costs only its own items.

Scripted backends here; the same paths over real HTTP with injected faults are in
``test_judge_over_http.py``.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from cat_framework import (
    BackendError,
    Completion,
    Criterion,
    GenerationRequest,
    Prompt,
    Reference,
    Roles,
    RolloutGroup,
)
from cat_plugins.rewards.human_rubric import HumanRubricReward
from cat_plugins.rewards.judge import JudgeReward
from cat_plugins.rewards.judging import JudgeAnswer, ask_batched, assess
from cat_plugins.rewards.length_penalty import LengthPenalty, penalize
from cat_plugins.rewards.rubric import RubricReward
from cat_plugins.rewards.xml_parsing import parse_verdict
from tests.helpers.echo_backend import EchoBackend
from tests.helpers.flaky_backend import FlakyBackend

KEYWORDS = ("salt", "exercise", "doctor", "sleep", "alcohol")
REF = Reference(text="Cut salt, exercise, see a doctor, sleep well, limit alcohol.", method="t")


def content(req: GenerationRequest) -> str:
    return "\n".join(m["content"] for m in req.messages or ())


def rubric_xml(req: GenerationRequest = None, i: int = 0) -> str:
    return (
        "<rubric>" + "".join(f"<criterion>Mentions {w}</criterion>" for w in KEYWORDS) + "</rubric>"
    )


def criterion_of(req: GenerationRequest) -> str:
    return re.search(r"<criterion>\s*Mentions (\w+)", content(req)).group(1)


def response_of(req: GenerationRequest) -> str:
    return re.search(r"<response>(.*?)</response>", content(req), re.S).group(1)


def keyword_judge(req: GenerationRequest, i: int) -> str:
    return f"<answer>{'yes' if criterion_of(req) in response_of(req) else 'no'}</answer>"


def group(pid: str, *texts: str, tokens: int = 10) -> RolloutGroup:
    prompt = Prompt(id=pid, messages=[{"role": "user", "content": "q"}])
    return RolloutGroup(prompt, [Completion(text=t, token_ids=[1] * tokens) for t in texts])


def rubric_reward(judge: Any, anchor: Any = None, **params: Any) -> RubricReward:
    roles = Roles(EchoBackend(), anchor or EchoBackend(script=rubric_xml), judge)
    return RubricReward(params, roles=roles)


# ------------------------------------------------------------------------------ the rule


@pytest.mark.parametrize(
    ("values", "failed", "share", "unscorable", "n_scored"),
    [
        ([True, False, True], 0, 0.0, False, 3),
        ([True, None, None, None, None], 0, 0.0, True, 0),  # issue 10's "1.0, not 0.2"
        ([True, None, True, True, True], 0, 0.0, True, 0),  # any unscorable verdict, at 0.0
        ([True, None, True, True, True], 0, 0.2, False, 4),  # share 1/5 is not above 0.2
        ([True, None, None, True, True], 0, 0.2, True, 0),  # 2/5 is
        ([None, None], 0, 1.0, True, 0),  # none scorable: never scored, whatever the share
        ([True, None], 1, 0.5, False, 1),  # a failed request counts like an unparsed output
        ([], 0, 1.0, True, 0),  # no criteria at all (a failed rubric)
    ],
)
def test_assess(
    values: list[bool | None], failed: int, share: float, unscorable: bool, n_scored: int
) -> None:
    answers = [JudgeAnswer(v, ("raw",)) for v in values]
    for k in range(failed):  # the last `failed` None answers are failed requests
        i = len(answers) - 1 - k
        answers[i] = JudgeAnswer(None, (), "503")
    check = assess(answers, share)
    assert (check.unscorable, check.n_scored) == (unscorable, n_scored)
    assert check.n_failed == failed
    assert check.n_unscorable == sum(v is None for v in values)


def test_length_penalty_never_scores_an_unscorable_rollout() -> None:
    assert penalize(None, 10**6, LengthPenalty(max_tokens=3, mode="replace")) is None
    assert penalize(None, 10**6, LengthPenalty(max_tokens=3, mode="add")) is None
    assert penalize(0.5, 4, LengthPenalty(max_tokens=3, mode="replace")) == -1.0


# ------------------------------------------------------------------------------ rubric


def test_unparsed_verdicts_do_not_inflate_the_rubric_reward() -> None:
    """One "yes" and four unparsed verdicts scored 1.0 before: now the rollout is unscorable."""

    def judge(req: GenerationRequest, i: int) -> str:
        return "<answer>yes</answer>" if criterion_of(req) == "salt" else "hmm"

    (out,) = rubric_reward(EchoBackend(script=judge), max_judge_retries=0).derive(
        [group("a", "salt")], [REF]
    )
    assert out.values == (None,)
    d = out.details[0]
    assert (d["score"], d["unscorable"], d["unscorable_reason"]) == (None, True, "verdicts")
    assert (d["n_unscorable"], d["n_unparsed"], d["n_failed"], d["n_scored"]) == (4, 4, 0, 0)
    assert [v["met"] for v in d["verdicts"]] == [True, None, None, None, None]
    assert not any(v["failed"] for v in d["verdicts"])


def test_under_the_share_the_reward_is_over_scorable_criteria_and_says_so() -> None:
    def judge(req: GenerationRequest, i: int) -> str:
        return "hmm" if criterion_of(req) == "sleep" else keyword_judge(req, i)

    reward = rubric_reward(EchoBackend(script=judge), max_judge_retries=0, max_unscorable_share=0.2)
    (out,) = reward.derive([group("a", "salt exercise", "sleep doctor")], [REF])
    assert out.values == (0.5, 0.25)
    d = out.details[1]
    assert (d["n_criteria"], d["n_scored"], d["n_unscorable"], d["unscorable"]) == (5, 4, 1, False)


def test_failed_judge_requests_cost_only_their_rollouts() -> None:
    judge = FlakyBackend(
        keyword_judge,
        fails=lambda req: criterion_of(req) == "doctor" and "broken" in response_of(req),
    )
    reward = rubric_reward(judge, max_judge_retries=1)
    groups = [group("a", "salt exercise", "broken salt"), group("b", "doctor sleep")]
    out = reward.derive(groups, [REF, REF])  # no exception escapes
    assert [r.values for r in out] == [(0.4, None), (0.4,)]
    d = out[0].details[1]
    assert (d["n_failed"], d["n_unparsed"], d["unscorable"]) == (1, 0, True)
    doctor = d["verdicts"][2]
    assert doctor["met"] is None and doctor["failed"] is True and "503" in doctor["error"]
    assert [v["met"] for v in d["verdicts"]] == [True, False, None, False, False]  # kept
    # a failed request is not re-asked by the reward: the backend already retried it
    assert [len(c) for c in judge.calls] == [15]


def test_failed_rubric_proposal_makes_the_group_unscorable() -> None:
    anchor = FlakyBackend(rubric_xml, fails=lambda req: "second" in content(req))
    judge = EchoBackend(script=keyword_judge)
    reward = rubric_reward(judge, anchor)
    refs = [REF, Reference(text=REF.text + " (second)", method="t")]
    out = reward.derive([group("a", "salt"), group("b", "salt", "doctor")], refs)
    assert [r.values for r in out] == [(0.2,), (None, None)]
    d = out[1].details[0]
    assert (d["rubric_status"], d["unscorable_reason"], d["rubric"]) == (
        "failed",
        "rubric_failed",
        [],
    )
    assert "503" in d["rubric_error"]
    assert len(judge.calls[0]) == 5  # only group a's pairs were judged


def test_unscorable_fallback_replaces_zero() -> None:
    anchor = EchoBackend(
        script=lambda req, i: "<rubric><criterion>Mentions salt</criterion></rubric>"
    )
    reward = rubric_reward(EchoBackend(script=keyword_judge), anchor, fallback="unscorable")
    (out,) = reward.derive([group("a", "salt", "doctor")], [REF])
    assert out.values == (None, None)
    (out,) = rubric_reward(EchoBackend(script=keyword_judge), anchor).derive(
        [group("a", "salt", "doctor")], [REF]
    )
    assert out.values == (1.0, 0.0) and out.details[0]["rubric_status"] == "partial"


def test_a_judge_backend_that_fails_whole_batches_still_raises() -> None:
    """Only per-request failures become unscorable; a backend that cannot run at all (a wrong
    key, a dead in-process model) still ends the run with its message."""

    class Broken(EchoBackend):
        def generate(self, requests):
            raise BackendError("401 (check $OPENAI_API_KEY)")

    with pytest.raises(BackendError, match="401"):
        ask_batched(Broken(), [[{"role": "user", "content": "q"}]], parse_verdict, max_new_tokens=4)


# ------------------------------------------------------------------------------ human_rubric

HB_RUBRIC = [Criterion("A", 7), Criterion("B", 5), Criterion("C", 10), Criterion("D", -6)]


def letter_grader(req: GenerationRequest, i: int) -> str:
    text = req.messages[-1]["content"]
    letter = re.search(r"# Rubric item\n\[-?\d+\] (\w)", text).group(1)
    answer = re.search(r"assistant: (.*?)\n\n# Rubric item", text, re.S).group(1)
    return f'{{"criteria_met": {"true" if letter in answer else "false"}}}'


def hb_group(*texts: str, rubric: Any = HB_RUBRIC) -> RolloutGroup:
    prompt = Prompt(id="p", messages=[{"role": "user", "content": "Q?"}], rubric=rubric)
    return RolloutGroup(prompt, [Completion(text=t, token_ids=[0]) for t in texts])


def hb_reward(judge: Any, **params: Any) -> HumanRubricReward:
    return HumanRubricReward(params, roles=Roles(EchoBackend(), EchoBackend(), judge))


@pytest.mark.parametrize(("share", "expected"), [(0.0, (None, 1.0)), (0.25, (17 / 17, 1.0))])
def test_human_rubric_unscorable_items(share: float, expected: tuple[Any, ...]) -> None:
    judge = FlakyBackend(
        letter_grader,
        fails=lambda req: "[5] B" in req.messages[-1]["content"] and "AC" in content(req),
    )
    (out,) = hb_reward(judge, max_unscorable_share=share).derive([hb_group("AC", "ABC")], [REF])
    assert out.values == expected
    d = out.details[0]
    assert (d["n_failed"], d["unscorable"]) == (1, share == 0.0)
    assert d["verdicts"][1]["failed"] is True


def test_human_rubric_without_positive_points_is_unscorable_not_zero() -> None:
    reward = hb_reward(EchoBackend(script=letter_grader))
    (out,) = reward.derive([hb_group("D", rubric=[Criterion("D", -3)])], [REF])
    assert out.values == (None,)
    assert out.details[0]["unscorable_reason"] == "no_positive_points"


def test_human_rubric_as_scorer_returns_none_for_an_unscorable_reference() -> None:
    """Evaluation grades references with grade(): an unscorable one is None, never 0."""
    reward = hb_reward(EchoBackend(script=lambda req, i: "no idea"), max_judge_retries=0)
    (graded,) = reward.grade([(hb_group("x").prompt, "AC")])
    assert graded.score is None and graded.details()["n_unparsed"] == 4


# ------------------------------------------------------------------------------ judge


def test_judge_reward_unparsed_failed_and_no_reference_are_unscorable() -> None:
    def script(req: GenerationRequest, i: int) -> str:
        return "perhaps" if "maybe" in response_of(req) else "<answer>yes</answer>"

    judge = FlakyBackend(script, fails=lambda req: "down" in response_of(req))
    reward = JudgeReward({"max_judge_retries": 0}, roles=Roles(EchoBackend(), EchoBackend(), judge))
    groups = [group("a", "fine", "maybe", "down"), group("b", "fine")]
    out = reward.derive(groups, [REF, Reference(text=" ", method="t")])
    assert [r.values for r in out] == [(1.0, None, None), (None,)]
    reasons = [d["unscorable_reason"] for r in out for d in r.details]
    assert reasons == [None, "verdicts", "verdicts", "no_reference"]
    assert [d["n_failed"] for d in out[0].details] == [0, 0, 1]
    assert out[0].details[2]["verdicts"][0]["failed"] is True
