"""The GPU provider setup, checked on the CPU: options from settings, the refusal when a requested provider
does not start (really run here: onnxruntime-gpu with no GPU), no silent fallback, TensorRT caches and
profiles, and the device id of each worker."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import onnxruntime as ort
import pytest

from bridle.model.manifest import InputSpec, read_manifest
from bridle.runtime.devices import SLOTS_ENV, device_for_process
from bridle.runtime.errors import ModelLoadError
from bridle.runtime.models import load_model
from bridle.runtime.providers import (
    GpuOptions,
    TensorrtOptions,
    cuda_options,
    missing_tensorrt_libraries,
    native_stderr,
    tensorrt_options,
)
from bridle.runtime.sessions import CPU, CUDA, TENSORRT, ProviderChooser
from bridle.service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
CAPI = Path(ort.__file__).parent / "capi"
SIGNAL = InputSpec(name="signal", dtype="float32", shape=["batch", 400])


def cuda_starts(model_dir: Path) -> bool:
    """Whether a real session here gets the CUDA provider (a GPU with its driver and libraries)."""
    try:
        return CUDA in load_model(model_dir, ProviderChooser([CUDA, CPU])).providers
    except ModelLoadError:
        return False


@pytest.fixture(scope="module")
def no_cuda(model_root: Path) -> None:
    """These tests need CUDA to fail: the onnxruntime-gpu wheel on a machine where it cannot start."""
    if CUDA not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider at all (the CPU wheel)")
    if cuda_starts(model_root / "image"):
        pytest.skip("CUDA really works here: tests/service/test_gpu.py covers this machine")


def test_cuda_options_follow_the_settings() -> None:
    settings = Settings(
        cudnn_conv_algo_search="EXHAUSTIVE",
        use_tf32=True,
        gpu_mem_limit_mb=512,
        arena_extend_strategy="kSameAsRequested",
    )
    assert cuda_options(settings.gpu_options(device_id=3)) == {
        "device_id": "3",
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "use_tf32": "1",
        "gpu_mem_limit": str(512 * 1024 * 1024),
        "arena_extend_strategy": "kSameAsRequested",
    }
    # the defaults: heuristic search, TF32 off (parity with the CPU), no memory bound
    assert cuda_options(Settings().gpu_options(0)) == {
        "device_id": "0",
        "cudnn_conv_algo_search": "HEURISTIC",
        "use_tf32": "0",
        "arena_extend_strategy": "kNextPowerOfTwo",
    }


def test_tensorrt_options_cache_on_the_writable_folder_and_profile_the_manifest_shape(
    model_root: Path, tmp_path: Path
) -> None:
    signal = read_manifest(model_root / "audio").input
    settings = Settings(trt_cache_dir=tmp_path / "trt")
    trt = settings.tensorrt_options()
    assert (trt.cache_dir, trt.max_batch, trt.opt_batch) == (tmp_path / "trt", 64, 64)  # the GPU's batches
    samples = signal.shape[1]
    assert tensorrt_options(settings.gpu_options(1), trt, signal, "abc") == {
        "device_id": "1",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(tmp_path / "trt" / "engines" / "abc"),
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": str(tmp_path / "trt"),
        "trt_fp16_enable": "0",
        "trt_profile_min_shapes": f"signal:1x{samples}",
        "trt_profile_opt_shapes": f"signal:64x{samples}",
        "trt_profile_max_shapes": f"signal:64x{samples}",
    }
    assert Settings(max_batch_size=32).tensorrt_options().max_batch == 32  # a set max batch wins
    # the default cache folder is a user cache, never the (read-only) model folder
    assert Settings().trt_cache_dir.parts[-2:] == ("bridle", "tensorrt")


@pytest.mark.parametrize(
    ("library", "options"),
    [
        ("libonnxruntime_providers_cuda.so", cuda_options(GpuOptions(gpu_mem_limit_mb=1))),
        (
            "libonnxruntime_providers_tensorrt.so",
            tensorrt_options(GpuOptions(), TensorrtOptions(Path("/c"), 2, 2), SIGNAL, "k"),
        ),
    ],
)
def test_every_option_name_is_one_the_installed_provider_library_knows(
    library: str, options: dict[str, str]
) -> None:
    """ONNX Runtime checks option names only when the provider loads (never on a CPU machine), so the
    names are looked up in the provider's own library, where its option parser keeps them."""
    path = CAPI / library
    if not path.exists():
        pytest.skip(f"{library} is not installed (the CPU onnxruntime wheel)")
    data = path.read_bytes()
    unknown = [name for name in options if b"\0" + name.encode() + b"\0" not in data]
    assert not unknown, f"{library} does not know {unknown}"


