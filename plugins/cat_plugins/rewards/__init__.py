"""Built-in reward derivers: groups + references -> per-rollout rewards."""

from cat_framework import hookimpl

REWARD_DERIVERS: dict[str, str] = {
    "programmatic": "cat_plugins.rewards.programmatic:ProgrammaticReward",
    "rubric": "cat_plugins.rewards.rubric:RubricReward",
    "human_rubric": "cat_plugins.rewards.human_rubric:HumanRubricReward",
    "judge": "cat_plugins.rewards.judge:JudgeReward",
}


@hookimpl
def register_reward_derivers(register):
    for name, target in REWARD_DERIVERS.items():
        register(target, name=name)
