"""Tests of the residual quantizer: codes, residuals, EMA, init, restarts, usage, ONNX, distributed."""

from __future__ import annotations

import dataclasses
import itertools
import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from sklearn.datasets import load_digits

from bench.serve import free_port
from bridle.model.config import PRESETS, QuantizerConfig
from bridle.model.quantizer import LevelUsage, ResidualQuantizer, spherical_kmeans

CFG = QuantizerConfig(levels=3, codebook_size=16, dim=16, decay=0.9, kmeans_iters=5, dead_code_steps=0)


def mixture(n: int, seed: int, dim: int = 16, centers: int = 64, offset: float = 4.0) -> torch.Tensor:
    """Clustered data: `centers` Gaussian blobs around a common (non-zero) mean, like real features."""
    g = torch.Generator().manual_seed(1234)  # the same mixture for every seed
    mean = torch.randn(dim, generator=g) * offset
    means = mean + torch.randn(centers, dim, generator=g)
    gs = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, centers, (n,), generator=gs)
    return means[labels] + 0.3 * torch.randn(n, dim, generator=gs)


def fitted(cfg: QuantizerConfig, x: torch.Tensor, seed: int = 0) -> ResidualQuantizer:
    """A quantizer fitted on x as on a first training batch (k-means init + one EMA step), in eval mode."""
    torch.manual_seed(seed)
    rq = ResidualQuantizer(cfg)
    if cfg.init == "kmeans":
        rq.init_codebooks(x)
    rq.train()
    rq(x)
    return rq.eval()


