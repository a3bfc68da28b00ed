"""One CaT-RL step in three phases: sample and teach (policy rollouts -> the teacher's reference
and rewards), build tensors (rows, reference log-probs, advantages, importance weights), and
update (GRPO loss through :class:`~cat_framework.engine.update.Updater`).

Each process handles whole groups (its share of the step's prompts); advantages are computed
within groups, and the loss is normalised by *global* sequence/token counts, so the summed
gradient over micro-batches and processes equals the full-batch gradient whatever the split.
The step meets the placement twice: to sample, and around the update.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from cat_framework.engine import grpo
from cat_framework.engine.diagnostics import MajorityReading
from cat_framework.engine.placement import Placement, Sampled
from cat_framework.engine.progress import phase
from cat_framework.engine.record_builder import build_record
from cat_framework.engine.sampling_support import Support
from cat_framework.engine.sequences import (
    TokenBatch,
    build_batch,
    completion_logps,
    completion_logps_on_support,
)
from cat_framework.engine.teacher import Teacher, TeacherOutput
from cat_framework.engine.update import Rows, Updater, micro_batches
from cat_framework.errors import CatError
from cat_framework.pipeline.schema import Rollouts, Trainer
from cat_framework.types import Prompt, RolloutGroup

#: a token's trainer and sampler log-probs "mismatch" when their probabilities differ by more
#: than 10 % (``is_weight/mismatch_share``; ``is_weight/logp_gap_mean`` is the mean gap)
MISMATCH = math.log(1.1)


@dataclass
class StepOutput:
    metrics: dict[str, float]
    records: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TrainingRows:
    """The step's rollouts as training rows (groups contiguous)."""

    batch: TokenBatch
    rewards: torch.Tensor  # [N]
    truncated: torch.Tensor  # [N] bool
    engine_logp: torch.Tensor | None  # [N, C] sampler log-probs (for IS correction)


@dataclass
class Tensors:
    """What the GRPO loss needs of a step, on the training device."""

    rows: TrainingRows
    batch: TokenBatch
    mask: torch.Tensor
    advantages: torch.Tensor
    old_logp: torch.Tensor | None
    ref_logp: torch.Tensor | None
    is_weights: torch.Tensor | None
    teacher_rewards: torch.Tensor  # every process's, before any KL penalty (metrics)
    metrics: dict[str, float]
    #: on-policy importance weights are taken in the update's own forward (no extra pass):
    #: the sampler's log-probs they need, else None
    engine_logp: torch.Tensor | None = None


def to_rows(
    placement: Placement, groups: Sequence[RolloutGroup], teach: TeacherOutput
) -> TrainingRows:
    """Training rows of the *trained* rollouts (``teach.trained``: the first ``n`` of each
    group); an unscorable reward (``None``) becomes ``NaN``, which the advantage leaves out."""
    prompt_ids, completion_ids, rewards, truncated, engine = [], [], [], [], []
    eos = placement.tokenizer.eos_token_id
    for group, rw in zip(teach.trained or groups, teach.rewards, strict=True):
        ids = placement.encode(group.prompt.messages)
        for c, r in zip(group.rollouts, rw.values, strict=True):
            tokens = list(c.token_ids) or ([eos] if eos is not None else [0])
            prompt_ids.append(ids)
            completion_ids.append(tokens)
            rewards.append(math.nan if r is None else float(r))
            truncated.append(c.finish_reason == "length")
            engine.append(list(c.logprobs or []))
    pad = placement.tokenizer.pad_token_id
    batch = build_batch(prompt_ids, completion_ids, pad if pad is not None else (eos or 0))
    engine_logp = None
    if all(len(e) == len(c) for e, c in zip(engine, completion_ids, strict=True)):
        engine_logp = torch.zeros(batch.completion_mask.shape)
        for b, e in enumerate(engine):
            engine_logp[b, : len(e)] = torch.tensor(e)
    return TrainingRows(batch, torch.tensor(rewards), torch.tensor(truncated), engine_logp)


