"""The paper's first claim on real benchmarks: does BRIDLE pretraining help the downstream task?

    python -m experiments.ssl_benchmark run [--dataset urbansound8k --dataset cifar10] [--jobs 2]
        [--urbansound8k ../shared/data/urbansound8k] [--cifar10 ../shared/data/cifar10]
        [--runs runs/benchmarks] [--out results/benchmarks]
    python -m experiments.ssl_benchmark report [--out results/benchmarks] [--runs runs/benchmarks]

Per data set (experiments/benchmarks/plan.py): pretraining with the bundled recipe's stages on each part's
training data; a learning-rate sweep for fine-tuning (seed 0, the smallest label fraction, both arms alike);
then, at every label fraction and seed, the classifier fine-tuned from the pretrained E (`bridle`) and from
a fresh E (`random-init`) with the same steps and the chosen learning rate, and a logistic regression on raw
features (`features`). Every result is a row of <out>/ssl.json, written as each job ends (atomically);
a rerun skips the rows it has and resumes unfinished stages from their checkpoints. `report` writes
<out>/README.md (the table with 95 % intervals and paired differences) and the loss and code-usage plots.
Jobs run `--jobs` at a time, one torch thread each, with a progress bar and an ETA.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from tqdm import tqdm

from bridle.model.atomic import atomic_write_bytes
from bridle.model.logs import log_to_stderr
from experiments.benchmarks import jobs
from experiments.benchmarks.plan import ARMS, BENCHMARKS, SEEDS, SWEEP_LRS, Benchmark
from experiments.benchmarks.report import write_report

log = logging.getLogger(__name__)
app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])
ROWS, SWEEP, PROBES = "ssl.json", "lr-sweep.json", "probe.json"


@dataclass
class Job:
    key: tuple[Any, ...]  # identifies the result row (skip when present)
    fn: Callable[..., dict[str, Any]]
    args: tuple[Any, ...] | Callable[[], tuple[Any, ...]]  # a callable: resolved when the job starts
    needs: list[tuple[Any, ...]] = field(default_factory=list)
    sink: str = ROWS  # which results file its row goes to ("" = none)


class Results:
    """The rows of ssl.json and lr-sweep.json, rewritten atomically after every job."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.rows = {name: self._read(out / name) for name in (ROWS, SWEEP)}

    @staticmethod
    def _read(path: Path) -> list[dict[str, Any]]:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []

    def has(self, sink: str, key: tuple[Any, ...]) -> bool:
        return any(row_key(r, sink) == key for r in self.rows.get(sink, []))

    def add(self, sink: str, row: dict[str, Any]) -> None:
        self.rows[sink].append(row)
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.out / sink, (json.dumps(self.rows[sink], indent=1) + "\n").encode())


def row_key(row: dict[str, Any], sink: str) -> tuple[Any, ...]:
    base = (row["dataset"], row["split"], row["arm"], float(row["labels"]), int(row["seed"]))
    return (*base, float(row["lr"])) if sink == SWEEP else base


def chosen_lr(results: Results, bench: Benchmark) -> float:
    """The swept learning rate with the best accuracy averaged over the two network arms."""
    rows = [r for r in results.rows[SWEEP] if r["dataset"] == bench.dataset]
    scores = {lr: [r["accuracy"] for r in rows if r["lr"] == lr] for lr in SWEEP_LRS}
    complete = {lr: sum(a) / len(a) for lr, a in scores.items() if len(a) == 2}
    if not complete:
        raise RuntimeError(f"no complete learning-rate sweep for {bench.dataset}")
    return max(complete, key=lambda lr: complete[lr])


def plan_jobs(bench: Benchmark, setup: jobs.Setup, results: Results, seeds: tuple[int, ...]) -> list[Job]:
    pre = [("pretrain", bench.dataset, p.name) for p in bench.parts]
    out: list[Job] = [
        Job(key, jobs.pretrain, (bench.dataset, p.name, setup), sink="")
        for key, p in zip(pre, bench.parts, strict=True)
    ]
    first, f0 = bench.parts[0], bench.sweep_fraction
    sweep = []
    for lr in SWEEP_LRS:
        for arm in ("bridle", "random-init"):
            key = (bench.dataset, first.name, arm, float(f0), 0, float(lr))
            args = (bench.dataset, first.name, arm, f0, 0, lr, setup)
            out.append(Job(key, jobs.finetune, args, needs=[pre[0]], sink=SWEEP))
            sweep.append(key)

    def with_lr(*args: Any) -> Callable[[], tuple[Any, ...]]:
        return lambda: (*args[:5], chosen_lr(results, bench), *args[5:])

    for labels in bench.fractions:  # the smallest fraction first: its jobs are the quickest
        for seed in seeds:
            for i, part in enumerate(bench.parts):
                for arm in ARMS:
                    key = (bench.dataset, part.name, arm, float(labels), seed)
                    if arm == "features":
                        args = (bench.dataset, part.name, labels, seed, setup)
                        out.append(Job(key, jobs.features, args, needs=[pre[i]]))
                    else:
                        resolve = with_lr(bench.dataset, part.name, arm, labels, seed, setup)
                        out.append(Job(key, jobs.finetune, resolve, needs=[pre[i], *sweep]))
    return out