def test_a_requested_provider_that_does_not_start_refuses_the_model(model_root: Path, no_cuda) -> None:
    with pytest.raises(ModelLoadError) as e:
        load_model(model_root / "audio", ProviderChooser([CUDA, CPU]))
    message = str(e.value)
    assert "BRIDLE_PROVIDERS asks for ['CUDAExecutionProvider']" in message
    assert "would run on ['CPUExecutionProvider']" in message
    assert "ONNX Runtime logged no reason" not in message  # ORT's own reason is in it


def test_bridle_serve_with_cuda_on_a_cpu_machine_stops_with_a_clear_message(
    model_root: Path, no_cuda
) -> None:
    env = os.environ | {"BRIDLE_PROVIDERS": "CUDAExecutionProvider"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bridle.service.cli",
            "--port",
            "0",
            "--model-dir",
            str(model_root / "audio"),
        ],  # any free port
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "cannot start" in result.stderr and "could not start it" in result.stderr, result.stderr


def test_the_cuda_probe_warns_with_onnx_runtimes_reason_and_serves_on_the_cpu(
    model_root: Path, no_cuda, caplog, capfd
) -> None:
    chooser = ProviderChooser()
    with caplog.at_level(logging.WARNING, logger="bridle.service"):
        model = load_model(model_root / "audio", chooser)
        again = load_model(model_root / "image", chooser)
    assert model.providers == again.providers == [CPU] and chooser.requested() == [CPU]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # probed once; later sessions ask the CPU at once
    assert "the CUDA execution provider did not start: serving on the CPU" in warnings[0]
    assert "CUDA" in warnings[0].split("(", 1)[1]  # ONNX Runtime's own reason follows
    assert "onnxruntime" not in capfd.readouterr().err  # ORT's raw lines went to the log, not stderr


def test_require_gpu_refuses_the_cpu(model_root: Path, no_cuda) -> None:
    with pytest.raises(ModelLoadError, match="BRIDLE_REQUIRE_GPU is set"):
        load_model(model_root / "audio", ProviderChooser(require_gpu=True))
    with pytest.raises(ModelLoadError, match="names no GPU provider"):
        ProviderChooser([CPU], require_gpu=True).requested()


class FakeSession:
    """Stands in for `ort.InferenceSession`: records how it was made, reports the providers it was asked
    for (as a machine with a working GPU would)."""

    made: ClassVar[list[dict]] = []

    def __init__(self, path: str, sess_options=None, providers=(), provider_options=(), **kwargs) -> None:
        self.providers = list(providers)
        self.fallback = True
        FakeSession.made.append({"providers": self.providers, "options": list(provider_options), **kwargs})

    def get_providers(self) -> list[str]:
        return self.providers

    def disable_fallback(self) -> None:
        self.fallback = False


def test_sessions_get_the_settings_provider_options_and_no_fallback(
    monkeypatch, model_root: Path, tmp_path: Path
) -> None:
    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    FakeSession.made.clear()
    settings = Settings(providers=[TENSORRT, CUDA, CPU], trt_cache_dir=tmp_path / "trt", use_tf32=True)
    chooser = settings.provider_chooser(device_id=2)
    signal = read_manifest(model_root / "audio").input
    session = chooser.session(model_root / "audio" / "encoder.onnx", ort.SessionOptions(), signal, "k1")
    assert session.fallback is False  # a failed run raises instead of moving the session to the CPU
    (made,) = FakeSession.made
    assert made["providers"] == [TENSORRT, CUDA, CPU] and made["enable_fallback"] == 0
    trt, cuda, cpu = made["options"]
    assert trt["device_id"] == cuda["device_id"] == "2" and cuda["use_tf32"] == "1" and cpu == {}
    assert (tmp_path / "trt" / "engines" / "k1").is_dir()  # made before TensorRT writes into it


