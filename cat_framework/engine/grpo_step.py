"""One CaT-RL step: policy rollouts -> teacher (reference, rewards) -> advantages -> GRPO updates.

Each process handles whole groups (its share of the step's prompts); advantages are computed
within groups, and the loss is normalised by *global* sequence/token counts, so the summed
gradient over micro-batches and processes equals the full-batch gradient whatever the split.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from cat_framework.engine import grpo
from cat_framework.engine.async_rollouts import RolloutsAhead
from cat_framework.engine.finite import NonfiniteGuard, step_scheduler
from cat_framework.engine.policy import PolicyModels
from cat_framework.engine.progress import phase
from cat_framework.engine.record_builder import build_record
from cat_framework.engine.sequences import TokenBatch, build_batch, completion_logps
from cat_framework.engine.teacher import Teacher, TeacherOutput, explore
from cat_framework.errors import CatError
from cat_framework.pipeline.schema import Rollouts, Trainer
from cat_framework.types import Prompt, RolloutGroup


@dataclass
class StepOutput:
    metrics: dict[str, float]
    records: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Rows:
    """The step's rollouts as training rows (groups contiguous)."""

    batch: TokenBatch
    rewards: torch.Tensor  # [N]
    truncated: torch.Tensor  # [N] bool
    engine_logp: torch.Tensor | None  # [N, C] sampler log-probs (for IS correction)


def to_rows(policy: PolicyModels, groups: Sequence[RolloutGroup], teach: TeacherOutput) -> Rows:
    """Training rows of the *trained* rollouts (``teach.trained``: the first ``n`` of each
    group); an unscorable reward (``None``) becomes ``NaN``, which the advantage leaves out."""
    prompt_ids, completion_ids, rewards, truncated, engine = [], [], [], [], []
    eos = policy.tokenizer.eos_token_id
    for group, rw in zip(teach.trained or groups, teach.rewards, strict=True):
        ids = policy.encode(group.prompt.messages)
        for c, r in zip(group.rollouts, rw.values, strict=True):
            tokens = list(c.token_ids) or ([eos] if eos is not None else [0])
            prompt_ids.append(ids)
            completion_ids.append(tokens)
            rewards.append(math.nan if r is None else float(r))
            truncated.append(c.finish_reason == "length")
            engine.append(list(c.logprobs or []))
    pad = policy.tokenizer.pad_token_id
    batch = build_batch(prompt_ids, completion_ids, pad if pad is not None else (eos or 0))
    engine_logp = None
    if all(len(e) == len(c) for e, c in zip(engine, completion_ids, strict=True)):
        engine_logp = torch.zeros(batch.completion_mask.shape)
        for b, e in enumerate(engine):
            engine_logp[b, : len(e)] = torch.tensor(e)
    return Rows(batch, torch.tensor(rewards), torch.tensor(truncated), engine_logp)


