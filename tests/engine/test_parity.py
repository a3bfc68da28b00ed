"""The weight-parity comparison between what a push carried and what an engine reports (no
engine needed: the vLLM side is tested in tests/plugins/backends/test_vllm_backend.py)."""

from __future__ import annotations

import pytest
import torch

from cat_framework.components import Backend, WeightChecksums
from cat_framework.engine.parity import Pushed, check_engine, mismatches, sums, sums_by_dtype
from cat_framework.errors import CatError

Q, K, V = (f"model.layers.0.self_attn.{m}_proj.weight" for m in "qkv")
QKV = f"{Q}+{K}+{V}"


def attention() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {n: torch.randn(8, 4) for n in (Q, K, V)}


def recorded(tensors: dict[str, torch.Tensor]) -> Pushed:
    record = Pushed()
    list(record.record(tensors.items()))
    return record


def test_sums_are_float64_over_chunks():
    t = torch.full((3, 5), 0.1, dtype=torch.float32)
    total, absolute = sums(-t)
    assert total == pytest.approx(-15 * float(torch.tensor(0.1))) and absolute == -total


def test_a_fused_weight_is_compared_with_the_sum_of_its_parts():
    tensors = attention()
    served = sum(float(t.double().sum()) for t in tensors.values())
    checksums = WeightChecksums({QKV: served, "other.weight": 1.0}, rtol=1e-6)
    assert mismatches(checksums, recorded(tensors)) == ([], 1)  # unknown names: not compared


def test_a_stale_part_of_a_fused_weight_is_named():
    tensors = attention()
    stale = sum(float(t.double().sum()) for t in tensors.values())
    with torch.no_grad():
        tensors[K].add_(0.01)  # trained, but the engine kept the old k_proj
    wrong, compared = mismatches(WeightChecksums({QKV: stale}, rtol=1e-6), recorded(tensors))
    assert compared == 1 and wrong == [f"{Q} (fused with k_proj, v_proj)"]


def test_a_fused_weight_pushed_in_part_is_named():
    tensors = attention()
    del tensors[V]
    wrong, _ = mismatches(WeightChecksums({QKV: 0.0}, rtol=1.0), recorded(tensors))
    assert wrong == [f"{V} (not pushed)"]


def test_the_tolerance_is_relative_to_the_absolute_sum():
    t = torch.tensor([1.0, -1.0, 2.0])  # sum 2, absolute sum 4
    record = recorded({"w": t})
    assert mismatches(WeightChecksums({"w": 2.0 + 3.9e-3}, rtol=1e-3), record)[0] == []
    assert mismatches(WeightChecksums({"w": 2.0 + 4.1e-3}, rtol=1e-3), record)[0] == ["w"]


class Reporting(Backend):
    name = "reporting"

    def __init__(self, checksums: WeightChecksums | None) -> None:
        super().__init__()
        self.checksums = checksums

    def generate(self, requests):
        return []

    def score(self, contexts, continuations):
        return []

    def weight_checksums(self) -> WeightChecksums | None:
        return self.checksums


def test_check_engine_fails_loudly_and_says_when_it_cannot_check():
    record = recorded({"w": torch.ones(4)})
    assert check_engine(Reporting(WeightChecksums({"w": 4.0}, rtol=0.0)), record)
    with pytest.raises(CatError, match=r"weight parity check failed(?s:.*)1 of 1 tensor\(s\)"):
        check_engine(Reporting(WeightChecksums({"w": 3.0}, rtol=0.0)), record)
    assert not check_engine(Reporting(None), record)


def test_a_tensor_the_trainer_did_not_push_fails_whatever_the_engine_reports():
    """The producer skipped it (not the transport): the engine cannot know it was expected."""
    record = Pushed(expected=["w", "v"])
    list(record.record([("w", torch.ones(4))]))
    with pytest.raises(CatError, match=r"skipped 1 of the trainer's tensor\(s\) \(v\)"):
        check_engine(Reporting(WeightChecksums({"w": 4.0}, rtol=0.0)), record)
    with pytest.raises(CatError, match="skipped"):
        check_engine(Reporting(None), record)  # even an engine that cannot report


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_stale_or_zeroed_weight_shows_in_the_engines_dtype(dtype):
    """Compared in the dtype the engine holds, a weight read element by element must match to
    float64 summation noise: one small optimizer step, or a zeroed tensor, cannot hide in the
    rounding of a bfloat16 engine (a tolerance of bfloat16's epsilon would let both through)."""
    torch.manual_seed(0)
    old = torch.randn(1 << 20) * 0.02
    new = old + 1e-4 * torch.sign(torch.randn(1 << 20))  # one Adam-sized step, random signs
    record = recorded({"w": new})

    def served(t: torch.Tensor) -> WeightChecksums:
        total = float(t.to(dtype).double().sum())
        return WeightChecksums({"w": total}, rtol=1.0, dtype=dtype, exact=frozenset({"w"}))

    assert mismatches(served(new), record)[0] == []
    assert mismatches(served(old), record)[0] == ["w"]
    assert mismatches(served(torch.zeros_like(new)), record)[0] == ["w"]


def test_once_the_engines_dtype_is_known_only_it_is_summed():
    t = torch.randn(64)
    assert set(sums_by_dtype(t)) == {torch.float32, torch.bfloat16, torch.float16}
    assert set(sums_by_dtype(t, torch.float32)) == {torch.float32}
    assert set(sums_by_dtype(t, torch.bfloat16)) == {torch.float32, torch.bfloat16}
