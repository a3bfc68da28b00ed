"""Built-in datasets: MATH-500, GSM8K, HealthBench, any JSONL file, any Hugging Face data set."""

from cat_framework import hookimpl

DATASETS: dict[str, str] = {
    "math500": "cat_plugins.datasets.math500:Math500Dataset",
    "gsm8k": "cat_plugins.datasets.gsm8k:Gsm8kDataset",
    "healthbench": "cat_plugins.datasets.healthbench:HealthBenchDataset",
    "jsonl": "cat_plugins.datasets.jsonl:JsonlDataset",
    "hf": "cat_plugins.datasets.hf:HfDataset",
    "arithmetic": "cat_plugins.datasets.arithmetic:ArithmeticDataset",
}


@hookimpl
def register_datasets(register):
    for name, target in DATASETS.items():
        register(target, name=name)
