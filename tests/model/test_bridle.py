"""The BRIDLE objective (bridle/model/bridle.py): each step's parts compose to its loss, the right
networks train, and codebooks are fitted once, on the first batch."""

from __future__ import annotations

import pytest
import torch

from bridle.model.bridle import Classification, Distillation, Pretraining, normalise_targets
from bridle.model.config import preset
from bridle.model.encoder import Encoder
from bridle.model.losses import cosine_distillation_loss, masked_code_loss
from bridle.model.masking import random_mask
from bridle.model.tokenizer import RandomProjectionTokenizer, Tokenizer, fit_codebooks
from tests.model.test_model_parts import MICRO, model_input


@pytest.mark.parametrize("name", MICRO)
def test_pretraining_is_masked_code_prediction_of_the_frozen_tokenizer(name: str) -> None:
    cfg = preset(name)
    x = model_input(cfg, 4, seed=0)
    objective = Pretraining(cfg, RandomProjectionTokenizer(cfg), "random").train()
    objective.forward_targets(x)  # the first batch fits the codebooks
    torch.manual_seed(0)
    loss, scalars = objective(x)
    # the same loss, spelled out part by part with the same random mask
    torch.manual_seed(0)
    codes = objective.forward_targets(x)
    mask = random_mask(4, cfg.grid, cfg.mask_ratio)
    logits = objective.forward_decoder(objective.forward_encoder(x, mask), mask)
    torch.testing.assert_close(loss, masked_code_loss(logits, codes, mask), rtol=0, atol=0)
    assert scalars == {"loss": loss.item()}
    loss.backward()
    assert objective.encoder.patch_embed.proj.weight.grad is not None
    assert objective.predictor.head.weight.grad is not None
    assert objective.trainable() == [objective.encoder, objective.predictor]


@pytest.mark.parametrize("name", MICRO)
def test_the_random_tokenizer_fits_on_the_first_batch_then_stays_fixed(name: str) -> None:
    cfg = preset(name)
    objective = Pretraining(cfg, RandomProjectionTokenizer(cfg), "random").train()
    quantizer = objective.tokenizer.quantizer
    assert not bool(quantizer.initialized.any()) and not objective.tokenizer.training
    objective(model_input(cfg, 4, seed=0))
    books = quantizer.codebooks.clone()
    assert bool(quantizer.initialized.all()) and books.abs().sum() > 0
    objective(model_input(cfg, 4, seed=1))  # a second batch changes nothing
    assert torch.equal(books, quantizer.codebooks)
    assert not any(p.requires_grad for p in objective.tokenizer.parameters())


def test_distillation_trains_tokenizer_and_estimator_from_the_frozen_teacher() -> None:
    cfg = preset("micro-image")
    x = model_input(cfg, 4, seed=2)
    teacher = Encoder(cfg)
    objective = Distillation(cfg, teacher).train()
    assert not teacher.training and objective.trainable() == [objective.tokenizer, objective.estimator]
    loss, scalars = objective(x)  # first batch: codebooks fitted, then one EMA step
    assert scalars["loss"] == pytest.approx(scalars["loss_cos"] + scalars["loss_cb"], rel=1e-6)
    with torch.no_grad():
        estimate = objective.forward_estimator(objective.tokenizer(x).quantized)
    expected = cosine_distillation_loss(estimate, normalise_targets(teacher.features(x), "instance"))
    assert scalars["loss_cos"] == pytest.approx(expected.item(), abs=0.05)  # EMA moved the books a step
    loss.backward()
    assert objective.tokenizer.patch_embed.proj.weight.grad is not None
    assert objective.estimator.head.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    books = objective.tokenizer.quantizer.codebooks.clone()
    objective(model_input(cfg, 4, seed=3))  # later batches move the codebooks by EMA
    assert not torch.equal(books, objective.tokenizer.quantizer.codebooks)


def test_instance_normalised_targets_keep_what_tells_patches_apart() -> None:
    # A collapsed teacher: every patch is one shared direction plus a small patch-specific part.
    g = torch.Generator().manual_seed(0)
    shared = torch.randn(1, 1, 16, generator=g) * 10
    detail = torch.randn(3, 20, 16, generator=g)
    features = shared + detail  # (B, N, D)
    cos = torch.nn.functional.cosine_similarity
    assert cos(features[:, :1], features[:, 1:], dim=-1).mean() > 0.9
    targets = normalise_targets(features, "instance")
    assert torch.allclose(targets.mean(dim=1), torch.zeros(3, 16), atol=1e-5)  # per input and feature
    assert torch.allclose(targets.var(dim=1, unbiased=False), torch.ones(3, 16), atol=1e-3)
    assert cos(targets[:, :1], targets[:, 1:], dim=-1).abs().mean() < 0.3
    # per input: another batch around it does not change an input's targets
    assert torch.allclose(normalise_targets(features[:1], "instance"), targets[:1], atol=1e-5)
    assert torch.equal(normalise_targets(features, "none"), features)
    with pytest.raises(ValueError, match="target normalisation"):
        normalise_targets(features, "batch")
    with pytest.raises(ValueError, match="target normalisation"):
        Distillation(preset("micro-image"), Encoder(preset("micro-image")), target_norm="batch")


@pytest.mark.parametrize("mode", ["linear", "finetune"])
def test_classification_trains_the_head_and_the_encoder_only_when_fine_tuning(mode: str) -> None:
    cfg = preset("micro-audio")
    x, y = model_input(cfg, 4, seed=4), torch.tensor([0, 1, 2, 1])
    tokenizer = Tokenizer(cfg)
    fit_codebooks(tokenizer, x)
    objective = Classification(cfg, Encoder(cfg), tokenizer, "trained", num_classes=3, mode=mode).train()
    loss, scalars = objective(x, y)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(objective.logits(x), y).item())
    assert 0.0 <= scalars["train_accuracy"] <= 1.0
    loss.backward()
    assert objective.classifier.linear.weight.grad is not None
    encoder_grad = objective.encoder.patch_embed.proj.weight.grad
    assert (encoder_grad is not None) == (mode == "finetune")
    assert objective.encoder.training == (mode == "finetune") and not objective.tokenizer.training
