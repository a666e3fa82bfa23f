"""What a user watches: a tqdm bar (loss, lr, code usage, samples/s, data wait), TensorBoard scalars,
PNG plots per stage; and, on request, which examples each step used (`SeenLog`).

Throughput: `samples_per_s` counts the examples of all ranks per second of wall clock since the last log;
`data_wait` is the share of that time the loop spent waiting for the next batch (near 0: the workers keep
up; near 1: training is starved for data, add `data.workers`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from bridle.model.quantizer import LevelUsage


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
        if "samples_per_s" in scalars:
            post["samples/s"] = f"{scalars['samples_per_s']:.1f}"
        if "data_wait" in scalars:
            post["wait"] = f"{100 * scalars['data_wait']:.0f}%"
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


class Throughput:
    """Samples per second and the data-wait share, over the window since the last `window()`."""

    def __init__(self, world_size: int = 1) -> None:
        self.world_size = world_size
        self._start = time.perf_counter()
        self._wait = 0.0
        self._samples = 0

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Time spent in the block counts as waiting for data."""
        tic = time.perf_counter()
        try:
            yield
        finally:
            self._wait += time.perf_counter() - tic

    def count(self, samples: int) -> None:
        self._samples += samples

    def window(self) -> dict[str, float]:
        """{"samples_per_s", "data_wait"} since the last call (all ranks: this rank's count x world)."""
        now = time.perf_counter()
        seconds = max(now - self._start, 1e-9)
        out = {
            "samples_per_s": self._samples * self.world_size / seconds,
            "data_wait": min(1.0, self._wait / seconds),
        }
        self._start, self._wait, self._samples = now, 0.0, 0
        return out


class SeenLog:
    """`<stage>/seen-<rank>.tsv`: one line per optimiser step, "step<TAB>id,id,...", the examples (file
    indices or shard keys) that step trained on. A resumed stage first drops the lines after its
    checkpoint's step (the steps it will redo), so the file is always the run's one true history."""

    def __init__(self, stage_dir: Path, rank: int, start: int) -> None:
        stage_dir.mkdir(parents=True, exist_ok=True)
        self.path = stage_dir / f"seen-{rank}.tsv"
        kept = []
        if start > 0 and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                if line and int(line.split("\t", 1)[0]) <= start:
                    kept.append(line + "\n")
        self.path.write_text("".join(kept), encoding="utf-8")
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (open for the whole stage)

    def write(self, step: int, ids: list[str]) -> None:
        self._file.write(f"{step}\t{','.join(ids)}\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_seen(path: Path) -> list[tuple[int, list[str]]]:
    """The (step, ids) lines of a `SeenLog` file."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        step, _, ids = line.partition("\t")
        rows.append((int(step), ids.split(",") if ids else []))
    return rows
