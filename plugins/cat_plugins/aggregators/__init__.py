"""Built-in aggregators: group of rollouts -> one reference."""

from cat_framework import hookimpl

AGGREGATORS = {
    "single": "cat_plugins.aggregators.single:SingleAggregator",
}


@hookimpl
def register_aggregators(register):
    for name, target in AGGREGATORS.items():
        register(target, name=name)
