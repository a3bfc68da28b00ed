"""Secrets by other routes (issue 23, item 6): an error that names a URL never shows the
credentials in it."""

from __future__ import annotations

from tests.reliability.corpus import GOOD_DATA, Case, pipeline

#: a server that is not there (nothing listens on port 9), reached with credentials in its URL
POLICY = (
    '{backend: openai, model: m, base_url: "http://alice:PASSWORD-42@127.0.0.1:9/v1", '
    "api_key: sk-corpus-0123456789abcdef, max_retries: 0}"
)

CASES = [
    Case(
        "run-against-a-url-with-credentials-masks-them",
        argv=("run", "p.yaml", "--run-dir", "r"),
        expect=("cannot reach the OpenAI-compatible server at http://**********@127.0.0.1:9/v1",),
        files={"p.yaml": pipeline(policy=POLICY), "data.jsonl": GOOD_DATA},
    ),
]
