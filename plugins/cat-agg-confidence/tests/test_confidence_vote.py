from cat_agg_confidence import ConfidenceVote

from cat_framework import Completion, Prompt, RolloutGroup


def group(*rollouts):
    prompt = Prompt(id="q", messages=[{"role": "user", "content": "?"}])
    return RolloutGroup(prompt, [Completion(text=t, logprobs=lp) for t, lp in rollouts])


def test_confident_minority_beats_unsure_majority():
    g = group(
        (r"\boxed{3}", [-3.0, -3.0]),
        (r"\boxed{3}", [-3.0, -3.0]),
        (r"\boxed{4}", [-0.01, -0.01]),
    )
    (ref,) = ConfidenceVote().aggregate([g])
    assert ref.answer == "4" and ref.details["index"] == 2


def test_sharpness_zero_is_majority_vote():
    g = group(
        (r"\boxed{3}", [-3.0]),
        (r"\boxed{\frac{6}{2}}", [-3.0]),
        (r"\boxed{4}", [-0.01]),
    )
    (ref,) = ConfidenceVote({"sharpness": 0.0}).aggregate([g])
    assert ref.answer == "3"
    assert ref.details["scores"] == {"3": 2.0, "4": 1.0}
