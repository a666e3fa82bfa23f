"""E, D, T (both kinds), TE and the classifier head on all three modalities."""

from __future__ import annotations

import pytest
import torch

from bridle.model.classifier import ClassifierHead
from bridle.model.config import ModelConfig, preset
from bridle.model.encoder import Encoder
from bridle.model.estimator import TokenizerEstimator
from bridle.model.masking import masked_count, random_mask
from bridle.model.patches import num_params, patchify
from bridle.model.predictor import LabelPredictor
from bridle.model.tokenizer import RandomProjectionTokenizer, Tokenizer, fit_codebooks

MICRO = ["micro-audio", "micro-image", "micro-video"]


def model_input(cfg: ModelConfig, batch: int = 3, seed: int = 0) -> torch.Tensor:
    """A preprocessed input batch of the right shape: (B, C, [T,] H, W)."""
    g = torch.Generator().manual_seed(seed)
    if cfg.modality == "audio":
        shape: tuple[int, ...] = (batch, 1, cfg.input.num_frames, cfg.input.num_mel_bins)
    elif cfg.modality == "image":
        shape = (batch, 3, cfg.input.image_size, cfg.input.image_size)
    else:
        shape = (batch, 3, cfg.input.num_frames, cfg.input.image_size, cfg.input.image_size)
    return torch.randn(shape, generator=g)


@pytest.mark.parametrize("name", MICRO)
def test_shapes_through_every_part(name: str) -> None:
    cfg = preset(name)
    b, n, levels, k = 3, cfg.num_patches, cfg.quantizer.levels, cfg.quantizer.codebook_size
    x = model_input(cfg, b)
    mask = random_mask(b, cfg.grid, cfg.mask_ratio)
    visible = n - int(mask[0].sum())

    encoder = Encoder(cfg)
    encoded = encoder(x, mask)
    assert encoded.shape == (b, 1 + visible, cfg.encoder.dim)
    assert encoder.features(x).shape == (b, n, cfg.encoder.dim)
    assert encoder.pooled(x).shape == (b, cfg.encoder.dim)
    assert LabelPredictor(cfg)(encoded, mask).shape == (b, n, levels, k)

    for tokenizer in (Tokenizer(cfg), RandomProjectionTokenizer(cfg)):
        fit_codebooks(tokenizer, x)
        out = tokenizer.train()(x)
        assert out.codes.shape == (b, n, levels) and out.codes.dtype == torch.int64
        assert out.quantized.shape == (b, n, cfg.quantizer.dim)
        assert out.loss.ndim == 0
        assert int(out.codes.min()) >= 0 and int(out.codes.max()) < k
        assert TokenizerEstimator(cfg)(out.quantized).shape == (b, n, cfg.encoder.dim)

    assert ClassifierHead(cfg.encoder.dim, 7)(encoder.pooled(x)).shape == (b, 7)


@pytest.mark.parametrize("name", MICRO)
def test_masking_hides_the_exact_ratio(name: str) -> None:
    cfg = preset(name)
    mask = random_mask(16, cfg.grid, cfg.mask_ratio, torch.Generator().manual_seed(1))
    if cfg.modality == "video":  # tube masking: the same spatial places at every time step
        t, h, w = cfg.grid
        per_step = mask.reshape(16, t, h * w)
        assert torch.equal(per_step, per_step[:, :1].expand_as(per_step))
        assert (per_step[:, 0].sum(1) == masked_count(h * w, cfg.mask_ratio)).all()
    else:
        assert (mask.sum(1) == masked_count(cfg.num_patches, cfg.mask_ratio)).all()
    assert not torch.equal(mask[0], mask[1])  # each sample has its own mask


@pytest.mark.parametrize("name", MICRO)
def test_encoder_never_sees_masked_patches(name: str) -> None:
    cfg = preset(name)
    encoder = Encoder(cfg).eval()
    x = model_input(cfg, 2)
    mask = random_mask(2, cfg.grid, cfg.mask_ratio, torch.Generator().manual_seed(2))
    # Overwrite every masked patch with noise: E's output must not move at all.
    patches = patchify(x, cfg)
    noisy = patches.clone()
    noisy[mask] = torch.randn_like(noisy[mask]) * 100
    assert not torch.equal(patches, noisy)
    x_noisy = unpatchify(noisy, cfg)
    assert torch.equal(patchify(x_noisy, cfg), noisy)
    torch.testing.assert_close(encoder(x, mask), encoder(x_noisy, mask), rtol=0, atol=1e-6)
    # ... while changing one visible patch does move it.
    x_vis = patches.clone()
    x_vis[~mask] += 1.0
    assert not torch.allclose(encoder(x, mask), encoder(unpatchify(x_vis, cfg), mask))


def unpatchify(patches: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Inverse of `patchify`, found by autograd-free index arithmetic: scatter values back by position."""
    template = model_input(cfg, patches.shape[0])
    index = torch.arange(template.numel()).reshape(template.shape).float()
    order = patchify(index, cfg).long().reshape(-1)  # where each patch value lives in x
    out = torch.empty(template.numel())
    out[order] = patches.reshape(-1)
    return out.reshape(template.shape)


@pytest.mark.parametrize("name", MICRO)
def test_predictor_uses_the_mask_token_at_masked_places(name: str) -> None:
    cfg = preset(name)
    predictor = LabelPredictor(cfg)
    mask = random_mask(2, cfg.grid, cfg.mask_ratio, torch.Generator().manual_seed(3))
    encoded = torch.randn(2, 1 + cfg.num_patches - int(mask[0].sum()), cfg.encoder.dim)
    before = predictor(encoded, mask)
    with torch.no_grad():
        predictor.mask_token.add_(1.0)
    assert not torch.allclose(before, predictor(encoded, mask))


def test_same_seed_gives_the_same_codes() -> None:
    cfg = preset("micro-audio")
    x = model_input(cfg, 4)
    a, b, c = (RandomProjectionTokenizer(cfg, seed=s).train() for s in (0, 0, 1))
    torch.manual_seed(0)
    fit_codebooks(a, x)
    torch.manual_seed(0)
    fit_codebooks(b, x)
    codes_a, codes_b = a(x).codes, b(x).codes
    assert torch.equal(codes_a, codes_b)
    assert not torch.equal(a.patch_projection, c.patch_projection)


def test_tokenizer_gradients_reach_the_patch_embedding() -> None:
    """Straight-through RQ: the estimator's loss trains T's ViT, and L_cb pulls T's output to its codes."""
    cfg = preset("micro-image")
    tokenizer, estimator = Tokenizer(cfg).train(), TokenizerEstimator(cfg)
    x = model_input(cfg, 4)
    fit_codebooks(tokenizer, x)
    out = tokenizer(x)
    (estimator(out.quantized).pow(2).mean() + out.loss).backward()
    grad = tokenizer.patch_embed.proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_classifier_head_normalises_then_maps() -> None:
    head = ClassifierHead(8, 3)
    x = torch.randn(5, 8)
    # LayerNorm first: a shift and scale of the input changes nothing.
    torch.testing.assert_close(head(x), head(x * 3 + 2), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError):
        ClassifierHead(8, 0)


@pytest.mark.parametrize("name", ["base-audio", "base-image", "base-video"])
def test_vit_b_encoder_has_about_86m_parameters(name: str) -> None:
    """ViT-B/16 is 86M parameters (Dosovitskiy et al.); ours differs only in patch embedding and positions."""
    with torch.device("meta"):
        encoder = Encoder(preset(name))
    assert 85.0e6 <= num_params(encoder) <= 87.5e6
