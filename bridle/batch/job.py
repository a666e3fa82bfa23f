"""A batch job on Ray Data: list the files, skip the shards already done, run the rest through a pool of
ONNX Runtime actors (`map_batches`, one shard per call), and sum up.

Ray starts in this process when none is running and no address is given; `address` joins an existing
cluster. Actors are sized from the resources Ray sees: each asks for an equal share of the CPUs, a
fraction when there are more actors than CPUs (Ray would otherwise start only as many as there are
CPUs), and with GPUs an equal share of the GPUs and the CUDA provider. The input is an in-memory list
of shards, so no read task has to wait for a CPU the actors hold.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass

import ray
from ray.data import ActorPoolStrategy

from bridle.batch.inputs import digest, list_files, shard
from bridle.batch.settings import JobSettings, SettingsError
from bridle.batch.store import OutputStore
from bridle.batch.worker import ModelFiles, ShardWorker, read_model_files
from bridle.model.manifest import MANIFEST_FILE, Manifest
from bridle.model.windowing import aggregate_for
from bridle.runtime.sessions import CPU, CUDA

log = logging.getLogger("bridle.batch")


@dataclass(frozen=True)
class ActorPlan:
    actors: int
    cpus: float  # Ray CPUs per actor
    gpus: float  # Ray GPUs per actor
    threads: int  # ONNX Runtime intra-op threads per actor
    providers: list[str]


@dataclass(frozen=True)
class JobSummary:
    files: int
    shards: int
    shards_skipped: int  # complete before this run
    windows: int  # of every shard, done now or before
    errors: int
    seconds: float  # this run, Ray start included
    windows_this_run: int
    plan: ActorPlan | None  # None when nothing was left to do


def plan_actors(settings: JobSettings, cpus: float, gpus: float, node_cpus: float, shards: int) -> ActorPlan:
    """How many actors with which resources, from what the Ray cluster has; no more than `shards`."""
    device = settings.device
    if device == "auto":
        device = "gpu" if gpus >= 1 else "cpu"
    if device == "gpu" and gpus < 1:
        raise SettingsError("device gpu: the Ray cluster has no GPU")
    actors = min(settings.actors or (int(gpus) if device == "gpu" else max(1, int(cpus))), shards)
    share = min(cpus / actors, node_cpus)  # an actor must fit on one node
    threads = settings.threads or max(1, math.floor(share))
    if device == "gpu":
        return ActorPlan(actors, share, gpus / actors, threads, [CUDA, CPU])
    return ActorPlan(actors, share, 0.0, threads, [CPU])


def job_record(settings: JobSettings, files: list[str], model_files: ModelFiles) -> dict:
    """What makes an output folder this job's: the same files, shards and models (a manifest holds its
    graphs' hashes)."""
    models = {name: hashlib.sha256(f[MANIFEST_FILE]).hexdigest() for name, f in model_files.items()}
    return {
        "files": len(files),
        "digest": digest(files),
        "shard_files": settings.shard_files,
        "models": models,
        "windowing": {"tolerance": settings.windowing.tolerance, "hop": settings.windowing.hop},
        "aggregate": settings.aggregate,
    }


def check_aggregate(settings: JobSettings, model_files: ModelFiles) -> None:
    """SettingsError when a model's head cannot pool its scores by `settings.aggregate` (max of a
    softmax head), before any work starts."""
    for name, files in model_files.items():
        manifest = Manifest.from_dict(json.loads(files[MANIFEST_FILE]))
        if manifest.has_classifier:
            try:
                aggregate_for(manifest.classifier.activation, settings.aggregate)
            except ValueError as e:
                raise SettingsError(f"model {name!r}: {e}") from None


class RayShardWorker(ShardWorker):
    """ShardWorker whose model files come from Ray's object store (put there once by the driver)."""

    def __init__(self, model_files: ray.ObjectRef, **settings) -> None:
        super().__init__(ray.get(model_files), **settings)


def _start_ray(settings: JobSettings) -> bool:
    """Join `settings.address`, or start a local Ray; True when this call started or joined it."""
    if ray.is_initialized():
        return False
    if settings.address:
        ray.init(address=settings.address, log_to_driver=False)
    else:
        ray.init(num_cpus=settings.num_cpus, include_dashboard=False, log_to_driver=False)
    return True


def run_job(settings: JobSettings) -> JobSummary:
    """Run the job to its end. A Ray already initialised in this process (tests, notebooks) is used as
    it is, whatever `settings.address` says; otherwise Ray is joined or started, and stopped at the end."""
    began = time.monotonic()
    files = list_files(settings.input)
    model_files = read_model_files(list(settings.model_dirs), settings.precision)
    check_aggregate(settings, model_files)
    store = OutputStore(settings.output)
    store.claim(job_record(settings, files, model_files))
    shards = shard(files, settings.shard_files)
    done = store.done_shards()
    todo = [(i, paths) for i, paths in enumerate(shards) if i not in done]
    plan = None
    windows_now = 0
    if todo:
        started = _start_ray(settings)
        try:
            resources = ray.cluster_resources()
            node_cpus = max(n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"])
            cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
            plan = plan_actors(settings, cpus, gpus, node_cpus, shards=len(todo))
            log.info("%d of %d shards to do on %s", len(todo), len(shards), plan)
            rows = [{"shard": i, "paths": paths} for i, paths in todo]
            results = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
                RayShardWorker,
                batch_size=1,
                compute=ActorPoolStrategy(size=plan.actors),
                num_cpus=plan.cpus,
                num_gpus=plan.gpus,
                fn_constructor_kwargs={
                    "model_files": ray.put(model_files),
                    "providers": plan.providers,
                    "threads": plan.threads,
                    "output": settings.output,
                    "limits": settings.limits,
                    "batch_size": settings.batch_size,
                    "top_k": settings.top_k,
                    "windowing": settings.windowing,
                    "aggregate": settings.aggregate,
                },
            )
            windows_now = sum(int(r["windows"]) for r in results.iter_rows())
        finally:
            if started:
                ray.shutdown()
    summaries = store.summaries()
    return JobSummary(
        files=len(files),
        shards=len(shards),
        shards_skipped=len(done),
        windows=sum(s["windows"] for s in summaries),
        errors=sum(s["errors"] for s in summaries),
        seconds=time.monotonic() - began,
        windows_this_run=windows_now,
        plan=plan,
    )