def run_jobs(todo: list[Job], results: Results, workers: int) -> None:
    """Run `todo` `workers` at a time, each as soon as the jobs it needs have finished."""
    done = {j.key for j in todo if j.sink and results.has(j.sink, j.key)}
    pending = [j for j in todo if j.key not in done]
    running: dict[Future[dict[str, Any]], Job] = {}
    bar = tqdm(total=len(pending), desc="benchmark jobs", unit="job")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=jobs.set_threads, initargs=(1,)
    ) as pool:
        while pending or running:
            ready = [j for j in pending if all(n in done for n in j.needs)]
            ready.sort(key=lambda j: j.fn is not jobs.pretrain)  # pretraining first: the others wait on it
            for job in ready[: workers - len(running)]:
                pending.remove(job)
                args = job.args() if callable(job.args) else job.args
                running[pool.submit(job.fn, *args)] = job
            if not running:
                raise RuntimeError(f"{len(pending)} jobs wait on jobs that cannot run: {pending[0].needs}")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                job = running.pop(future)
                row = future.result()  # a failed job stops the benchmark with its error
                if job.sink:
                    results.add(job.sink, row)
                done.add(job.key)
                bar.set_postfix_str(" ".join(str(k) for k in job.key[:5]))
                bar.update()
    bar.close()


@app.command()
def run(
    dataset: list[str] = typer.Option(list(BENCHMARKS), help="data sets to run"),
    urbansound8k: str = typer.Option("../shared/data/urbansound8k", help="UrbanSound8K's folder"),
    cifar10: str = typer.Option("../shared/data/cifar10", help="CIFAR-10's folder"),
    jobs_: int = typer.Option(2, "--jobs", help="jobs at a time, one torch thread each"),
    runs: Path = typer.Option(Path("runs/benchmarks"), help="training runs (resumable)"),
    out: Path = typer.Option(Path("results/benchmarks"), help="ssl.json, lr-sweep.json, tables.md, plots"),
    seeds: int = typer.Option(len(SEEDS), help="seeds per arm and label fraction (0, 1, ...)"),
    set_: list[str] = typer.Option([], "--set", help="recipe override key=value for every run (tests)"),
    finetune_steps: int | None = typer.Option(None, help="fine-tuning steps at every fraction (tests)"),
) -> None:
    """Pretrain, sweep, fine-tune both arms and fit the features baseline; then write the report."""
    log_to_stderr(logging.WARNING, timestamps=False)
    roots = {"urbansound8k": urbansound8k, "cifar10": cifar10}
    unknown = sorted(set(dataset) - set(BENCHMARKS))
    if unknown:
        typer.echo(f"error: unknown data set(s) {unknown}; choose from {sorted(BENCHMARKS)}", err=True)
        raise typer.Exit(2)
    results = Results(out)
    todo = []
    for name in dataset:
        setup = jobs.Setup(roots[name], str(runs), tuple(set_), finetune_steps)
        todo += plan_jobs(BENCHMARKS[name], setup, results, tuple(range(seeds)))
    run_jobs(todo, results, jobs_)
    write_report(out, runs)


@app.command()
def probe(
    dataset: list[str] = typer.Option(list(BENCHMARKS), help="data sets to probe"),
    urbansound8k: str = typer.Option("../shared/data/urbansound8k", help="UrbanSound8K's folder"),
    cifar10: str = typer.Option("../shared/data/cifar10", help="CIFAR-10's folder"),
    runs: Path = typer.Option(Path("runs/benchmarks"), help="the runs `run` pretrained"),
    out: Path = typer.Option(Path("results/benchmarks"), help="where probe.json goes"),
) -> None:
    """The diagnosis: a linear probe on the frozen pretrained E against the same E at initialisation."""
    roots = {"urbansound8k": urbansound8k, "cifar10": cifar10}
    rows = []
    for name in dataset:
        for part in BENCHMARKS[name].parts:
            rows += jobs.probe(name, part.name, jobs.Setup(roots[name], str(runs)))
            typer.echo(json.dumps(rows[-2:]))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / PROBES, (json.dumps(rows, indent=1) + "\n").encode())


@app.command()
def report(
    out: Path = typer.Option(Path("results/benchmarks"), help="where ssl.json is"),
    runs: Path = typer.Option(Path("runs/benchmarks"), help="the runs, for the loss and usage plots"),
) -> None:
    """Write <out>/README.md and the plots from ssl.json and the runs' stage histories."""
    write_report(out, runs)


if __name__ == "__main__":
    app()
