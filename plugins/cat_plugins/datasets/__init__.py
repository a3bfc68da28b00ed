"""Built-in datasets: MATH-500, GSM8K, the HealthBench subset, any JSONL file."""

from cat_framework import hookimpl

DATASETS: dict[str, str] = {}


@hookimpl
def register_datasets(register):
    for name, target in DATASETS.items():
        register(target, name=name)
