"""Corpus rows: bad dataset files, seen only when ``run`` loads them (before any model loads)."""

from __future__ import annotations

import json

from tests.reliability.corpus import Case, run_with_data


def rows(*records: object) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


CONVERSATION = [{"role": "user", "content": "I have a headache."}]

CASES = [
    Case(
        "data-not-utf8",
        **run_with_data(
            b'{"question": "ok"}\n{"question": "caf\xe9?"}\n', "data.jsonl:2:", "not UTF-8"
        ),
    ),
    Case(
        "data-question-null",
        **run_with_data(
            rows({"question": "ok"}, {"question": None}),
            "data.jsonl:2: record 1",
            "'question' is null",
        ),
    ),
    Case(
        "data-question-missing",
        **run_with_data(
            rows({"question": "ok"}, {"prompt": "x"}), "data.jsonl:2: record 1", "no field"
        ),
    ),
    Case(
        "data-question-number",
        **run_with_data(rows({"question": 42}), "data.jsonl:1: record 0", "non-empty text"),
    ),
    Case(
        "data-question-empty",
        **run_with_data(rows({"question": "  "}), "data.jsonl:1: record 0", "empty string"),
    ),
    Case("data-empty-file", **run_with_data("", "data.jsonl", "no records")),
    Case("data-blank-lines", **run_with_data("\n \n\n", "data.jsonl", "no records")),
    Case(
        "data-bad-json",
        **run_with_data('{"question": "a"}\n\n{"question": \n', "data.jsonl:3:", "not valid JSON"),
    ),
    Case(
        "data-array-line",
        **run_with_data('["question"]\n', "data.jsonl:1:", "a JSON object per line"),
    ),
    Case(
        "data-duplicate-ids",
        **run_with_data(
            rows(
                {"id": "a", "question": "x"},
                {"id": "b", "question": "y"},
                {"id": "a", "question": "z"},
            ),
            "data.jsonl:3: record 2",
            "prompt id 'a' is used again",
            eval_data="{dataset: jsonl, path: data.jsonl, id_field: id}",
        ),
    ),
    Case(
        "data-messages-not-a-conversation",
        **run_with_data(
            rows({"messages": "hello"}),
            "data.jsonl:1: record 0",
            "'messages' must be a list",
            eval_data="{dataset: jsonl, path: data.jsonl, messages_field: messages}",
        ),
    ),
    Case(
        "data-rubric-items",
        **run_with_data(
            rows({"question": "q", "rub": [3]}),
            "data.jsonl:1: record 0",
            "rubric items",
            eval_data="{dataset: jsonl, path: data.jsonl, rubric_field: rub}",
        ),
    ),
    Case(
        "math500-duplicate-unique-id",
        **run_with_data(
            rows({"problem": "1+1?", "unique_id": "u"}, {"problem": "2+2?", "unique_id": "u"}),
            "data.jsonl:2: record 1",
            "'u' is used again",
            eval_data="{dataset: math500, path: data.jsonl}",
        ),
    ),
    Case(
        "healthbench-rubric-without-points",
        **run_with_data(
            rows({"prompt_id": "p", "prompt": CONVERSATION, "rubrics": [{"criterion": "c"}]}),
            "data.jsonl:1: record 0",
            "'rubrics' must be a list",
            eval_data="{dataset: healthbench, path: data.jsonl}",
            tail="eval: {scorer: human_rubric}\n",
        ),
    ),
    Case(
        "healthbench-prompt-not-a-conversation",
        **run_with_data(
            rows({"prompt_id": "p", "prompt": "I have a headache.", "rubrics": []}),
            "data.jsonl:1: record 0",
            "'prompt' must be a list",
            eval_data="{dataset: healthbench, path: data.jsonl}",
            tail="eval: {scorer: human_rubric}\n",
        ),
    ),
    Case(
        "gsm8k-question-null",
        **run_with_data(
            rows({"question": None, "answer": "#### 4"}),
            "data.jsonl:1: record 0",
            "'question' is null",
            eval_data="{dataset: gsm8k, path: data.jsonl}",
        ),
    ),
]
