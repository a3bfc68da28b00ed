"""The judge scheduler (dedupe, verdict cache, prefix order) with scripted judges, plus one
(``slow``) run with the embedded model as judge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cat_framework import Completion, GenerationRequest, Prompt, Roles, RolloutGroup
from cat_plugins.rewards.judge_schedule import JudgeScheduler, conversation_text, judge_scheduler
from cat_plugins.rewards.judging import chat
from cat_plugins.rewards.rubric import RubricReward
from cat_plugins.rewards.xml_parsing import parse_verdict
from tests.helpers.echo_backend import EchoBackend
from tests.helpers.flaky_backend import FlakyBackend
from tests.plugins.rewards.test_rubric import REF, content, keyword_judge, make_group, make_reward

# rollouts of a group repeat (short answers): 3 distinct texts among 6 rollouts
GROUPS = [
    make_group("a", "salt", "exercise and salt", "salt", "nothing", "salt", "exercise and salt"),
    make_group("b", "see a doctor", "sleep", "see a doctor", "alcohol and salt"),
]


def texts(call: list[GenerationRequest]) -> list[str]:
    return [conversation_text(r.messages or ()) for r in call]


def judge_texts(call: list[GenerationRequest]) -> list[str]:
    return [content(r) for r in call]


# ------------------------------------------------------------------------------ order + dedupe


def test_one_call_sorted_so_shared_prefixes_are_adjacent() -> None:
    reward, _, judge = make_reward()
    reward.derive(GROUPS, [REF, REF])
    (call,) = judge.calls  # every question of the step in one generate call
    assert texts(call) == sorted(texts(call))
    # rubric_judge puts the response first: each response's 5 criteria form one run
    responses = [content(r).split("<response>")[1].split("</response>")[0] for r in call]
    runs = [resp for i, resp in enumerate(responses) if i == 0 or resp != responses[i - 1]]
    assert len(runs) == len(set(runs)) == 6


def test_criterion_first_template_groups_criterion_major(tmp_path: Path) -> None:
    template = tmp_path / "criterion_first.txt"
    template.write_text(
        "Criterion:\n<criterion>$criterion</criterion>\n"
        "<response>$response</response>\nAnswer <answer>yes</answer> or <answer>no</answer>."
    )
    reward, _, judge = make_reward(judge_template=str(template))
    reward.derive(GROUPS, [REF, REF])
    (call,) = judge.calls
    criteria = [content(r).split("<criterion>")[1].split("</criterion>")[0] for r in call]
    runs = [c for i, c in enumerate(criteria) if i == 0 or c != criteria[i - 1]]
    assert len(runs) == len(set(runs)) == 5  # each criterion's questions are adjacent


def test_identical_rollouts_are_asked_once_and_fanned_out() -> None:
    reward, _, judge = make_reward()
    (out,) = reward.derive([make_group("a", "salt", "salt", "salt", "salt")], [REF])
    assert [len(c) for c in judge.calls] == [5]  # 4 identical rollouts x 5 criteria -> 5
    assert out.values == (0.2, 0.2, 0.2, 0.2)
    assert len({repr(d) for d in out.details}) == 1
    stats = judge_scheduler(reward).last.to_dict()
    assert stats == {
        "judge_requests": 20,
        "judge_unique": 5,
        "judge_cache_hits": 0,
        "judge_asked": 5,
    }


# ------------------------------------------------------------------------------ cache


def test_second_step_asks_only_new_pairs() -> None:
    reward, anchor, judge = make_reward()
    first = reward.derive(GROUPS, [REF, REF])
    assert [len(c) for c in judge.calls] == [6 * 5]
    again = reward.derive(GROUPS, [REF, REF])
    assert [len(c) for c in judge.calls] == [30]  # nothing asked: every verdict was cached
    assert [r.values for r in again] == [r.values for r in first]
    assert [r.details for r in again] == [r.details for r in first]
    assert len(anchor.calls) == 2  # the rubric is still proposed every step
    reward.derive([make_group("c", "salt", "brand new text")], [REF])
    assert [len(c) for c in judge.calls] == [30, 5]  # only "brand new text" is asked
    assert judge_scheduler(reward).last.cache_hits == 5
    total = judge_scheduler(reward).total
    assert (total.requests, total.unique, total.cache_hits, total.asked) == (110, 70, 35, 35)


def test_unparsed_and_retried_answers_are_not_cached() -> None:
    def judge(req: GenerationRequest, i: int) -> str:
        text = content(req)
        if "Mentions sleep" in text:
            return "hmm"  # never parses
        if "Mentions doctor" in text and req.temperature == 0.0:
            return "?"  # parses only on a (sampled) retry
        return keyword_judge(req, i)

    reward, _, backend = make_reward(judge_script=judge, max_judge_retries=1)
    group = make_group("a", "salt sleep doctor")
    reward.derive([group], [REF])
    assert [len(c) for c in backend.calls] == [5, 2]
    (out,) = reward.derive([group], [REF])
    # salt, exercise, alcohol cached; sleep (unparsed) and doctor (needed a retry) asked again
    assert [len(c) for c in backend.calls] == [5, 2, 2, 2]
    assert {"Mentions sleep", "Mentions doctor"} == {
        content(r).split("<criterion>\n")[1].split("\n")[0] for r in backend.calls[2]
    }
    assert out.details[0]["n_unparsed"] == 1 and out.details[0]["n_retried"] == 2


def test_failed_requests_are_not_cached() -> None:
    flaky = FlakyBackend(keyword_judge, fails=lambda req: "Mentions salt" in content(req))
    scheduler = JudgeScheduler()
    convs = [chat(f"<response>salt</response><criterion>Mentions {w}</criterion>") for w in "ab"]
    convs.append(chat("<response>salt</response><criterion>Mentions salt</criterion>"))
    first = scheduler.ask(flaky, convs, parse_verdict, max_new_tokens=4)
    assert first[2].failed and not first[0].failed
    scheduler.ask(flaky, convs, parse_verdict, max_new_tokens=4)
    assert [len(c) for c in flaky.calls] == [3, 1]  # only the failed one again
    assert len(scheduler) == 2


def test_sampled_judge_and_policy_as_judge_are_not_cached() -> None:
    reward, _, judge = make_reward(judge_temperature=0.5)
    group = make_group("a", "salt", "salt")
    reward.derive([group], [REF])
    reward.derive([group], [REF])
    assert [len(c) for c in judge.calls] == [5, 5]  # deduplicated, but asked every step

    policy = EchoBackend(script=keyword_judge)
    _, anchor, _ = make_reward()
    trained = RubricReward({}, roles=Roles(policy=policy, anchor=anchor, judge=policy))
    trained.derive([group], [REF])
    trained.derive([group], [REF])
    assert [len(c) for c in policy.calls] == [5, 5]  # its weights change: nothing is reused


def test_cache_is_bounded_lru() -> None:
    judge = EchoBackend(script=keyword_judge)
    scheduler = JudgeScheduler(cache_size=2)
    convs = [chat(f"<response>x</response><criterion>Mentions {w}</criterion>") for w in "abc"]
    scheduler.ask(judge, convs, parse_verdict, max_new_tokens=4)
    assert len(scheduler) == 2
    scheduler.ask(judge, convs[1:], parse_verdict, max_new_tokens=4)
    assert len(judge.calls) == 1  # b and c were kept
    scheduler.ask(judge, convs[:1], parse_verdict, max_new_tokens=4)
    assert [len(c) for c in judge.calls] == [3, 1]
    # a different token budget is another judge: not a hit
    scheduler.ask(judge, convs[:1], parse_verdict, max_new_tokens=8)
    assert [len(c) for c in judge.calls] == [3, 1, 1]


# ------------------------------------------------------------------------------ equivalence


def flaky_judge(req: GenerationRequest, i: int) -> str:
    """Deterministic in the request alone: some criteria unparsed greedy, parsed on retry k=2."""
    text = content(req)
    if "Mentions exercise" in text and (req.seed or 0) < 2:
        return "unsure"
    if "Mentions alcohol" in text:
        return "no idea"
    return keyword_judge(req, i)


@pytest.mark.parametrize("share", [0.0, 0.4])
def test_rewards_identical_to_the_unscheduled_path(share: float) -> None:
    steps = [GROUPS, [make_group("c", "salt", "exercise and salt", "sleep well", "salt")]]
    outs: dict[bool, list[Any]] = {}
    for schedule in (True, False):
        reward, _, judge = make_reward(
            judge_script=flaky_judge,
            judge_schedule=schedule,
            max_judge_retries=2,
            max_unscorable_share=share,
        )
        outs[schedule] = [reward.derive(g, [REF] * len(g)) for g in steps]
        if not schedule:  # the plain path asks every question in rollout-major order
            assert len(judge.calls[0]) == 6 * 5 + 4 * 5
            assert texts(judge.calls[0]) != sorted(texts(judge.calls[0]))
    assert outs[True] == outs[False]


# ------------------------------------------------------------------------------ real model


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_embedded_model_as_judge_gives_the_plain_rewards() -> None:
    """The embedded SmolLM2-135M as judge: the scheduled path (sorted, deduplicated, then cached)
    gets the plain batched path's greedy verdicts and rewards, and step 2 re-asks only what did
    not parse."""
    pytest.importorskip("transformers")
    from cat_plugins.backends.transformers_backend import TransformersBackend

    model = TransformersBackend({"model": "default", "device": "cpu"})
    calls: list[int] = []
    real_generate = model.generate

    def counting(requests: Any) -> Any:
        calls.append(len(requests))
        return real_generate(requests)

    model.generate = counting  # type: ignore[method-assign]
    criteria = ("States the correct final sum.", "Shows the addition step.", "Is concise.")
    rubric = "<rubric>" + "".join(f"<criterion>{c}</criterion>" for c in criteria) + "</rubric>"
    anchor = EchoBackend(script=lambda req, i: rubric)
    prompt = Prompt(id="q", messages=[{"role": "user", "content": "17 + 25?"}])
    texts = ("42", "17 + 25 = 42", "42", "I think it is 32.")
    groups = [RolloutGroup(prompt=prompt, rollouts=[Completion(text=t) for t in texts])]
    # a 135M judge leaves some answers unparsed: score rollouts over the parsed ones
    params = {
        "judge_max_new_tokens": 16,
        "max_judge_retries": 0,
        "max_unscorable_share": 1.0,
        "judge_sees_question": True,
        "min_criteria": 3,
    }
    plain = RubricReward(
        {**params, "judge_schedule": False}, roles=Roles(EchoBackend(), anchor, model)
    )
    reward = RubricReward(params, roles=Roles(EchoBackend(), anchor, model))
    expected = plain.derive(groups, [REF])
    assert calls == [12]
    assert reward.derive(groups, [REF]) == expected and calls == [12, 9]  # 3 distinct x 3
    assert reward.derive(groups, [REF]) == expected
    unparsed = 9 - len(judge_scheduler(reward))
    assert calls[2:] == ([unparsed] if unparsed else [])
    assert any(v is not None for v in expected[0].values)  # the judge's answers parse
