from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.runtime import CpuThreads
from service.settings import DEFAULT_MODELS_ROOT, Settings, usable_cores


def test_defaults_point_at_the_bundled_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BRIDLE_MODEL_DIRS", raising=False)
    assert Settings().model_dirs == [DEFAULT_MODELS_ROOT]
    assert DEFAULT_MODELS_ROOT.name == "models" and (DEFAULT_MODELS_ROOT.parent / "service").is_dir()


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
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings()
    assert s.model_dirs == [Path("/a/audio"), Path("/b/image")]
    assert s.providers == ["CPUExecutionProvider"]
    assert (s.max_batch_size, s.max_wait_ms, s.queue_size, s.request_timeout_s) == (4, 2.5, 9, 1.5)
    assert (s.max_upload_bytes, s.api_key, s.workers) == (1000, "k", 2)
    assert (s.concurrent_runs, s.decode_threads, s.access_log) == (3, 5, True)
    assert s.cpu_threads == CpuThreads(intra_op=1, spin=True)


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
