"""Corpus rows: bad pipeline files, values and ``--set`` overrides, all caught by ``validate``."""

from __future__ import annotations

from pathlib import Path

from tests.reliability.corpus import Case, pipeline, validate

BOMB = "\n".join(
    ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
)
MERGE_BOMB = "\n".join(
    ["m0: &m0 {" + ", ".join(f"k{i}: 1" for i in range(10)) + "}"]
    + [f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 10)}]}}" for i in range(1, 8)]
)
DEEP_BLOCK = "".join(f"{'  ' * i}a:\n" for i in range(100)) + "  " * 100 + "x: 1\n"


def _not_a_model(tmp: Path) -> None:
    (tmp / "notamodel").mkdir()
    (tmp / "notamodel" / "README.md").write_text("my notes\n")


def _folder_as_dataset(tmp: Path) -> None:
    (tmp / "folder").mkdir()


def _eval_aggs(aggs: str) -> str:
    return pipeline(tail=f"eval:\n  aggregators: {aggs}\n")


FILE_CASES = [
    Case("binary-file", **validate(bytes(range(256)), "p.yaml:1:", "binary data")),
    Case(
        "latin1-file",
        **validate(pipeline().replace("rel", "caf\xe9").encode("latin-1"), "p.yaml:1:10:", "UTF-8"),
    ),
    Case("utf16-file", **validate(pipeline().encode("utf-16"), "p.yaml", "UTF-16")),
    Case("deep-flow-nesting", **validate("a: " + "[" * 2000 + "]" * 2000, "nested deeper than")),
    Case("deep-block-nesting", **validate(DEEP_BLOCK, "p.yaml:66:", "nested deeper than 64")),
    Case("alias-bomb", **validate(BOMB, "p.yaml:", "alias bomb")),
    Case("merge-key-bomb", **validate(MERGE_BOMB, "p.yaml:", "alias bomb")),
    Case("recursive-alias", **validate("a: &a [*a]\n", "p.yaml:1:", "cycle")),
    Case("yaml-syntax", **validate("name: x\n  mode: [", "p.yaml:2:", "YAML syntax error")),
    Case(
        "python-object-tag",
        **validate('name: !!python/object/apply:os.system ["true"]\n', "p.yaml:1:", "not allowed"),
    ),
    Case(
        "python-name-tag",
        **validate("name: !!python/name:os.system\n", "p.yaml:1:", "could not determine"),
    ),
    Case("top-level-list", **validate("- a\n- b\n", "p.yaml:1:1:", "must be a mapping")),
    Case("empty-file", **validate("# nothing\n", "p.yaml", "empty")),
    Case(
        "duplicate-key",
        **validate(pipeline() + "seed: 1\n", "p.yaml:10:1: seed:", "duplicate key 'seed'"),
    ),
    Case("complex-key", **validate("? [a, b]\n: 1\n", "p.yaml:1:", "plain name")),
    Case(
        "invalid-date",
        **validate(pipeline().replace("name: rel", "name: 2020-13-45"), "p.yaml:1:7:", "month"),
    ),
    Case("file-not-found", argv=("validate", "nope.yaml"), expect=("nope.yaml", "not found")),
    Case(
        "folder-as-pipeline",
        argv=("validate", "folder"),
        expect=("folder", "is a directory"),
        prepare=_folder_as_dataset,
        exit_code=2,
    ),
    Case("huge-file", **validate("# " + "x" * (5 * 2**20) + "\n", "p.yaml", "too large")),
]

