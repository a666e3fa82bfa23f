from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from bridle.runtime.models import DEFAULT_MODELS_ROOT
from bridle.runtime.sessions import CpuThreads
from bridle.service import cli as service_cli
from bridle.service.settings import Settings, default_frontends, usable_cores
from bridle.service.supervisor import shared_memory_shortfall


def test_defaults_point_at_the_bundled_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BRIDLE_MODEL_DIRS", raising=False)
    assert Settings().model_dirs == [DEFAULT_MODELS_ROOT]
    assert (
        DEFAULT_MODELS_ROOT.name == "models" and (DEFAULT_MODELS_ROOT.parent / "bridle" / "service").is_dir()
    )


def test_environment_variables_set_every_field(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "BRIDLE_MODEL_DIRS": "/a/audio, /b/image",
        "BRIDLE_PROVIDERS": "CPUExecutionProvider",
        "BRIDLE_MAX_BATCH_SIZE": "4",
        "BRIDLE_MAX_WAIT_MS": "2.5",
        "BRIDLE_QUEUE_SIZE": "9",
        "BRIDLE_REQUEST_TIMEOUT_S": "1.5",
        "BRIDLE_MAX_UPLOAD_BYTES": "1000",
        "BRIDLE_API_KEY": "k",
        "BRIDLE_WORKERS": "2",
        "BRIDLE_CONCURRENT_RUNS": "3",
        "BRIDLE_INTRA_OP_THREADS": "1",
        "BRIDLE_SPIN_THREADS": "true",
        "BRIDLE_DECODE_THREADS": "5",
        "BRIDLE_ACCESS_LOG": "1",
        "BRIDLE_FRONTEND_NICE": "0",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings()
    assert s.model_dirs == [Path("/a/audio"), Path("/b/image")]
    assert s.providers == ["CPUExecutionProvider"]
    assert (s.max_batch_size, s.max_wait_ms, s.queue_size, s.request_timeout_s) == (4, 2.5, 9, 1.5)
    assert (s.max_upload_bytes, s.api_key, s.workers) == (1000, "k", 2)
    assert (s.concurrent_runs, s.decode_threads, s.access_log, s.frontend_nice) == (3, 5, True, 0)
    assert s.cpu_threads == CpuThreads(intra_op=1, spin=True, arena=False)  # the arena is off unless asked


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDLE_MAX_BATCH_SIZE", "0")
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize("runs", [1, 2, 64])
def test_ort_threads_default_to_the_cores_shared_among_the_runs(runs: int) -> None:
    threads = Settings(concurrent_runs=runs).cpu_threads
    assert threads.intra_op == max(1, usable_cores() // runs)
    assert threads.spin is False
    assert Settings(concurrent_runs=runs, intra_op_threads=3).cpu_threads.intra_op == 3


def test_gpu_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = {
        "BRIDLE_DEVICE_ID": "0, 2",
        "BRIDLE_REQUIRE_GPU": "true",
        "BRIDLE_CUDNN_CONV_ALGO_SEARCH": "EXHAUSTIVE",
        "BRIDLE_USE_TF32": "1",
        "BRIDLE_GPU_MEM_LIMIT_MB": "2048",
        "BRIDLE_ARENA_EXTEND_STRATEGY": "kSameAsRequested",
        "BRIDLE_TRT_CACHE_DIR": str(tmp_path),
        "BRIDLE_WARMUP": "all",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings()
    assert (s.device_id, s.require_gpu, s.warmup, s.trt_cache_dir) == ([0, 2], True, "all", tmp_path)
    gpu = s.gpu_options(2)
    assert (gpu.device_id, gpu.cudnn_conv_algo_search, gpu.use_tf32) == (2, "EXHAUSTIVE", True)
    assert (gpu.gpu_mem_limit_mb, gpu.arena_extend_strategy) == (2048, "kSameAsRequested")
    for name, bad in [("BRIDLE_DEVICE_ID", "-1"), ("BRIDLE_CUDNN_CONV_ALGO_SEARCH", "FAST")]:
        monkeypatch.setenv(name, bad)
        with pytest.raises(ValidationError):
            Settings()
        monkeypatch.setenv(name, env[name])


def test_a_gpu_gets_its_own_batching_defaults_unless_they_are_set() -> None:
    cpu = Settings()
    assert (cpu.max_batch_size, cpu.concurrent_runs) == (16, 2)
    assert cpu.for_device(on_gpu=False) is cpu
    gpu = cpu.for_device(on_gpu=True)
    assert (gpu.max_batch_size, gpu.concurrent_runs) == (64, 1)
    chosen = Settings(max_batch_size=8, concurrent_runs=3).for_device(on_gpu=True)
    assert (chosen.max_batch_size, chosen.concurrent_runs) == (8, 3)


def test_front_end_processes_default_from_the_cores_and_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_frontends(1, gpu=False) == 0 and default_frontends(1, gpu=True) == 0
    assert default_frontends(2, gpu=False) == 2 and default_frontends(16, gpu=False) == 2
    assert default_frontends(16, gpu=True) == 8
    assert Settings(frontends=0).frontends == 0
    assert Settings(workers=3).frontends == 0  # several workers: each one process
    for gpu in (False, True):
        monkeypatch.setattr("bridle.service.settings.nvidia_gpu_present", lambda gpu=gpu: gpu)
        assert Settings().frontends == default_frontends(usable_cores(), gpu)
        assert Settings(providers=["CPUExecutionProvider"]).frontends == default_frontends(
            usable_cores(), False
        )


def test_front_end_processes_and_workers_do_not_mix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDLE_FRONTENDS", "2")
    assert Settings().frontends == 2
    monkeypatch.setenv("BRIDLE_WORKERS", "2")
    with pytest.raises(ValidationError, match="BRIDLE_FRONTENDS"):
        Settings()


BUNDLED_MODELS = Path(__file__).resolve().parents[2] / "models"


class _Usage(NamedTuple):
    total: int
    used: int
    free: int


def _shm_free(monkeypatch: pytest.MonkeyPatch, free: int) -> None:
    monkeypatch.setattr("bridle.service.supervisor.shutil.disk_usage", lambda path: _Usage(free, 0, free))


def test_rings_that_do_not_fit_in_shared_memory_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(model_dirs=[BUNDLED_MODELS], frontends=2)
    _shm_free(monkeypatch, 64 * 2**20)  # a container's default /dev/shm
    short = shared_memory_shortfall(settings)
    assert short is not None and "2 front ends need" in short and "--shm-size" in short
    _shm_free(monkeypatch, 2**40)
    assert shared_memory_shortfall(settings) is None
    assert shared_memory_shortfall(settings.model_copy(update={"frontends": 0})) is None


def test_bridle_serve_refuses_front_ends_it_was_asked_for_that_do_not_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _shm_free(monkeypatch, 2**20)
    monkeypatch.setenv("BRIDLE_FRONTENDS", "2")
    result = CliRunner().invoke(service_cli.cli, ["--model-dir", str(BUNDLED_MODELS)])
    assert result.exit_code == 2, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot start: 2 front ends need"), result.stderr


def test_bridle_serve_serves_in_one_process_when_its_default_front_ends_do_not_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _shm_free(monkeypatch, 2**20)
    monkeypatch.delenv("BRIDLE_FRONTENDS", raising=False)
    monkeypatch.setattr("bridle.service.settings.usable_cores", lambda: 2)  # a default of 2 front ends
    served: list[int] = []

    class Server:  # stands in for uvicorn: records the layout it was given
        started = True

        def __init__(self, config: object, admission: object, drain_timeout_s: float) -> None:
            served.append(0)

        def run(self) -> None:
            pass

    def no_processes(*args: object) -> None:
        raise AssertionError("front-end processes were started")

    monkeypatch.setattr(service_cli, "DrainingServer", Server)
    monkeypatch.setattr(service_cli, "serve_processes", no_processes)
    result = CliRunner().invoke(service_cli.cli, ["--model-dir", str(BUNDLED_MODELS)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert served == [0]
