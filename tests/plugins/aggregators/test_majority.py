"""The majority-vote aggregator and the single baseline (no models: rollouts are built directly)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cat_framework import Completion, Prompt, Reference, RolloutGroup, hookimpl, load_plugins
from cat_framework.pipeline import PipelineValidationError, load_pipeline
from cat_plugins.aggregators.majority import MajorityAggregator
from cat_plugins.aggregators.single import SingleAggregator
from tests.helpers.echo_backend import EchoBackend
from tests.helpers.gold_trap import trap_prompt


def group(*texts: str, prompt: Prompt | None = None) -> RolloutGroup:
    prompt = prompt or Prompt(id="q", messages=[{"role": "user", "content": "?"}])
    return RolloutGroup(prompt=prompt, rollouts=[Completion(text=t) for t in texts])


def vote(*texts: str, **params: Any) -> Reference:
    (ref,) = MajorityAggregator(params).aggregate([group(*texts)])
    return ref


def test_equivalent_answers_share_a_cluster() -> None:
    ref = vote("so \\boxed{1/2}", "\\boxed{0.5}", "\\boxed{3}", "thus \\boxed{\\frac{1}{2}}")
    assert ref.method == "majority"
    # the cluster's reference is its smallest normalised answer ("0.5"), not the first sampled
    assert (ref.text, ref.answer) == ("\\boxed{0.5}", "0.5")
    assert ref.details == {
        "answers": ["1/2", "0.5", "3", "\\frac{1}{2}"],
        "votes": [
            {"answer": "0.5", "count": 3, "members": [0, 1, 3]},
            {"answer": "3", "count": 1, "members": [2]},
        ],
        "no_answer": 0,
        "tie": False,
        "index": 1,
    }


def test_equivalence_beats_string_plurality() -> None:
    """String equality alone would pick "7" (2 votes); equivalence finds 3 votes for one half."""
    texts = ("\\boxed{7}", "\\boxed{0.5}", "\\boxed{\\frac12}", "\\boxed{7}", "\\boxed{2/4}")
    ref = vote(*texts)
    assert ref.answer == "0.5"
    assert ref.details["index"] == 1
    assert [v["count"] for v in ref.details["votes"]] == [3, 2]
    string = vote(*texts, mode="string")
    assert string.answer == "7"
    assert [v["count"] for v in string.details["votes"]] == [2, 1, 1, 1]


def test_tie_is_broken_by_the_answer_not_the_order() -> None:
    ref = vote("\\boxed{3}", "\\boxed{2}", "\\boxed{2}", "\\boxed{3}")
    assert (ref.answer, ref.details["index"], ref.details["tie"]) == ("2", 1, True)
    ref = vote("no idea", "\\boxed{7}", "\\boxed{5}", "\\boxed{5}", "\\boxed{7}", fallback="none")
    assert (ref.answer, ref.details["index"], ref.details["tie"]) == ("5", 2, True)
    assert ref.details["no_answer"] == 1
    assert ref.details["votes"] == [
        {"answer": "5", "count": 2, "members": [2, 3]},
        {"answer": "7", "count": 2, "members": [1, 4]},
    ]


def test_all_distinct_answers_pick_the_smallest() -> None:
    ref = vote("\\boxed{3}", "\\boxed{1}", "\\boxed{2}")
    assert (ref.answer, ref.details["index"], ref.details["tie"]) == ("1", 1, True)


ORDER_SENSITIVE = (
    # math-verify is asymmetric: verify(gold="-2<=x<=7", pred="x in [-2,7]") holds, the reverse
    # does not. Keyed on a cluster's first member as gold, the first two shared a cluster (and
    # won the tie against 5) only when the inequality was sampled first.
    "so \\boxed{-2 \\le x \\le 7}",
    "\\boxed{x \\in [-2,7]}",
    "\\boxed{5}",
    "The final answer is $5$.",
    "I am not sure.",
    "hmm",
)


def test_winner_does_not_depend_on_rollout_order() -> None:
    import itertools

    base = vote(*ORDER_SENSITIVE)
    assert base.answer == "5"
    for order in itertools.permutations(range(len(ORDER_SENSITIVE))):
        ref = vote(*(ORDER_SENSITIVE[i] for i in order))
        assert (ref.text, ref.answer) == (base.text, base.answer), order
        assert [v["count"] for v in ref.details["votes"]] == [2, 1, 1]


def test_equivalence_for_votes_is_symmetric() -> None:
    ref = vote("\\boxed{-2 \\le x \\le 7}", "\\boxed{x \\in [-2,7]}")
    assert [v["count"] for v in ref.details["votes"]] == [1, 1]


CHAIN = (  # issue 22: the bare "1,2" was read as 1.2 and as {1, 2}, and linked both
    ("\\boxed{1.2}",) * 2 + ("\\boxed{1,2}",) + ("\\boxed{\\{1,2\\}}",) * 2 + ("\\boxed{7}",) * 3
)


def test_an_ambiguous_answer_chains_no_values_together() -> None:
    """Before: one 5-vote cluster (1.2 + 1,2 + {1,2}) beat 7 with 3 votes."""
    ref = vote(*CHAIN)
    assert ref.details["votes"] == [
        {"answer": "1,2", "count": 3, "members": [2, 3, 4]},
        {"answer": "7", "count": 3, "members": [5, 6, 7]},
        {"answer": "1.2", "count": 2, "members": [0, 1]},
    ]
    assert ref.details["tie"] is True
    without_one_set = vote(*CHAIN[:4], *CHAIN[5:])  # before: 4 votes beat 7's 3
    assert (without_one_set.answer, without_one_set.details["tie"]) == ("7", False)


def test_no_chain_in_any_rollout_order() -> None:
    import itertools

    texts = (*CHAIN[:4], *CHAIN[5:])
    for order in itertools.islice(itertools.permutations(range(len(texts))), 0, None, 89):
        ref = vote(*(texts[i] for i in order))
        assert ref.answer == "7", order
        assert sorted(v["count"] for v in ref.details["votes"]) == [2, 2, 3], order


def test_rollouts_without_answers_do_not_vote() -> None:
    ref = vote("I give up", "\\boxed{4}", "", "hmm", fallback="none")
    assert (ref.answer, ref.details["index"]) == ("4", 1)
    assert ref.details["answers"] == [None, "4", None, None]
    assert ref.details["no_answer"] == 3
    assert ref.details["tie"] is False


def test_uncommitted_last_numbers_do_not_vote_by_default() -> None:
    """Before: the default ``number`` fallback let "we get 7" and "so 7" outvote a boxed 3."""
    ref = vote("\\boxed{3}", "we get 7 apples", "so 7", "\\boxed{3}", "hmm 7 or so")
    assert ref.answer == "3"
    assert ref.details["answers"] == ["3", None, None, "3", None]
    assert ref.details["no_answer"] == 3
    assert vote("we get 7", "so 7", "\\boxed{3}", fallback="number").answer == "7"


def test_no_answer_at_all_gives_an_empty_reference() -> None:
    ref = vote("I give up", "no clue", fallback="none")
    assert ref == Reference(
        text="",
        method="majority",
        answer=None,
        details={
            "answers": [None, None],
            "votes": [],
            "no_answer": 2,
            "tie": False,
            "index": None,
        },
    )


def test_fallback_extraction_and_gsm8k_numbers() -> None:
    texts = ("The answer is 1,000.", "#### 1000", "\\boxed{999}", "so 1000 in total")
    ref = vote(*texts, fallback="number")
    assert ref.answer == "1000"
    assert ref.details["answers"] == ["1000", "1000", "999", "1000"]
    assert ref.details["votes"][0] == {"answer": "1000", "count": 3, "members": [0, 1, 3]}
    phrase_only = vote("The answer is 1,000.", "\\boxed{999}", "so 1000 in total")
    assert phrase_only.details["answers"] == ["1000", "999", None]


def test_several_boxes_are_one_answer() -> None:
    """ "\\boxed{2} and \\boxed{5}" answers the set {2, 5}; only the last box was read before."""
    ref = vote("\\boxed{2} and \\boxed{5}", "$\\{5, 2\\}$ so \\boxed{\\{2,5\\}}", "\\boxed{5}")
    assert ref.details["answers"][0] == "2, 5"
    assert [v["count"] for v in ref.details["votes"]] == [2, 1]


def test_batches_keep_group_order() -> None:
    groups = [group("\\boxed{1}", "\\boxed{2}", "\\boxed{2}"), group("\\boxed{x}", "\\boxed{x}")]
    refs = MajorityAggregator().aggregate(groups)
    assert [r.answer for r in refs] == ["2", "x"]
    assert MajorityAggregator().aggregate([]) == []


def test_never_reads_gold_answers() -> None:
    texts = ("\\boxed{4}", "\\boxed{5}", "\\boxed{4}")
    (trapped,) = MajorityAggregator().aggregate([group(*texts, prompt=trap_prompt())])
    (wrong_gold,) = MajorityAggregator().aggregate(
        [
            group(
                *texts,
                prompt=Prompt(id="q", messages=[{"role": "user", "content": "?"}], gold_answer="5"),
            )
        ]
    )
    assert trapped == wrong_gold
    assert trapped.answer == "4"
    with pytest.raises(AssertionError, match="gold_answer"):
        _ = trap_prompt().gold_answer  # the trap works


def test_params_are_described_and_strict() -> None:
    for name, field in MajorityAggregator.Params.model_fields.items():
        assert field.description, name
    with pytest.raises(ValueError, match="tie_break"):
        MajorityAggregator({"tie_break": "random"})


# --------------------------------------------------------------------------------- registration


def test_registered_and_math_only() -> None:
    plugins = load_plugins(entry_points=False)
    assert plugins.registry("aggregator").get("majority") is MajorityAggregator
    assert MajorityAggregator.tasks == frozenset({"math"})


class _Echo:
    @hookimpl
    def register_backends(self, register: Any) -> None:
        register(EchoBackend)


def test_majority_on_freeform_data_is_a_validation_error(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: hb\nmode: evaluate\nmodels:\n  policy: {backend: echo}\n"
        "data:\n  eval: {dataset: healthbench}\nrollouts: {n: 2, max_new_tokens: 8}\n"
        "eval:\n  aggregators: [single, majority]\n"
    )
    plugins = load_plugins(entry_points=False, extra=[("echo", _Echo())])
    with pytest.raises(PipelineValidationError) as err:
        load_pipeline(path, plugins=plugins)
    by_path = {issue.path: issue.message for issue in err.value.issues}
    assert "eval.aggregators[0].name" not in by_path  # single is fine on freeform
    assert by_path["eval.aggregators[1].name"] == (
        "aggregator 'majority' works on math tasks only, but dataset 'healthbench' is freeform"
    )


# ------------------------------------------------------------------------------------- single


def test_single_fills_the_extracted_answer() -> None:
    (ref,) = SingleAggregator().aggregate([group("so \\boxed{12}", "\\boxed{13}")])
    assert ref == Reference(
        text="so \\boxed{12}", method="single", answer="12", details={"index": 0}
    )
    (none,) = SingleAggregator({"fallback": "none"}).aggregate([group("about 12")])
    assert none.answer is None


def test_single_leaves_freeform_answers_empty() -> None:
    prompt = Prompt(id="c", messages=[{"role": "user", "content": "hi"}], meta={"task": "freeform"})
    (ref,) = SingleAggregator().aggregate([group("Drink 2 glasses of water.", prompt=prompt)])
    assert (ref.text, ref.answer) == ("Drink 2 glasses of water.", None)


def test_single_never_reads_gold_answers() -> None:
    (ref,) = SingleAggregator().aggregate([group("\\boxed{3}", prompt=trap_prompt())])
    assert ref.answer == "3"
