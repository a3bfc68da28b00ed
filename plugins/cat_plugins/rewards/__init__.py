"""Built-in reward derivers: groups + references -> per-rollout rewards."""

from cat_framework import hookimpl

REWARD_DERIVERS: dict[str, str] = {
    "programmatic": "cat_plugins.rewards.programmatic:ProgrammaticReward",
}


@hookimpl
def register_reward_derivers(register):
    for name, target in REWARD_DERIVERS.items():
        register(target, name=name)