class GRPOStep:
    """Holds what every step needs; ``__call__`` runs one step and returns metrics and records."""

    #: take on-policy importance weights in the update's forward (False: a pass of their own,
    #: the reference the tests compare it with)
    weights_in_pass = True

    def __init__(
        self,
        placement: Placement,
        updater: Updater,
        teacher: Teacher,
        rollouts: Rollouts,
        config: Trainer,
        *,
        majority: MajorityReading | None = None,
    ) -> None:
        self.placement, self.updater, self.teacher = placement, updater, teacher
        self.majority = majority  # the diagnostics' majority vote (records)
        self.acc = updater.accelerator
        self.rollouts, self.cfg = rollouts, config
        self.temperature = rollouts.temperature if rollouts.temperature > 0 else 1.0

    def __call__(self, prompts: Sequence[Prompt], seeds: Sequence[int], step: int) -> StepOutput:
        t0 = time.perf_counter()
        phase("rollouts")
        sampled = self.placement.sample(step, prompts, seeds)
        t1 = time.perf_counter()
        phase("teacher")
        teach = self.teacher.teach(sampled.groups, self.rollouts.n)
        t2 = time.perf_counter()
        phase("update")
        with self.placement.update(step) as moved:
            tensors = self._tensors(sampled, teach)
            stats = self._update(tensors, step)
        t3 = time.perf_counter()
        metrics = self._metrics(tensors, stats)
        gen_tokens = self._global_sum(float(tensors.rows.batch.completion_mask.sum().item()))
        metrics.update(
            {
                "time/rollouts": t1 - t0,
                "time/teacher": t2 - t1,
                "time/training": t3 - t2,
                "time/step": t3 - t0,
                "tokens_per_s": gen_tokens / max(sampled.seconds, 1e-9),
                "lr": float(self.updater.scheduler.get_last_lr()[0]),
                # nested under time/teacher/ so they are not stacked twice with time/teacher
                **{
                    f"time/teacher/{k.removeprefix('time/')}": float(v)
                    for k, v in teach.timings.items()
                },
                **sampled.metrics,
                **tensors.metrics,
                **moved.timings,
            }
        )
        return StepOutput(metrics, self._records(step, sampled.groups, teach, tensors.advantages))

    # ------------------------------------------------------------------ build tensors
    def _tensors(self, sampled: Sampled, teach: TeacherOutput) -> Tensors:
        """Rows, masks, reference log-probs, (KL-penalised) rewards, advantages, and the
        importance weights for rollouts sampled by other weights than the trained ones."""
        cfg, dev = self.cfg, self.acc.device
        rows = to_rows(self.placement, sampled.groups, teach)
        batch = rows.batch.to(dev)
        mask = batch.completion_mask.float()
        if cfg.mask_truncated_completions:
            mask = grpo.truncation_mask(mask, rows.truncated.to(dev))
        metrics: dict[str, float] = {}
        ref_logp = None
        if cfg.beta > 0:
            with self.placement.reference() as ref:
                ref_logp = self._logps(ref, batch)
        task = rows.rewards.to(dev)
        penalized = None  # the task reward minus beta x the sequence KL
        if cfg.beta > 0 and cfg.kl_in == "reward":
            assert ref_logp is not None
            cur = self._logps(self.placement.model, batch)
            penalized = grpo.kl_penalized_rewards(task, cur, ref_logp, mask, cfg.beta)
            metrics["reward/kl_penalized_mean"] = float(self._gather(penalized).nanmean())
            metrics["kl/only_signal_groups"] = grpo.kl_only_signal_share(
                self._gather(task), self._gather(penalized), self.rollouts.n
            )
        teacher_rewards = self._gather(task)  # metrics: before any KL penalty
        adv = self._advantages(task, penalized)
        # importance weights: for an engine's log-prob mismatch, and for stale rollouts
        # a lower-precision sampling copy always differs from the trained weights
        engine = self.placement.pushes_weights and (
            cfg.vllm_importance_sampling or cfg.rollout_dtype != "same"
        )
        correct = sampled.off_policy or engine or sampled.staleness > 0
        weigh = correct and self._everyone_aligned(rows, sampled)
        # fresh rollouts, one pass, the sampler's log-probs on the full support: pi_old is the
        # update's own forward, so the weights are taken there instead of in a pass of their own
        in_pass = (
            weigh and self.weights_in_pass and cfg.num_iterations == 1 and not sampled.off_policy
            and sampled.staleness == 0 and self._support_is_full()
        )  # fmt: skip
        old_logp = is_ref = is_w = in_pass_logp = None
        if (cfg.num_iterations > 1 or correct) and not in_pass:
            old_logp, is_ref = self._old_logps(batch, weigh)
        if in_pass:
            assert rows.engine_logp is not None
            in_pass_logp = rows.engine_logp.to(dev)
        elif weigh:
            assert is_ref is not None and rows.engine_logp is not None
            engine_logp = rows.engine_logp.to(dev)
            is_w = grpo.importance_weights(is_ref, engine_logp, cfg.importance_cap)
            sums = grpo.importance_sums(is_ref, engine_logp, mask, cfg.importance_cap, MISMATCH)
            tokens = max(self._global_sum(float(mask.sum().item())), 1.0)
            metrics.update({k: self._global_sum(v) / tokens for k, v in sums.items()})
        return Tensors(
            rows, batch, mask, adv, old_logp, ref_logp, is_w, teacher_rewards, metrics,
            in_pass_logp,
        )  # fmt: skip

    def _everyone_aligned(self, rows: TrainingRows, sampled: Sampled) -> bool:
        """Whether every process has the sampler's log-probs of every trained token: the
        importance weights (and their collectives) are computed on all processes or on none.
        Stale rollouts cannot be trained without them: every process stops alike."""
        missing = self._global_sum(0.0 if rows.engine_logp is not None else 1.0)
        if missing and sampled.off_policy:
            raise CatError(
                f"trainer.async_rollouts: backend {self.placement.sampler.name!r} did not return "
                "one log-prob per sampled token on every process, so stale rollouts cannot be "
                "importance-weighted: use a backend that reports them, or set "
                "trainer.async_rollouts: 0"
            )
        return missing == 0

    def _advantages(self, task: torch.Tensor, penalized: torch.Tensor | None) -> torch.Tensor:
        """Group advantages of the (KL-penalised) rewards; with ``trainer.kl_in_group_std:
        false`` the KL penalty stays out of the group normalisation: the task reward's group
        advantage minus the penalty's deviation from its group mean (an unscorable row keeps 0)."""
        if penalized is None:
            return self._normalised(task)
        if self.cfg.kl_in_group_std:
            return self._normalised(penalized)
        return grpo.kl_outside_std(self._normalised(task), task, task - penalized, self.rollouts.n)

    def _normalised(self, rewards: torch.Tensor) -> torch.Tensor:
        g = self.rollouts.n
        if self.cfg.scale_rewards == "batch" and self.acc.num_processes > 1:
            everyone = self._gather(rewards)
            scored = everyone[~torch.isnan(everyone)]
            spread = scored.std().item() if scored.numel() > 1 else 0.0
            return grpo.group_advantages(rewards, g, "none") / (spread + 1e-4)
        return grpo.group_advantages(rewards, g, self.cfg.scale_rewards)

    def _support_is_full(self) -> bool:
        """Whether the sampler's log-probs are over the distribution the trainer computes
        (the full vocabulary at the sampling temperature): then pi_old needs no other pass."""
        kind = self.placement.sampler.logprob_support()
        if kind == "sampled":
            return not Support(self.rollouts.top_k, self.rollouts.top_p).truncates
        return kind == "full" or self.temperature == 1.0

    def _old_logps(
        self, batch: TokenBatch, weigh: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """pi_old's log-probs (the GRPO ratio's denominator) and, when importance weights are
        computed, pi_old's on the sampler's support (:mod:`..sampling_support`): renormalised
        over the top-k / top-p kept tokens for a sampler that reports its sampled distribution,
        at temperature 1 for one that reports raw log-probs."""
        model = self.placement.model
        if not weigh or self._support_is_full():
            old = self._logps(model, batch)
            return old, old
        if self.placement.sampler.logprob_support() == "sampled":
            return self._logps(
                model, batch, support=Support(self.rollouts.top_k, self.rollouts.top_p)
            )
        return self._logps(model, batch), self._logps(model, batch, temperature=1.0)

    # ------------------------------------------------------------------ update
    def _update(self, t: Tensors, step: int) -> dict[str, float]:
        """``num_iterations`` GRPO passes over the step's rows; the first pass's loss, entropy
        and per-token statistics (token-weighted sums, reduced in :meth:`_metrics`)."""
        cfg = self.cfg
        stats: dict[str, float] = {"entropy": 0.0}
        if t.is_weights is not None:
            stats["is_weight/mean"] = float((t.is_weights * t.mask).sum().item())
        num_seq = self._global_sum(len(t.batch.input_ids))
        num_tok = self._global_sum(t.mask.sum().item())

        def loss(s: Rows, it: int) -> torch.Tensor:
            mb = t.batch.rows(s)
            logp, ent = completion_logps(
                self.updater.model, mb, self.temperature, entropy=it == 0,
                chunk=cfg.logprob_chunk,
            )  # fmt: skip
            is_w = t.is_weights[s] if t.is_weights is not None else None
            if t.engine_logp is not None:  # on-policy: pi_old is this very forward
                is_w = self._in_pass_weights(logp.detach(), t.engine_logp[s], t.mask[s], stats)
            out = grpo.grpo_loss(
                logp,
                t.old_logp[s] if t.old_logp is not None else logp.detach(),
                t.advantages[s],
                t.mask[s],
                epsilon=cfg.epsilon,
                epsilon_high=cfg.epsilon_high,
                beta=cfg.beta if cfg.kl_in == "loss" else 0.0,
                ref_logp=t.ref_logp[s] if t.ref_logp is not None else None,
                loss_type=cfg.loss_type,
                max_completion_length=self.rollouts.max_new_tokens,
                num_sequences=int(num_seq),
                num_tokens=num_tok,
                is_weights=is_w,
            )
            if it == 0:
                tokens = float(t.mask[s].sum().item())
                stats["loss"] = stats.get("loss", 0.0) + float(out.loss.item())
                for key, value in out.stats.items():
                    stats[key] = stats.get(key, 0.0) + value * tokens
                if ent is not None:
                    stats["entropy"] += float((ent * t.mask[s]).sum().item())
            return out.loss

        updated = self.updater.run(t.batch, loss, f"step {step}", cfg.num_iterations)
        stats["grad_norm"] = updated.grad_norm
        stats["train/nonfinite_steps"] = float(updated.skipped)
        return stats

    def _in_pass_weights(
        self, old: torch.Tensor, engine_logp: torch.Tensor, mask: torch.Tensor, stats: dict
    ) -> torch.Tensor:
        """A micro-batch's importance weights from the update's own forward; their statistics
        join the token-weighted ``stats`` (divided by the global token count in :meth:`_metrics`)."""
        weights = grpo.importance_weights(old, engine_logp, self.cfg.importance_cap)
        sums = {**grpo.importance_sums(old, engine_logp, mask, self.cfg.importance_cap, MISMATCH),
                "is_weight/mean": float((weights * mask).sum().item())}  # fmt: skip
        for key, value in sums.items():
            stats[key] = stats.get(key, 0.0) + value
        return weights

    # ------------------------------------------------------------------ helpers
    @torch.no_grad()
    def _logps(
        self,
        model: torch.nn.Module,
        batch: TokenBatch,
        temperature: float | None = None,
        support: Support | None = None,
    ) -> Any:
        """No gradient, micro-batch by micro-batch: the completion log-probs ``[B, C]`` (at
        ``temperature``, default the sampling one), or with ``support`` the pair (full, on
        support)."""
        temperature = self.temperature if temperature is None else temperature
        outs: list[torch.Tensor] = []
        for s in micro_batches(batch, self.cfg.micro_batch_size):
            mb, chunk = batch.rows(s), self.cfg.logprob_chunk
            if support is not None:
                parts = completion_logps_on_support(model, mb, temperature, support, chunk)
            else:
                parts = (completion_logps(model, mb, temperature, chunk=chunk)[0],)
            if not outs:
                outs = [p.new_zeros(batch.completion_mask.shape) for p in parts]
            for out, part in zip(outs, parts, strict=True):
                out[s] = part
        return tuple(outs) if support is not None else outs[0]

    def _global_sum(self, value: float) -> float:
        t = torch.tensor([float(value)], device=self.acc.device)
        return float(self.acc.reduce(t, reduction="sum").item())

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        return self.acc.gather(t.to(self.acc.device)).cpu()

    def _metrics(self, t: Tensors, stats: dict[str, float]) -> dict[str, float]:
        rows, g = t.rows, self.rollouts.n
        lengths = self._gather(rows.batch.completion_mask.sum(-1).float().to(self.acc.device))
        trunc = self._gather(rows.truncated.float().to(self.acc.device))
        tokens = max(self._global_sum(float(t.mask.sum().item())), 1.0)  # one all-reduce
        summed = ("loss", "entropy", "grad_norm", "train/nonfinite_steps")
        mean_stats = {k: self._global_sum(v) / tokens for k, v in stats.items() if k not in summed}
        scored = t.teacher_rewards[~torch.isnan(t.teacher_rewards)]
        metrics = {
            "reward/mean": float(scored.mean()) if scored.numel() else float("nan"),
            "reward/std": float(scored.std()) if scored.numel() > 1 else 0.0,
            "frac_reward_zero_std": grpo.zero_std_fraction(t.teacher_rewards, g),
            "loss": self._global_sum(stats.get("loss", 0.0)),
            "entropy": self._global_sum(stats["entropy"]) / tokens,
            "grad_norm": stats["grad_norm"],
            "completions/mean_length": float(lengths.mean()),
            "completions/max_length": float(lengths.max()),
            "completions/truncated_fraction": float(trunc.mean()),
            "train/nonfinite_steps": stats["train/nonfinite_steps"],
            **mean_stats,
        }
        return {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}

    def _records(
        self,
        step: int,
        groups: Sequence[RolloutGroup],
        teach: TeacherOutput,
        adv: torch.Tensor,
    ) -> list[dict[str, Any]]:
        """One :class:`RunRecord` per prompt: every rollout (trained or only read by the
        teacher), the reference, the teacher's rewards (before any KL penalty; ``None`` =
        unscorable), reward details and advantages."""
        g = self.rollouts.n
        return [
            build_record(
                "train", step, group, {ref.method: ref}, ref.method,
                rewards=rw, advantages=adv[i * g : (i + 1) * g].tolist(), majority=self.majority,
            ).to_dict()
            for i, (group, ref, rw) in enumerate(
                zip(groups, teach.references, teach.rewards, strict=True)
            )
        ]  # fmt: skip


__all__ = ["GRPOStep", "StepOutput", "to_rows"]