def test_a_tensorrt_cache_that_cannot_be_made_stops_the_start(model_root: Path, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    chooser = Settings(providers=[TENSORRT, CUDA, CPU], trt_cache_dir=tmp_path / "a-file" / "trt")
    with pytest.raises(ModelLoadError, match="TensorRT cache folder"):
        chooser.provider_chooser(0)._prepare_cache("k")


def test_tensorrt_asked_for_without_its_libraries_warns_and_goes_on_without_it(caplog) -> None:
    if TENSORRT not in ort.get_available_providers() or CUDA not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no TensorRT provider")
    if not missing_tensorrt_libraries():
        pytest.skip("TensorRT's libraries are installed here")
    with caplog.at_level(logging.WARNING, logger="bridle.service"):
        providers = ProviderChooser(use_tensorrt=True).requested()
    assert providers == [CUDA, CPU]
    assert any(
        "BRIDLE_USE_TENSORRT is set, but TensorRT cannot load" in r.getMessage()
        and "libnvinfer.so.10" in r.getMessage()
        for r in caplog.records
    )


def test_onnx_runtimes_lines_on_stderr_are_caught_and_other_lines_pass_through(capfd) -> None:
    with native_stderr() as captured:
        os.write(
            2, b"\x1b[1;31m2026-01-01 [E:onnxruntime:Default, x.cc:1 f] [ONNXRuntimeError] : 1 : FAIL : "
        )
        os.write(2, b"Failed to load library: libcublasLt.so.13\x1b[m\n")
        os.write(2, b"another thread's line\n")
    assert [(line.severity, line.message) for line in captured.ort] == [
        ("E", "Failed to load library: libcublasLt.so.13")
    ]
    assert captured.errors() == ["Failed to load library: libcublasLt.so.13"]
    err = capfd.readouterr().err
    assert "another thread's line" in err and "onnxruntime" not in err


def test_each_worker_claims_its_own_device(monkeypatch, tmp_path: Path) -> None:
    assert device_for_process([3]) == 3
    monkeypatch.setenv(SLOTS_ENV, str(tmp_path))
    # each claim opens its own lock file description, so in one process they behave like three workers
    assert [device_for_process([4, 5]) for _ in range(3)] == [4, 5, 4]
    monkeypatch.delenv(SLOTS_ENV)
    assert device_for_process([4, 5]) == 4  # one process: the first id


def test_a_dead_workers_device_slot_is_taken_by_the_next_worker(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from bridle.runtime.devices import claim_slot; "
        "print(claim_slot(Path(sys.argv[1])))"
    )
    first = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True)
    second = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True)
    assert first.stdout.strip() == second.stdout.strip() == b"0"  # the first one's lock died with it


def test_bridle_serve_workers_each_take_their_own_gpu_id(model_root: Path, tmp_path: Path) -> None:
    """Two real uvicorn workers (on the CPU here): each claims a slot and logs the GPU it would run on."""
    port = _free_port()
    env = os.environ | {"BRIDLE_PROVIDERS": CPU, "BRIDLE_DEVICE_ID": "3,5", "BRIDLE_INTRA_OP_THREADS": "1"}
    cmd = [sys.executable, "-m", "bridle.service.cli", "--port", str(port), "--workers", "2"]
    log_file = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [*cmd, "--model-dir", str(model_root / "image")], cwd=REPO, env=env, stderr=log_file
    )
    try:
        deadline = time.monotonic() + 120
        while (tmp_path / "serve.log").read_text().count("runs on GPU") < 2:
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(60)
        log_file.close()
    text = (tmp_path / "serve.log").read_text()
    assert "(slot 0) runs on GPU 3" in text and "(slot 1) runs on GPU 5" in text, text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
