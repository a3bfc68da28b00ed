"""Built-in aggregators: group of rollouts -> one reference."""

from cat_framework import hookimpl

AGGREGATORS = {
    "single": "cat_plugins.aggregators.single:SingleAggregator",
    "majority": "cat_plugins.aggregators.majority:MajorityAggregator",
    "synthesis": "cat_plugins.aggregators.synthesis:SynthesisAggregator",
    "minppl": "cat_plugins.aggregators.minppl:MinPPLAggregator",
    "best_of_n": "cat_plugins.aggregators.best_of_n:BestOfNAggregator",
    "mutual_predictability": (
        "cat_plugins.aggregators.mutual_predictability:MutualPredictabilityAggregator"
    ),
}


@hookimpl
def register_aggregators(register):
    for name, target in AGGREGATORS.items():
        register(target, name=name)