SIZE_CASES = [
    Case(
        "rollouts-n-billion",
        **validate(
            pipeline(rollouts="{n: 1000000000, max_new_tokens: 8}"),
            "p.yaml:8:12: rollouts.n:",
            "less than or equal to 1024",
        ),
    ),
    Case(
        "rollouts-n-1e29-float",
        **validate(pipeline(rollouts="{n: 1.0e+29}"), "rollouts.n:", "at most 1024"),
    ),
    Case(
        "rollouts-n-1e29-string",
        **validate(pipeline(rollouts="{n: 1e29}"), "rollouts.n:", "valid integer"),
    ),
    Case(
        "max-new-tokens-1e23",
        **validate(
            pipeline(rollouts="{max_new_tokens: 1.0e+23}"), "rollouts.max_new_tokens:", "262144"
        ),
    ),
    Case("seed-1e40", **validate(pipeline(seed="1.0e+40"), "p.yaml:3:", "seed:", "4294967295")),
    Case("seed-negative", **validate(pipeline(seed="-1"), "p.yaml:3:", "greater than or equal")),
    Case("rollouts-n-zero", **validate(pipeline(rollouts="{n: 0}"), "rollouts.n:", "greater")),
    Case(
        "trainer-steps-huge",
        **validate(pipeline(tail="trainer: {steps: 1000000000000}\n"), "trainer.steps:"),
    ),
    Case(
        "eval-batch-size-huge",
        **validate(pipeline(tail="eval: {batch_size: 1000000000000}\n"), "eval.batch_size:"),
    ),
    Case(
        "dataset-limit-huge",
        **validate(
            pipeline(eval_data="{dataset: jsonl, path: data.jsonl, limit: 1000000000000}"),
            "p.yaml:7:",
            "data.eval.limit:",
        ),
    ),
    Case(
        "synthesis-max-new-tokens-huge",
        **validate(
            _eval_aggs("[{name: synthesis, max_new_tokens: 1000000000}]"),
            "eval.aggregators[0].max_new_tokens:",
        ),
    ),
]

CONFIG_CASES = [
    Case(
        "run-name-parent",
        **validate(
            pipeline().replace("{dir: runs}", "{dir: runs, run_name: ../victim}"),
            "p.yaml:9:",
            "output.run_name:",
            "plain folder name",
        ),
    ),
    Case(
        "run-name-absolute",
        **validate(
            pipeline().replace("{dir: runs}", "{dir: runs, run_name: /tmp/x}"), "output.run_name:"
        ),
    ),
    Case(
        "run-name-override",
        argv=("validate", "p.yaml", "--set", "output.run_name=a/../../b"),
        expect=("--set output.run_name=a/../../b", "plain folder name"),
        files={"p.yaml": pipeline(), "data.jsonl": "{}\n"},
        exit_code=2,
    ),
    Case(
        "run-with-run-name-parent",
        argv=("run", "p.yaml", "--set", "output.run_name=../victim"),
        expect=("output.run_name", "plain folder name"),
        files={"p.yaml": pipeline(), "data.jsonl": "{}\n"},
        exit_code=2,
        absent=("victim", "runs"),
    ),
    Case("no-aggregators", **validate(_eval_aggs("[]"), "eval.aggregators:", "at least 1")),
    Case(
        "unknown-aggregator",
        **validate(_eval_aggs("[synthesys]"), "eval.aggregators[0].name:", "'synthesis'"),
    ),
    Case(
        "train-without-reward",
        **validate(
            pipeline(mode="train").replace("  eval:", "  train:"), "reward", "needs a reward"
        ),
    ),
]

