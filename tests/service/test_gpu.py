"""CUDA against the CPU on real micro models (marker `gpu`: run where CUDA really starts, skipped with
ONNX Runtime's reason elsewhere), and the pieces of `bench.gpu_check` they share, checked on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import bench.gpu_check as gpu_check
from bench.gpu_check import (
    CODE_AGREEMENT,
    EMBEDDING_TOLERANCE,
    HEAVY_OPS,
    compare,
    cuda_chooser,
    outputs,
    placement,
    random_batch,
    why_no_cuda,
)
from bridle.runtime.models import load_model
from bridle.runtime.sessions import CPU, CUDA, ProviderChooser


@pytest.fixture(scope="module")
def cuda(model_root: Path) -> None:
    reason = why_no_cuda(model_root / "image")
    if reason is not None:
        pytest.skip(f"CUDA does not start here: {reason.split(']: ', 1)[-1][:300]}")


# ---- on a GPU --------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("modality", ["audio", "image", "video"])
def test_the_heavy_nodes_run_on_cuda(model_root: Path, cuda, modality: str) -> None:
    nodes = placement(model_root / modality, cuda_chooser())
    on_cpu = {op for op in nodes.get(CPU, {}) if op in HEAVY_OPS}
    assert CUDA in nodes and not on_cpu, f"on the CPU: {dict(nodes.get(CPU, {}))}"


@pytest.mark.gpu
@pytest.mark.parametrize("tf32", [False, True])
@pytest.mark.parametrize("batch", [1, 8, 16])
@pytest.mark.parametrize("modality", ["audio", "image", "video"])
def test_cuda_matches_the_cpu(model_root: Path, cuda, modality: str, batch: int, tf32: bool) -> None:
    cpu = load_model(model_root / modality, ProviderChooser([CPU]))
    gpu = load_model(model_root / modality, cuda_chooser(use_tf32=tf32))
    assert gpu.providers[0] == CUDA
    signal = random_batch(cpu, batch, seed=batch)
    figures = compare(outputs(cpu, signal), outputs(gpu, signal))
    worst = max(v for k, v in figures.items() if k.endswith("max abs diff"))
    # TF32 keeps ~10 mantissa bits: parity is asked of full fp32 only; with TF32 the figure is reported
    assert worst <= (EMBEDDING_TOLERANCE if not tf32 else 1e-2), figures
    if not tf32:
        assert figures["codes agreement"] >= CODE_AGREEMENT, figures


@pytest.mark.gpu
@pytest.mark.parametrize("modality", ["audio", "image", "video"])
def test_cuda_codes_do_not_depend_on_the_batch_size(model_root: Path, cuda, modality: str) -> None:
    gpu = load_model(model_root / modality, cuda_chooser())
    signal = random_batch(gpu, 16)
    whole = gpu.run("tokenizer", signal)["codes"]  # (16, N, L)
    for batch in (1, 8):
        parts = np.concatenate(
            [gpu.run("tokenizer", signal[i : i + batch])["codes"] for i in range(0, 16, batch)]
        )
        assert (parts == whole).mean() >= CODE_AGREEMENT


# ---- the same pieces on the CPU --------------------------------------------------------------------


def test_placement_reads_onnx_runtimes_profile(model_root: Path) -> None:
    nodes = placement(model_root / "audio", ProviderChooser([CPU]))
    assert set(nodes) == {CPU} and nodes[CPU]["MatMul"] > 0


def test_compare_reports_diffs_and_code_agreement_per_level() -> None:
    a = {"embedding": np.zeros((2, 3)), "codes": np.zeros((2, 4, 2), dtype=np.int64)}
    b = {"embedding": np.full((2, 3), 0.5), "codes": a["codes"].copy()}
    b["codes"][0, 0, 1] = 7
    figures = compare(a, b)
    assert figures["embedding max abs diff"] == 0.5
    assert figures["codes agreement"] == 15 / 16 and figures["codes agreement per level"] == [1.0, 7 / 8]


def test_compare_measures_the_quantized_vectors_where_the_codes_agree() -> None:
    codes = np.zeros((1, 3, 2), dtype=np.int64)
    a = {"codes": codes, "quantized": np.zeros((1, 3, 4), dtype=np.float32)}
    b = {"codes": codes.copy(), "quantized": np.zeros((1, 3, 4), dtype=np.float32)}
    b["codes"][0, 0, 1] = 5
    b["quantized"][0, 0] = 3.0  # the flipped position: another codeword
    b["quantized"][0, 2] = 1e-6  # an agreeing position: rounding
    figures = compare(a, b)
    assert figures["quantized max abs diff"] == pytest.approx(1e-6)
    assert figures["codes agreement"] == 5 / 6


def test_the_gpu_check_steps_run_end_to_end_with_the_cpu_standing_in(
    model_root: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(gpu_check, "cuda_chooser", lambda **gpu: ProviderChooser([CPU]))
    monkeypatch.setattr(gpu_check, "TIMED_BATCHES", (1, 2))
    parity = gpu_check.check_parity(model_root / "image")
    assert parity["tf32=off batch 16"]["codes agreement"] == 1.0  # the CPU against itself
    assert parity["tf32=off batch 8"]["codes vs CUDA batch 1"] == 1.0
    timing = gpu_check.check_timing(model_root / "image")
    assert set(timing["EXHAUSTIVE"]["per_batch"]) == {1, 2}
    assert "HEURISTIC: sessions made" in capsys.readouterr().out


def test_the_gpu_check_service_steps_run_with_the_cpu_standing_in(model_root: Path, monkeypatch) -> None:
    monkeypatch.setattr(gpu_check, "SERVICE_ENV", {"BRIDLE_PROVIDERS": CPU, "BRIDLE_INTRA_OP_THREADS": "1"})
    monkeypatch.setattr(gpu_check.shutil, "which", lambda name: None)  # no wrk: bench.service_load skipped
    service = gpu_check.check_service(model_root / "image", seconds=1.0)
    assert service["time_to_ready_s"] > 0 and service["bench_service"].startswith("skipped")
    tensorrt = gpu_check.check_tensorrt(model_root / "image")
    assert tensorrt["providers (warm cache)"] == {"micro-image": [CPU]}
