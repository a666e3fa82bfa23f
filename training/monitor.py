"""What a user watches: a tqdm bar (loss, lr, code usage), TensorBoard scalars, PNG plots per stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from bridle_model.quantizer import LevelUsage


class StageMonitor:
    """Logs one stage. Only the main process writes (others get `enabled=False`)."""

    def __init__(
        self,
        stage_dir: Path,
        stage: str,
        total: int,
        start: int,
        history: dict[str, Any] | None,
        enabled: bool = True,
    ) -> None:
        self.stage_dir, self.stage, self.enabled = stage_dir, stage, enabled
        self.history: dict[str, Any] = history or {"step": [], "loss": [], "usage": []}
        self.bar = tqdm(total=total, initial=start, desc=stage, unit="step", disable=not enabled)
        self.writer = SummaryWriter(str(stage_dir / "tensorboard")) if enabled else None

    def log(self, step: int, scalars: dict[str, float], usage: list[LevelUsage]) -> None:
        """Record the losses/lr at `step` and the per-level code usage since the last call."""
        if not self.enabled:
            return
        self.history["step"].append(step)
        self.history["loss"].append(scalars["loss"])
        self.history["usage"].append([u.usage_rate for u in usage])
        assert self.writer is not None
        for key, value in scalars.items():
            self.writer.add_scalar(f"{self.stage}/{key}", value, step)
        for level, u in enumerate(usage):
            self.writer.add_scalar(f"{self.stage}/usage_rate/level{level}", u.usage_rate, step)
            self.writer.add_scalar(f"{self.stage}/perplexity/level{level}", u.perplexity, step)
        post = {"loss": f"{scalars['loss']:.3f}", "lr": f"{scalars['lr']:.2e}"}
        if usage:
            post["usage"] = "/".join(f"{u.usage_rate:.2f}" for u in usage)
        self.bar.set_postfix(post)

    def advance(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self, plot: bool) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if plot and self.enabled and self.history["step"]:
            self.plot()

    def plot(self) -> None:
        steps = self.history["step"]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(steps, self.history["loss"])
        ax.set(xlabel="step", ylabel="loss", title=f"{self.stage}: training loss")
        fig.savefig(self.stage_dir / "loss.png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        rows = [u for u in self.history["usage"] if u]
        if rows and len(rows) == len(steps):
            fig, ax = plt.subplots(figsize=(6, 4))
            for level in range(len(rows[0])):
                ax.plot(steps, [r[level] for r in rows], label=f"level {level}")
            ax.set(xlabel="step", ylabel="code usage rate", ylim=(0, 1.05), title=f"{self.stage}: code usage")
            ax.legend()
            fig.savefig(self.stage_dir / "usage.png", dpi=100, bbox_inches="tight")
            plt.close(fig)
