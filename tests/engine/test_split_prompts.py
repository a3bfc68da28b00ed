"""A run reads each data split once: the data check at its start and its mode share the lists
(a hub download, a large file or an enumerated problem space is not read twice)."""

from __future__ import annotations

from cat_framework import ComponentParams, Dataset, Prompt, hookimpl, load_plugins
from cat_framework.engine.data_check import run_splits
from cat_framework.engine.split_prompts import split_prompts
from cat_framework.pipeline import load_pipeline
from cat_framework.runner import run_pipeline
from tests.helpers.echo_backend import EchoBackend

LOADS: list[int] = []  # the start of each load


class Counting(Dataset):
    """Four sums from ``start``; every load is counted."""

    name = "counting"

    class Params(ComponentParams):
        start: int = 0

    def load(self) -> list[Prompt]:
        LOADS.append(self.params.start)
        return [
            Prompt(f"q{i}", ({"role": "user", "content": f"What is {i} + {i}?"},), str(2 * i))
            for i in range(self.params.start, self.params.start + 4)
        ]


class Plugin:
    @hookimpl
    def register_datasets(self, register):
        register(Counting)

    @hookimpl
    def register_backends(self, register):
        register(EchoBackend)


def pipeline(tmp_path, plugins):
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: once\nmode: evaluate\nmodels:\n  policy: {backend: echo, replies: ['4']}\n"
        "data:\n  train: {dataset: counting}\n  eval: {dataset: counting, start: 10}\n"
        "rollouts: {n: 2, max_new_tokens: 4}\naggregator: {name: majority}\n"
    )
    return load_pipeline(path, plugins=plugins)


def test_the_check_and_the_mode_read_each_split_once(tmp_path):
    plugins = load_plugins(entry_points=False, extra=[("counting", Plugin())])
    LOADS.clear()
    run_pipeline(pipeline(tmp_path, plugins), plugins=plugins, run_dir=tmp_path / "run")
    assert (tmp_path / "run" / "data.json").exists()  # the data check ran
    assert '"completed"' in (tmp_path / "run" / "status.json").read_text()
    assert sorted(LOADS) == [0, 10]  # was [0, 10, 10]: the evaluation loaded data.eval again


def test_the_lists_are_shared_per_pipeline_and_not_between_pipelines(tmp_path):
    plugins = load_plugins(entry_points=False, extra=[("counting", Plugin())])
    LOADS.clear()
    one = pipeline(tmp_path, plugins)
    train, eval_ = run_splits(one)
    assert split_prompts(one, "train")[1] is train and split_prompts(one, "eval")[1] is eval_
    assert [p.id for p in eval_] == ["q10", "q11", "q12", "q13"]
    split_prompts(pipeline(tmp_path, plugins), "train")  # another pipeline loads its own
    assert LOADS == [0, 10, 0]
