"""Agreement of our math reward with math-verify on math-verify's own test pairs.

Each case of ``tests/data/math_verify_pairs.json`` is a (gold, prediction, expected verdict)
from huggingface/Math-Verify's test suite. Ours: the ``programmatic`` reward with
``Reference(answer=gold)`` and the prediction as the rollout text (1.0 means "equal"), read at
``fallback: number`` because the predictions are bare expressions (``$9$``, ``1/2``) that commit
to no answer at the reward's default level: this measures equivalence, not extraction; math-verify
alone: ``verify(parse(gold), parse(pred))``. Both directions are measured: as given, and swapped
(the prediction as the reference), since a reference in CaT is itself a model output. Extra
line, for information: ``Reference(text=gold)``, where a gold that commits to no answer (a bare
``$9$``) is by design no reference (unscorable).

Run: ``python benchmarks/answer_agreement.py`` (writes benchmarks/results/answer_agreement.*).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ROOT / "tests" / "data" / "math_verify_pairs.json"
RESULTS = ROOT / "benchmarks" / "results"


def load_cases(path: Path = PAIRS) -> list[dict[str, Any]]:
    return json.loads(path.read_text())["cases"]


def _ours(gold: str, pred: str, as_text: bool) -> bool | None:
    from cat_framework import Completion, Prompt, Reference, RolloutGroup
    from cat_plugins.rewards.programmatic import ProgrammaticReward

    ref = (
        Reference(text=gold, method="bench")
        if as_text
        else Reference(text="", method="bench", answer=gold)
    )
    group = RolloutGroup(
        prompt=Prompt(id="q", messages=[{"role": "user", "content": "?"}]),
        rollouts=[Completion(text=pred)],
    )
    (rewards,) = ProgrammaticReward({"fallback": "number"}).derive([group], [ref])
    value = rewards.values[0]
    return None if value is None else value == 1.0


def _math_verify(gold: str, pred: str) -> bool:
    from math_verify import parse, verify

    return bool(verify(parse(gold), parse(pred)))


def measure(cases: list[dict[str, Any]], *, with_text: bool = False) -> dict[str, Any]:
    """Agreement counts (and the cases missed) per scorer and direction."""
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    scorers = {"ours": lambda g, p: _ours(g, p, False), "math_verify": _math_verify}
    if with_text:
        scorers["ours_reference_text"] = lambda g, p: _ours(g, p, True)
    out: dict[str, Any] = {"cases": len(cases)}
    for direction in ("as_given", "swapped"):
        for name, score in scorers.items():
            start = time.perf_counter()
            missed, unscorable = [], []
            for i, case in enumerate(cases):
                gold, pred = case["gold"], case["pred"]
                if direction == "swapped":
                    gold, pred = pred, gold
                verdict = score(gold, pred)
                if verdict is None:
                    unscorable.append(i)
                if verdict is not case["expected"]:
                    missed.append(i)
            out[f"{name}/{direction}"] = {
                "agree": len(cases) - len(missed),
                "missed": missed,
                "unscorable": len(unscorable),
                "seconds": round(time.perf_counter() - start, 2),
            }
    return out


def _markdown(result: dict[str, Any], cases: list[dict[str, Any]]) -> str:
    n = result["cases"]
    rows = [
        "# Answer agreement with math-verify\n",
        f"{n} (gold, prediction, expected) pairs from huggingface/Math-Verify's tests "
        "(`tests/data/math_verify_pairs.json`; provenance inside). Ours = the `programmatic` "
        "reward with `Reference(answer=gold)`, at `fallback: number` (the predictions are bare "
        "expressions: this measures equivalence, not extraction); swapped = the prediction is the "
        "reference. Produced by `python benchmarks/answer_agreement.py`. "
        "`ours_reference_text` uses `Reference(text=gold)` instead: a gold that commits to no "
        "answer (a bare `$9$`: no box, `####` or final-answer phrase) is no reference, so the "
        "reward is unscorable (None), counted here as a miss (see `unscorable`).\n",
        "| scorer | as given | swapped | unscorable (given / swapped) |",
        "|---|---|---|---|",
    ]
    names = sorted({k.split("/")[0] for k in result if "/" in k}, key=lambda s: (s != "ours", s))
    for name in names:
        given, swapped = result[f"{name}/as_given"], result[f"{name}/swapped"]
        rows.append(
            f"| {name} | {given['agree']}/{n} | {swapped['agree']}/{n} "
            f"| {given['unscorable']} / {swapped['unscorable']} |"
        )
    rows.append(
        "\nBefore this change (last-box extraction, gold-first equivalence): 151/252 as "
        "given and 118/252 swapped with `Reference(answer=gold)`.\n"
    )
    for direction in ("as_given", "swapped"):
        mine = set(result[f"ours/{direction}"]["missed"])
        theirs = set(result[f"math_verify/{direction}"]["missed"])
        rows.append(f"## Disagreements, {direction.replace('_', ' ')}\n")
        for label, idx in (
            ("only ours misses", mine - theirs),
            ("only math-verify misses", theirs - mine),
            ("both miss", mine & theirs),
        ):
            rows.append(
                f"- {label}: "
                + (
                    ", ".join(f"`{cases[i]['source'].split('::')[1]}` #{i}" for i in sorted(idx))
                    or "none"
                )
            )
        rows.append("")
    return "\n".join(rows)


def main() -> int:
    cases = load_cases()
    result = measure(cases, with_text=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "answer_agreement.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "answer_agreement.md").write_text(_markdown(result, cases))
    for key, value in result.items():
        if "/" in key:
            print(f"{key:34s} {value['agree']}/{result['cases']}  ({value['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