class GRPOStep:
    """Holds what every step needs; ``__call__`` runs one step and returns metrics and records."""

    def __init__(
        self,
        policy: PolicyModels,
        train_model: torch.nn.Module,
        teacher: Teacher,
        optimizer: Any,
        scheduler: Any,
        accelerator: Any,
        rollouts: Rollouts,
        config: Trainer,
    ) -> None:
        self.policy, self.train_model, self.teacher = policy, train_model, teacher
        self.optimizer, self.scheduler, self.acc = optimizer, scheduler, accelerator
        self.rollouts, self.cfg = rollouts, config
        self.temperature = rollouts.temperature if rollouts.temperature > 0 else 1.0
        self.params = [p for p in train_model.parameters() if p.requires_grad]
        self.guard = NonfiniteGuard(config.nonfinite_stop_after, accelerator)

    # ------------------------------------------------------------------ helpers
    def _micro(self, batch: TokenBatch) -> list[slice | torch.Tensor]:
        """Micro-batches of rows of similar completion length (a stable sort), so each costs
        its own width, not the step's longest (``completion_logps`` trims all-padding columns).
        The loss is normalised by global counts, so the split does not change the gradient."""
        n, size = len(batch.input_ids), self.cfg.micro_batch_size
        if n <= size:
            return [slice(0, n)]
        order = torch.argsort(batch.completion_mask.sum(-1).cpu(), stable=True)
        return [order[i : i + size].to(batch.input_ids.device) for i in range(0, n, size)]

    @torch.no_grad()
    def _logps(self, model: torch.nn.Module, batch: TokenBatch) -> torch.Tensor:
        out: torch.Tensor | None = None
        for s in self._micro(batch):
            logp = completion_logps(
                model, batch.rows(s), self.temperature, chunk=self.cfg.logprob_chunk
            )[0]
            if out is None:
                out = logp.new_zeros(batch.completion_mask.shape)
            out[s] = logp
        assert out is not None
        return out

    def _global_sum(self, value: float) -> float:
        t = torch.tensor([float(value)], device=self.acc.device)
        return float(self.acc.reduce(t, reduction="sum").item())

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        return self.acc.gather(t.to(self.acc.device)).cpu()

    # ------------------------------------------------------------------ the step
    def __call__(
        self,
        prompts: Sequence[Prompt],
        seeds: Sequence[int],
        step: int,
        ahead: RolloutsAhead | None = None,
    ) -> StepOutput:
        """One step; with ``ahead`` (one-step-off) its rollouts may have been sampled during the
        previous update, and the next step's are sampled during this one."""
        cfg, acc, dev = self.cfg, self.acc, self.acc.device
        t0 = time.perf_counter()
        phase("rollouts")
        staleness = 0
        extra: dict[str, float] = {}
        if ahead is None:
            groups = explore(self.policy.sampler, prompts, self.rollouts, seeds=seeds)
            sampling = time.perf_counter() - t0
        else:
            taken = ahead.take(step, prompts, seeds)
            groups, staleness, sampling = taken.groups, taken.staleness, taken.sample_seconds
            extra["time/rollouts_sampling"] = sampling
        t1 = time.perf_counter()
        phase("teacher")
        teach = self.teacher.teach(groups, self.rollouts.n)
        self.policy.sync_generation()  # lock-step: until every process is done generating
        t2 = time.perf_counter()
        phase("update")
        if ahead is not None:
            ahead.start(step + 1)  # with the weights the sampler holds: pushed after the update
        else:
            self.policy.release_sampler_memory()  # FSDP2: back with the push after the update
        rows = to_rows(self.policy, groups, teach)
        batch = rows.batch.to(dev)
        g = self.rollouts.n
        mask = batch.completion_mask.float()
        if cfg.mask_truncated_completions:
            mask = grpo.truncation_mask(mask, rows.truncated.to(dev))
        ref_logp = None
        if cfg.beta > 0:
            with self.policy.reference() as ref:
                ref_logp = self._logps(ref, batch)
        rewards = rows.rewards.to(dev)
        if cfg.beta > 0 and cfg.kl_in == "reward":
            assert ref_logp is not None
            cur = self._logps(self.policy.model, batch)
            rewards = grpo.kl_penalized_rewards(rewards, cur, ref_logp, mask, cfg.beta)
            extra["reward/kl_penalized_mean"] = float(self._gather(rewards).nanmean())
        teacher_rewards = self._gather(rows.rewards.to(dev))  # metrics: before any KL penalty
        if cfg.scale_rewards == "batch" and acc.num_processes > 1:
            everyone = self._gather(rewards)
            scored = everyone[~torch.isnan(everyone)]
            spread = scored.std().item() if scored.numel() > 1 else 0.0
            adv = grpo.group_advantages(rewards, g, "none") / (spread + 1e-4)
        else:
            adv = grpo.group_advantages(rewards, g, cfg.scale_rewards)
        # importance weights: for an engine's log-prob mismatch, and for stale rollouts
        engine = self.policy.pushes_weights and (cfg.vllm_importance_sampling or ahead is not None)
        correct = engine or staleness > 0
        if ahead is not None and rows.engine_logp is None:  # every step, every process alike
            raise CatError(
                f"trainer.async_rollouts: backend {self.policy.sampler.name!r} returned no "
                "log-probs for its rollouts, so stale rollouts cannot be importance-weighted: "
                "use a backend that reports them, or set trainer.async_rollouts: 0"
            )
        old_logp = (
            self._logps(self.policy.model, batch) if cfg.num_iterations > 1 or correct else None
        )
        is_w = None
        stats: dict[str, float] = {}
        if correct and rows.engine_logp is not None:
            assert old_logp is not None
            is_w = grpo.importance_weights(old_logp, rows.engine_logp.to(dev))
            stats["is_weight/mean"] = float((is_w * mask).sum().item())
        num_seq = self._global_sum(len(batch.input_ids))
        num_tok = self._global_sum(mask.sum().item())
        loss_kl_beta = cfg.beta if cfg.kl_in == "loss" else 0.0
        ent_sum = 0.0
        grad_norm = float("nan")
        micro = self._micro(batch)
        skipped = 0
        for it in range(cfg.num_iterations):
            self.optimizer.zero_grad(set_to_none=True)
            loss_finite = True
            for k, s in enumerate(micro):
                ctx = acc.no_sync(self.train_model) if k < len(micro) - 1 else nullcontext()
                with ctx:
                    mb = batch.rows(s)
                    logp, ent = completion_logps(
                        self.train_model,
                        mb,
                        self.temperature,
                        entropy=it == 0,
                        chunk=self.cfg.logprob_chunk,
                    )
                    out = grpo.grpo_loss(
                        logp,
                        old_logp[s] if old_logp is not None else logp.detach(),
                        adv[s],
                        mask[s],
                        epsilon=cfg.epsilon,
                        epsilon_high=cfg.epsilon_high,
                        beta=loss_kl_beta,
                        ref_logp=ref_logp[s] if ref_logp is not None else None,
                        loss_type=cfg.loss_type,
                        max_completion_length=self.rollouts.max_new_tokens,
                        num_sequences=int(num_seq),
                        num_tokens=num_tok,
                        is_weights=is_w[s] if is_w is not None else None,
                    )
                    acc.backward(out.loss * acc.num_processes)
                loss_finite = loss_finite and bool(torch.isfinite(out.loss.detach()))
                tokens = float(mask[s].sum().item())
                if it == 0:
                    stats["loss"] = stats.get("loss", 0.0) + float(out.loss.item())
                    for key, value in out.stats.items():
                        stats[key] = stats.get(key, 0.0) + value * tokens
                    if ent is not None:
                        ent_sum += float((ent * mask[s]).sum().item())
            if self.guard.allow(loss_finite, self.params, f"step {step}, pass {it + 1}"):
                if cfg.max_grad_norm is not None:
                    grad_norm = float(acc.clip_grad_norm_(self.params, cfg.max_grad_norm))
                self.optimizer.step()
            else:
                skipped += 1
            step_scheduler(self.scheduler)
        self.optimizer.zero_grad(set_to_none=True)
        extra["train/nonfinite_steps"] = float(skipped)
        if ahead is not None:  # the sampler keeps the old weights until it is done
            extra["time/rollouts_wait"] = ahead.join()
            extra["rollouts/staleness"] = float(staleness)
        if self.policy.pushes_weights:
            t_push = time.perf_counter()
            self.policy.push_weights()
            extra["time/training/push_weights"] = time.perf_counter() - t_push
        t3 = time.perf_counter()
        local_tok = float(mask.sum().item()) or 1.0
        metrics = self._metrics(rows, teacher_rewards, stats, ent_sum, local_tok, grad_norm, g)
        gen_tokens = self._global_sum(float(batch.completion_mask.sum().item()))
        metrics.update(
            {
                "time/rollouts": t1 - t0,
                "time/teacher": t2 - t1,
                "time/training": t3 - t2,
                "time/step": t3 - t0,
                "tokens_per_s": gen_tokens / max(sampling, 1e-9),
                "lr": float(self.scheduler.get_last_lr()[0]),
                # nested under time/teacher/ so they are not stacked twice with time/teacher
                **{
                    f"time/teacher/{k.removeprefix('time/')}": float(v)
                    for k, v in teach.timings.items()
                },
                **extra,
            }
        )
        return StepOutput(metrics, self._records(step, groups, teach, adv))

    def _metrics(
        self,
        rows: Rows,
        all_rewards: torch.Tensor,
        stats: dict[str, float],
        ent_sum: float,
        local_tok: float,
        grad_norm: float,
        g: int,
    ) -> dict[str, float]:
        lengths = self._gather(rows.batch.completion_mask.sum(-1).float().to(self.acc.device))
        trunc = self._gather(rows.truncated.float().to(self.acc.device))
        tokens = max(self._global_sum(local_tok), 1.0)  # one all-reduce, not one per stat
        mean_stats = {k: self._global_sum(v) / tokens for k, v in stats.items() if k != "loss"}
        scored = all_rewards[~torch.isnan(all_rewards)]
        metrics = {
            "reward/mean": float(scored.mean()) if scored.numel() else float("nan"),
            "reward/std": float(scored.std()) if scored.numel() > 1 else 0.0,
            "frac_reward_zero_std": grpo.zero_std_fraction(all_rewards, g),
            "loss": self._global_sum(stats.get("loss", 0.0)),
            "entropy": self._global_sum(ent_sum) / tokens,
            "grad_norm": grad_norm,
            "completions/mean_length": float(lengths.mean()),
            "completions/max_length": float(lengths.max()),
            "completions/truncated_fraction": float(trunc.mean()),
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
                rewards=rw, advantages=adv[i * g : (i + 1) * g].tolist(),
            ).to_dict()
            for i, (group, ref, rw) in enumerate(
                zip(groups, teach.references, teach.rewards, strict=True)
            )
        ]  # fmt: skip


__all__ = ["GRPOStep", "StepOutput", "to_rows"]
