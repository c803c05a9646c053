"""EntropyLoggingCallback: the TensorBoard panels of the AEPO stage.

Scalars (every logged step):
- `bucket/<easy|medium|hard>/{accuracy,reward,entropy_reward,response_length,n_hwe,count}`, and
  `bucket/<name>/{target,alpha}` from the rollout; κ and KL per bucket come from DynamicKLCallback;
- the α controller: `bucket/<name>/setpoint` (T*_d), `bucket/<name>/calibration` (calibration
  batches seen, K when final) and `bucket/<name>/reward_inversions` (share of the bucket's mixed
  groups in which a wrong answer's total reward is >= a right one's);
- `hwe/threshold` (τ after smoothing), `hwe/threshold_batch` and `hwe/voters` (responses with
  enough windows to vote on τ);
- `time/{weight_sync,generation,grading,logprobs}`, `rollout/tokens_per_s`,
  `rollout/engine_logprob_gap` (mean |engine − trainer| log-prob of sampled tokens),
  `rollout/{groups_dropped,refill_rounds,num_samples}`, `grading/*` counters;
- `reward/{mean,accuracy,entropy_reward}`, `entropy/token_mean`.
Every `media_every_n_steps`: histograms `entropy/token` and `hwe/n_he`, a text panel
`samples` (responses with their bucket and reward, HWE tokens marked ⟦like this⟧), a figure
`buckets/length_and_nhe` of response length and N_HE per bucket over training, and a figure
`controllers/alpha_target_tau` of α_d, T_d (with T*_d dashed) and τ over training: a controller
that degenerates shows as α at a bound, T_d near 0 or τ collapsing.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from ares_lit.core import BUCKET_NAMES, NUM_BUCKETS
from ares_lit.tb import tensorboard_writer

__all__ = ["EntropyLoggingCallback"]

_PER_BUCKET = ("accuracy", "reward", "entropy_reward", "response_length", "n_hwe")
_CURVES = ("response_length", "n_hwe", "alpha", "target", "setpoint")  # per-bucket histories of the figures


class EntropyLoggingCallback(pl.Callback):
    """Logs the AEPO rollout statistics to TensorBoard.

    Args:
        media_every_n_steps: how often histograms, the text panel and the figure are written.
    """

    def __init__(self, media_every_n_steps: int = 10) -> None:
        super().__init__()
        if media_every_n_steps < 1:
            raise ValueError(f"media_every_n_steps must be >= 1; got {media_every_n_steps}")
        self.media_every_n_steps = media_every_n_steps
        self.history: dict[str, list[float]] = self._empty_history()

    @staticmethod
    def _empty_history() -> dict[str, list[float]]:
        keys = ["step", "tau"] + [f"{name}/{k}" for name in BUCKET_NAMES for k in _CURVES]
        return {k: [] for k in keys}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        rollout = batch.get("rollout") if isinstance(batch, dict) else None
        if rollout is None:
            return
        logs = dict(rollout.metrics)
        ex = rollout.extras
        per_bucket = bucket_means(rollout.bucket, {k: ex[k] for k in _PER_BUCKET})
        counts = torch.bincount(rollout.bucket, minlength=NUM_BUCKETS)
        for d, name in enumerate(BUCKET_NAMES):
            logs[f"bucket/{name}/count"] = float(counts[d])
            if counts[d] > 0:
                for key in _PER_BUCKET:
                    logs[f"bucket/{name}/{key}"] = float(per_bucket[key][d])
            else:  # targets of absent buckets are carried over, not measured this step
                logs.pop(f"bucket/{name}/target", None)
        logs["reward/mean"] = float(ex["reward"].mean())
        logs["reward/accuracy"] = float(ex["accuracy"].mean())
        logs["reward/entropy_reward"] = float(ex["entropy_reward"].mean())
        if ex["token_entropy"].numel():
            logs["entropy/token_mean"] = float(ex["token_entropy"].mean())
        logs = {k: v for k, v in logs.items() if v == v}  # drop nan (e.g. τ before the first window)
        pl_module.log_dict(logs, on_step=True, on_epoch=False)

        step = trainer.global_step
        nan = float("nan")
        self.history["step"].append(step)
        self.history["tau"].append(logs.get("hwe/threshold", nan))
        for d, name in enumerate(BUCKET_NAMES):
            present = counts[d] > 0
            self.history[f"{name}/response_length"].append(float(per_bucket["response_length"][d]) if present else nan)
            self.history[f"{name}/n_hwe"].append(float(per_bucket["n_hwe"][d]) if present else nan)
            for key in ("alpha", "target", "setpoint"):
                self.history[f"{name}/{key}"].append(logs.get(f"bucket/{name}/{key}", nan))
        writer = tensorboard_writer(trainer)
        if writer is not None and (len(self.history["step"]) - 1) % self.media_every_n_steps == 0:
            self._write_media(writer, rollout, step)

    def _write_media(self, writer, rollout, step: int) -> None:
        ex = rollout.extras
        if ex["token_entropy"].numel():
            writer.add_histogram("entropy/token", ex["token_entropy"].float().cpu(), step)
        writer.add_histogram("hwe/n_he", ex["n_hwe"].float().cpu(), step)
        if rollout.samples:
            rows = ["| bucket | correct | reward | entropy reward | question | response (⟦HWE⟧ marked) |", "|---|---|---|---|---|---|"]
            for s in rollout.samples:
                rows.append(
                    f"| {s['bucket']} | {s['correct']} | {s['reward']:.3f} | {s['entropy_reward']:.3f} | "
                    f"{_md(s['question'])} | {_md(s['response'])} |"
                )
            writer.add_text("samples", "\n".join(rows), step)
        writer.add_figure("buckets/length_and_nhe", self._figure(), step)
        writer.add_figure("controllers/alpha_target_tau", self.controller_figure(), step)
        writer.flush()

    def controller_figure(self):
        """α_d, T_d (T*_d dashed) and τ over the logged steps, one panel each."""
        plt = _pyplot()
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
        steps = self.history["step"]
        for name in BUCKET_NAMES:
            line = axes[0].plot(steps, self.history[f"{name}/alpha"], marker=".", label=name)[0]
            axes[1].plot(steps, self.history[f"{name}/target"], marker=".", color=line.get_color(), label=f"T {name}")
            axes[1].plot(steps, self.history[f"{name}/setpoint"], ls="--", color=line.get_color(), label=f"T* {name}")
        axes[2].plot(steps, self.history["tau"], marker=".", color="black")
        for ax, title in zip(axes, ("α_d (reward scale)", "T_d and set-point T*_d (N_HE)", "τ (HWE threshold)")):
            ax.set_title(title)
            ax.set_xlabel("step")
        axes[0].legend()
        axes[1].legend(fontsize="x-small", ncol=2)
        fig.tight_layout()
        return fig

    def _figure(self):
        plt = _pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        for name in BUCKET_NAMES:
            axes[0].plot(self.history["step"], self.history[f"{name}/response_length"], marker=".", label=name)
            axes[1].plot(self.history["step"], self.history[f"{name}/n_hwe"], marker=".", label=name)
        axes[0].set_title("response length by bucket")
        axes[1].set_title("N_HE by bucket")
        for ax in axes:
            ax.set_xlabel("step")
            ax.legend()
        fig.tight_layout()
        return fig

    def state_dict(self) -> dict:
        return {"history": {k: list(v) for k, v in self.history.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict["history"]
        n = len(saved.get("step", []))
        # A checkpoint from before a curve existed: the curve is nan over its earlier steps.
        self.history = {k: list(saved.get(k, [float("nan")] * n)) for k in self._empty_history()}


def bucket_means(bucket: torch.Tensor, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-bucket means [3] of each per-sample tensor (nan for empty buckets), vectorized."""
    counts = torch.bincount(bucket, minlength=NUM_BUCKETS).double()
    out = {}
    for key, v in values.items():
        sums = torch.zeros(NUM_BUCKETS, dtype=torch.float64, device=v.device).index_add_(0, bucket.to(v.device), v.double())
        out[key] = torch.where(counts.to(v.device) > 0, sums / counts.to(v.device).clamp_min(1), torch.nan)
    return out



def _md(text: str, limit: int = 600) -> str:
    text = text if len(text) <= limit else text[:limit] + " …"
    return text.replace("|", "\\|").replace("\n", " ")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