def digits(dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's 8x8 digit images, standardised and randomly projected to `dim`: (train, held-out)."""
    images = torch.from_numpy(load_digits().data.astype(np.float32))  # (1797, 64)
    images = (images - images.mean(0)) / (images.std(0) + 1e-3)
    proj = torch.randn(64, dim, generator=torch.Generator().manual_seed(7)) / math.sqrt(64)
    feats = images @ proj
    return feats[:1200], feats[1200:]


def residual_energies(rq: ResidualQuantizer, data: torch.Tensor) -> list[float]:
    """Mean squared norm of the residual r_1 = data, r_2, ..., r_{L+1}."""
    codes = rq.encode(data)
    r, energies = data.clone(), [data.pow(2).sum(-1).mean().item()]
    for lvl in range(rq.cfg.levels):
        r = r - rq.codebooks[lvl][codes[:, lvl]]
        energies.append(r.pow(2).sum(-1).mean().item())
    return energies


# ---- shapes, codes and the output --------------------------------------------------------------------
def test_output_shapes_and_decode_equals_output() -> None:
    x = mixture(512, seed=0).reshape(4, 128, 16)
    rq = fitted(CFG, x)
    out = rq(x)
    assert out.quantized.shape == x.shape
    assert out.codes.shape == (4, 128, CFG.levels) and out.codes.dtype == torch.int64
    assert out.loss.ndim == 0
    torch.testing.assert_close(rq.decode(out.codes), out.quantized, rtol=0, atol=1e-5)
    assert torch.equal(rq.encode(x), out.codes)
    # the output is the sum of one codeword per level
    manual = sum(rq.codebooks[lvl][out.codes[..., lvl]] for lvl in range(CFG.levels))
    torch.testing.assert_close(manual, out.quantized, rtol=0, atol=1e-5)


def test_each_level_picks_the_nearest_codeword_of_the_normalised_residual() -> None:
    x = mixture(256, seed=1)
    rq = fitted(CFG, x)
    codes = rq.encode(x)
    r = x.clone()
    for lvl in range(CFG.levels):
        cos = F.normalize(r, dim=-1) @ F.normalize(rq.codebooks[lvl], dim=-1).t()  # (N, K)
        chosen = cos.gather(1, codes[:, lvl : lvl + 1]).squeeze(1)
        torch.testing.assert_close(chosen, cos.max(dim=1).values)
        r = r - rq.codebooks[lvl][codes[:, lvl]]


@pytest.mark.parametrize("scale", [0.1, 1.0, 10.0])
def test_residual_norm_shrinks_level_by_level_on_real_images(scale: float) -> None:
    """At any input scale: unit codewords (BEATs' choice) would make small residuals grow instead."""
    train, held_out = digits(dim=16)
    train, held_out = scale * train, scale * held_out
    cfg = dataclasses.replace(CFG, levels=4)
    rq = fitted(cfg, train)
    for data in (train, held_out):
        energies = residual_energies(rq, data)
        assert all(b < a for a, b in itertools.pairwise(energies)), energies
        assert energies[-1] < 0.5 * energies[0], energies


def test_residual_norm_shrinks_on_a_gaussian_mixture() -> None:
    x = mixture(2048, seed=2)
    energies = residual_energies(fitted(CFG, x), x)
    assert all(b < a for a, b in itertools.pairwise(energies)), energies


# ---- updates ------------------------------------------------------------------------------------------
def test_ema_moves_used_codewords_toward_their_assigned_means() -> None:
    cfg = dataclasses.replace(CFG, levels=1, codebook_size=4, dim=4, decay=0.8)
    rq = ResidualQuantizer(cfg)
    with torch.no_grad():
        rq.codebooks[0] = torch.eye(4)
        rq.initialized.fill_(True)
    x = torch.tensor([[2.0, 0.1, 0, 0], [1.0, -0.1, 0, 0], [0, 3.0, 0, 0]])  # codes 0, 0, 1
    before = rq.codebooks.clone()
    rq.train()(x)
    expected = before[0].clone()
    expected[0] = 0.8 * before[0, 0] + 0.2 * x[:2].mean(0)
    expected[1] = 0.8 * before[0, 1] + 0.2 * x[2]
    torch.testing.assert_close(rq.codebooks[0], expected)  # codes 2 and 3 (unused) unchanged
    dist_before = (before[0, 0] - x[:2].mean(0)).norm()
    assert (rq.codebooks[0, 0] - x[:2].mean(0)).norm() < dist_before


def test_eval_and_frozen_quantizers_do_not_update() -> None:
    x = mixture(256, seed=3)
    rq = fitted(CFG, x)
    snapshot = rq.codebooks.clone()
    rq(mixture(256, seed=4))  # eval
    assert torch.equal(rq.codebooks, snapshot)
    rq.freeze()
    rq.train()(mixture(256, seed=5))
    assert torch.equal(rq.codebooks, snapshot)
    rq2 = fitted(CFG, x)
    rq2.train()(mixture(256, seed=5))  # not frozen: this one moves
    assert not torch.equal(rq2.codebooks, snapshot)


def test_uninitialised_codebooks_refuse_to_run() -> None:
    rq = ResidualQuantizer(CFG)
    for mode in (False, True):  # fitting is explicit (init_codebooks), never a side effect of a forward
        with pytest.raises(RuntimeError, match="not initialised"):
            rq.train(mode)(mixture(8, seed=0))


def test_init_codebooks_then_freeze_is_the_frozen_random_tokenizer_recipe() -> None:
    x = mixture(1024, seed=6)
    torch.manual_seed(0)
    rq = ResidualQuantizer(CFG)
    rq.init_codebooks(x)
    rq.freeze()
    snapshot = rq.codebooks.clone()
    rq.train()(x)
    assert torch.equal(rq.codebooks, snapshot)
    assert all(u.usage_rate >= 0.9 for u in rq.usage())


def test_kmeans_init_uses_most_codes_where_random_init_uses_few() -> None:
    x = mixture(2048, seed=8)
    usage = {}
    for init in ("kmeans", "random"):
        rq = fitted(dataclasses.replace(CFG, init=init), x)
        rq.reset_usage()
        rq(x)
        usage[init] = [u.usage_rate for u in rq.usage()]
    assert all(u >= 0.9 for u in usage["kmeans"]), usage
    assert usage["random"][0] <= 0.5, usage
    assert all(u <= 0.7 for u in usage["random"]), usage


def test_spherical_kmeans_finds_separated_directions() -> None:
    directions = torch.eye(8)
    x = (directions.repeat(50, 1) * torch.rand(400, 1) * 3 + 0.5) + 0.01 * torch.randn(400, 8)
    torch.manual_seed(0)
    centroids = spherical_kmeans(x, 8, iters=10)
    assign = (F.normalize(x, dim=-1) @ F.normalize(centroids, dim=-1).t()).argmax(-1)
    assert torch.bincount(assign, minlength=8).min() > 0


def test_dead_codes_are_restarted_from_batch_residuals() -> None:
    cfg = dataclasses.replace(CFG, levels=1, codebook_size=4, dim=4, dead_code_steps=3)
    rq = ResidualQuantizer(cfg)
    dead = torch.tensor([-1.0, -1.0, -1.0, -1.0])  # points away from all the data
    with torch.no_grad():
        rq.codebooks[0] = torch.stack([torch.eye(4)[0], torch.eye(4)[1], torch.eye(4)[2], dead])
        rq.initialized.fill_(True)
    rq.train()
    torch.manual_seed(0)
    x = torch.rand(64, 4) + 0.1  # positive orthant: code 3 is never nearest
    for step in range(1, 3):
        rq(x)
        assert torch.equal(rq.codebooks[0, 3], dead)
        assert int(rq.unused_steps[0, 3]) == step
    rq(x)  # third update without use: re-seeded
    restarted = rq.codebooks[0, 3]
    assert not torch.equal(restarted, dead)
    assert (x - restarted).abs().sum(-1).min() < 1e-6  # one of the batch's residuals
    assert int(rq.unused_steps[0, 3]) == 0


def test_a_code_parallel_to_another_is_restarted_from_a_badly_served_residual() -> None:
    """Codes are chosen by direction: a second code pointing the same way is dead weight (and a tie)."""
    cfg = dataclasses.replace(CFG, levels=1, codebook_size=3, dim=3, decay=0.99, dead_code_steps=50)
    rq = ResidualQuantizer(cfg)
    with torch.no_grad():
        rq.codebooks[0] = torch.tensor([[1.0, 0, 0], [2.0, 0, 0], [0, 1.0, 0]])  # codes 0 and 1 parallel
        rq.initialized.fill_(True)
    rq.train()
    # Half the batch sits on the x axis (served perfectly), half points along z (served badly).
    x = torch.cat([torch.tensor([[1.0, 0, 0]]).repeat(32, 1), torch.tensor([[0.1, 0.1, 1.0]]).repeat(32, 1)])
    rq(x)
    assert torch.allclose(rq.codebooks[0, 1], torch.tensor([0.1, 0.1, 1.0]))  # re-seeded at once, from z
    assert F.cosine_similarity(rq.codebooks[0, 0], torch.tensor([1.0, 0, 0]), dim=0) > 0.99  # code 0 stays


def test_restarts_on_a_batch_of_repeated_vectors_leave_no_duplicate_codes() -> None:
    """Silence-like data: most residuals are one vector. Several dead codes must not all become it."""
    cfg = dataclasses.replace(CFG, levels=1, codebook_size=8, dim=4, dead_code_steps=1)
    rq = ResidualQuantizer(cfg)
    with torch.no_grad():
        rq.codebooks[0] = -torch.ones(8, 4) + 0.01 * torch.randn(8, 4)  # all dead, nearly parallel
        rq.initialized.fill_(True)
    rq.train()
    torch.manual_seed(0)
    x = torch.cat([torch.tensor([[1.0, 0.5, 0, 0]]).repeat(56, 1), torch.randn(8, 4)])
    rq(x)
    directions = F.normalize(rq.codebooks[0], dim=-1)
    cosines = directions @ directions.t() - 2 * torch.eye(8)
    assert float(cosines.max()) < 0.999  # no two codes point the same way


def test_dead_code_steps_zero_never_restarts() -> None:
    cfg = dataclasses.replace(CFG, levels=1, codebook_size=4, dim=4, dead_code_steps=0)
    rq = ResidualQuantizer(cfg)
    with torch.no_grad():
        rq.codebooks[0] = torch.cat([torch.eye(4)[:3], -torch.ones(1, 4)])
        rq.initialized.fill_(True)
    rq.train()
    for _ in range(5):
        rq(torch.rand(64, 4) + 0.1)
    assert torch.equal(rq.codebooks[0, 3], -torch.ones(4))


# ---- gradients, loss, determinism -----------------------------------------------------------------------
def test_straight_through_gradient_reaches_the_input() -> None:
    x = mixture(128, seed=9)
    rq = fitted(CFG, x).train()
    z = x.clone().requires_grad_(True)
    out = rq(z)
    weights = torch.randn_like(z)
    (out.quantized * weights).sum().backward()
    torch.testing.assert_close(z.grad, weights)  # identity Jacobian
    z.grad = None
    rq(z).loss.backward()  # the commitment term pulls the input toward its codes
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_codebook_loss_matches_a_hand_computation() -> None:
    x = mixture(300, seed=10)
    rq = fitted(dataclasses.replace(CFG, beta=0.4), x)
    out = rq(x)
    r, terms = x.clone(), []
    for lvl in range(CFG.levels):
        q = rq.codebooks[lvl][out.codes[:, lvl]]
        mse = ((r - q) ** 2).mean()
        terms.append(mse + 0.4 * mse)  # MSE(sg r, q) + beta MSE(r, sg q): equal values
        r = r - q
    torch.testing.assert_close(out.loss, torch.stack(terms).mean())


def test_same_seed_gives_same_codes() -> None:
    x = mixture(1024, seed=11)
    a, b = fitted(CFG, x, seed=3), fitted(CFG, x, seed=3)
    assert torch.equal(a.codebooks, b.codebooks)
    assert torch.equal(a.encode(x), b.encode(x))
    c = fitted(CFG, x, seed=4)
    assert not torch.equal(a.codebooks, c.codebooks)


# ---- utilisation ---------------------------------------------------------------------------------------
def test_usage_metrics_on_a_known_assignment() -> None:
    cfg = dataclasses.replace(CFG, levels=2, codebook_size=4, dim=4)
    rq = ResidualQuantizer(cfg).eval()
    with torch.no_grad():
        rq.codebooks[0] = torch.eye(4)
        rq.codebooks[1] = torch.eye(4)
        rq.initialized.fill_(True)
    # level 0 picks codes 0, 0, 1, 2; residuals (0.5 e_3 each) all pick code 3 at level 1
    x = torch.tensor([[1, 0, 0, 0.5], [1, 0, 0, 0.5], [0, 1, 0, 0.5], [0, 0, 1, 0.5]])
    assert rq(x).codes.tolist() == [[0, 3], [0, 3], [1, 3], [2, 3]]
    level0, level1 = rq.usage()
    assert level0.usage_rate == 0.75
    assert level0.entropy_bits == pytest.approx(1.5)  # p = (1/2, 1/4, 1/4)
    assert level0.perplexity == pytest.approx(2**1.5)
    assert level1 == LevelUsage(usage_rate=0.25, entropy_bits=0.0, perplexity=1.0)
    rq(x[:1])  # accumulates
    assert rq.usage()[0].entropy_bits == pytest.approx(-(0.6 * math.log2(0.6) + 2 * 0.2 * math.log2(0.2)))
    rq.reset_usage()
    assert rq.usage()[0] == LevelUsage(usage_rate=0.0, entropy_bits=0.0, perplexity=1.0)


# ---- the single-codebook VQ baseline ----------------------------------------------------------------------
def test_levels_one_is_the_single_codebook_vq() -> None:
    cfg = dataclasses.replace(CFG, levels=1, codebook_size=32)
    x = mixture(512, seed=12)
    rq = fitted(cfg, x)
    out = rq(x)
    assert out.codes.shape == (512, 1)
    nearest = (F.normalize(x, dim=-1) @ F.normalize(rq.codebooks[0], dim=-1).t()).argmax(-1)
    assert torch.equal(out.codes[:, 0], nearest)
    torch.testing.assert_close(out.quantized, rq.codebooks[0][nearest])
    assert len(rq.usage()) == 1


# ---- bad input -----------------------------------------------------------------------------------------
def test_bad_input_and_config_give_clear_errors() -> None:
    rq = fitted(CFG, mixture(64, seed=0))
    with pytest.raises(ValueError, match=r"\(\.\.\., 16\)"):
        rq(torch.randn(4, 15))
    with pytest.raises(ValueError, match="floating-point"):
        rq(torch.ones(4, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="levels"):
        rq.decode(torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        rq.decode(torch.full((4, 3), 16))
    with pytest.raises(ValueError, match="decay"):
        ResidualQuantizer(dataclasses.replace(CFG, decay=1.0))
    with pytest.raises(ValueError, match="levels"):
        ResidualQuantizer(dataclasses.replace(CFG, levels=0))


def test_presets_build() -> None:
    for name in ("micro-audio", "tiny-image", "base-audio"):
        q = PRESETS[name].quantizer
        rq = ResidualQuantizer(q)
        assert rq.codebooks.shape == (q.levels, q.codebook_size, q.dim)
        assert not list(rq.parameters())  # codebooks are buffers, updated by EMA only


# ---- ONNX export ---------------------------------------------------------------------------------------
class _Codes(torch.nn.Module):
    def __init__(self, rq: ResidualQuantizer) -> None:
        super().__init__()
        self.rq = rq

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.rq(z)
        return out.codes, out.quantized


def test_eval_path_exports_to_onnx_with_identical_codes(tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    x = mixture(1024, seed=13).reshape(8, 128, 16)
    rq = fitted(PRESETS["micro-image"].quantizer, x)
    module = _Codes(rq).eval()
    path = tmp_path / "rq.onnx"
    batch = torch.export.Dim("batch")
    torch.onnx.export(
        module, (x[:2],), str(path), dynamo=True, external_data=False, dynamic_shapes={"z": {0: batch}}
    )
    model = onnx.load(str(path))
    model.ir_version = min(model.ir_version, 10)
    onnx.save(model, str(path))
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    test = mixture(640, seed=14).reshape(5, 128, 16)
    codes, quantized = session.run(None, {session.get_inputs()[0].name: test.numpy()})
    expected = module(test)
    assert codes.dtype == np.int64
    np.testing.assert_array_equal(codes, expected[0].numpy())
    np.testing.assert_allclose(quantized, expected[1].numpy(), atol=1e-5)


# ---- distributed -------------------------------------------------------------------------------------------
def _rank_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(100 + rank)  # different RNG on each rank: k-means / restarts differ locally
        cfg = dataclasses.replace(CFG, dead_code_steps=2)
        rq = ResidualQuantizer(cfg).train()
        rq.init_codebooks(mixture(256, seed=rank))  # each rank fits on its own data; rank 0's are kept
        for step in range(5):
            rq(mixture(256, seed=10 * step + rank))  # different data on each rank
        torch.save({"codebooks": rq.codebooks, "unused": rq.unused_steps}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_codebooks_agree(tmp_path) -> None:
    mp.spawn(_rank_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(r0["codebooks"], r1["codebooks"])
    assert torch.equal(r0["unused"], r1["unused"])
    assert r0["codebooks"].abs().sum() > 0