PATH_CASES = [
    Case(
        "dataset-path-missing",
        **validate(
            pipeline(eval_data="{dataset: jsonl, path: missing.jsonl}"),
            "p.yaml:7:",
            "data.eval.path:",
            "missing.jsonl",
            "not found",
        ),
    ),
    Case(
        "dataset-path-folder",
        **validate(
            pipeline(eval_data="{dataset: jsonl, path: folder}"), "data.eval.path:", "is a folder"
        ),
        prepare=_folder_as_dataset,
    ),
    Case(
        "model-folder-missing",
        **validate(
            pipeline(policy="{model: ./models/nope}"),
            "p.yaml:5:",
            "models.policy.model:",
            "no such folder",
        ),
    ),
    Case(
        "model-folder-not-a-model",
        **validate(
            pipeline(policy="{model: ./notamodel}"),
            "models.policy.model:",
            "not a model folder",
            "README.md",
        ),
        prepare=_not_a_model,
    ),
    Case(
        "model-path-is-a-file",
        **validate(
            pipeline(policy="{model: ./weights.bin}"),
            "models.policy.model:",
            "is a file",
            files={"weights.bin": b"\x00\x01"},
        ),
    ),
    Case(
        "embedded-model-unknown",
        **validate(
            pipeline(policy="{model: 'embedded:gpt-5'}"),
            "models.policy.model:",
            "unknown embedded model",
        ),
    ),
    Case(
        "tokenizer-folder-missing",
        **validate(
            pipeline(policy="{model: org/name, tokenizer: ./tok}"), "models.policy.tokenizer:"
        ),
    ),
    Case(
        "anchor-folder-missing",
        **validate(
            pipeline(policy="{model: org/name}\n  anchor: {model: ./gone}"),
            "p.yaml:6:",
            "models.anchor.model:",
            "no such folder",
        ),
    ),
]

TEMPLATE_CASES = [
    Case(
        "synthesis-template-unknown-placeholder",
        **validate(
            _eval_aggs("[{name: synthesis, template: t.txt}]"),
            "eval.aggregators[0].template:",
            "uses $question",
            files={"t.txt": "Question: $question\nAnswers:\n$responses\n"},
        ),
    ),
    Case(
        "synthesis-template-missing",
        **validate(
            _eval_aggs("[{name: synthesis, template: nope.txt}]"),
            "eval.aggregators[0].template:",
            "not found",
        ),
    ),
    Case(
        "synthesis-template-malformed",
        **validate(
            _eval_aggs("[{name: synthesis, template: t.txt}]"),
            "eval.aggregators[0].template:",
            "literal $ as $$",
            files={"t.txt": "It costs $ 5.\n$responses\n"},
        ),
    ),
    Case(
        "synthesis-template-without-responses",
        **validate(
            _eval_aggs("[{name: synthesis, template: t.txt}]"),
            "lacks $responses",
            files={"t.txt": "Write anything.\n"},
        ),
    ),
]

OVERRIDE_CASES = [
    Case(
        "set-without-equals",
        argv=("validate", "p.yaml", "--set", "rollouts.n"),
        expect=("--set 'rollouts.n'", "KEY.PATH=VALUE"),
        files={"p.yaml": pipeline()},
        exit_code=2,
    ),
    Case(
        "set-deep-value",
        argv=("validate", "p.yaml", "--set", "rollouts.stop=" + "[" * 2000 + "]" * 2000),
        expect=("--set", "nested deeper than"),
        files={"p.yaml": pipeline()},
        exit_code=2,
    ),
    Case(
        "set-alias-bomb",
        argv=("validate", "p.yaml", "--set", "rollouts.stop=[" + BOMB.replace("\n", ", ") + "]"),
        expect=("--set", "alias bomb"),
        files={"p.yaml": pipeline()},
        exit_code=2,
    ),
    Case(
        "set-huge-n",
        argv=("validate", "p.yaml", "--set", "rollouts.n=1000000000"),
        expect=("--set rollouts.n=1000000000", "rollouts.n:", "1024"),
        files={"p.yaml": pipeline(), "data.jsonl": "{}\n"},
        exit_code=2,
    ),
    Case(
        "set-index-out-of-range",
        argv=("validate", "p.yaml", "--set", "eval.aggregators.5.name=single"),
        expect=("eval.aggregators.5.name", "out of range"),
        files={"p.yaml": _eval_aggs("[single]")},
        exit_code=2,
    ),
]

CASES = FILE_CASES + SIZE_CASES + CONFIG_CASES + PATH_CASES + TEMPLATE_CASES + OVERRIDE_CASES
