"""Tests of the masked code loss and the cosine distillation loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bridle.model.losses import cosine_distillation_loss, masked_code_loss

B, N, L, K = 3, 10, 4, 16


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, N, L, K, generator=g)
    codes = torch.randint(0, K, (B, N, L), generator=g)
    mask = torch.rand(B, N, generator=g) < 0.6
    mask[0, 0] = True
    return logits, codes, mask


def test_masked_code_loss_equals_per_level_cross_entropy_by_hand() -> None:
    logits, codes, mask = batch()
    per_level = []
    for lvl in range(L):
        terms = [
            F.cross_entropy(logits[b, n, lvl][None], codes[b, n, lvl][None])
            for b in range(B)
            for n in range(N)
            if mask[b, n]
        ]
        per_level.append(torch.stack(terms).mean())
    torch.testing.assert_close(masked_code_loss(logits, codes, mask), torch.stack(per_level).mean())


def test_masked_code_loss_ignores_unmasked_patches() -> None:
    logits, codes, mask = batch(1)
    base = masked_code_loss(logits, codes, mask)
    changed_logits, changed_codes = logits.clone(), codes.clone()
    changed_logits[~mask] = torch.randn_like(changed_logits[~mask]) * 10
    changed_codes[~mask] = (changed_codes[~mask] + 1) % K
    assert torch.equal(masked_code_loss(changed_logits, changed_codes, mask), base)
    masked_change = logits.clone()
    masked_change[mask] += torch.randn_like(masked_change[mask])
    assert not torch.equal(masked_code_loss(masked_change, codes, mask), base)


def test_masked_code_loss_weights_levels_equally() -> None:
    logits, codes, mask = batch(2)
    logits[:, :, 0] = -50.0
    logits[:, :, 0].scatter_(-1, codes[:, :, 0:1], 50.0)  # level 0 perfectly predicted: CE ~ 0
    rest = torch.stack(
        [F.cross_entropy(logits[mask][:, lvl], codes[mask][:, lvl]) for lvl in range(1, L)]
    ).sum()
    torch.testing.assert_close(masked_code_loss(logits, codes, mask), rest / L, atol=1e-6, rtol=1e-5)


def test_masked_code_loss_gradient_only_at_masked_patches() -> None:
    logits, codes, mask = batch(3)
    logits.requires_grad_(True)
    masked_code_loss(logits, codes, mask).backward()
    assert logits.grad[~mask].abs().sum() == 0
    assert logits.grad[mask].abs().sum() > 0


def test_masked_code_loss_rejects_bad_input() -> None:
    logits, codes, mask = batch()
    with pytest.raises(ValueError, match="logits"):
        masked_code_loss(logits[0], codes, mask)
    with pytest.raises(ValueError, match="codes"):
        masked_code_loss(logits, codes[:, :, :2], mask)
    with pytest.raises(ValueError, match="mask"):
        masked_code_loss(logits, codes, mask.float())
    with pytest.raises(ValueError, match="no patch"):
        masked_code_loss(logits, codes, torch.zeros_like(mask))


def test_cosine_distillation_loss_by_hand() -> None:
    g = torch.Generator().manual_seed(4)
    pred, target = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    cos = (pred * target).sum(-1) / (pred.norm(dim=-1) * target.norm(dim=-1))
    torch.testing.assert_close(cosine_distillation_loss(pred, target), (1 - cos).mean())
    assert cosine_distillation_loss(target * 3.0, target).item() == pytest.approx(0.0, abs=1e-6)
    assert cosine_distillation_loss(-target, target).item() == pytest.approx(2.0, abs=1e-6)
    with pytest.raises(ValueError, match="must match"):
        cosine_distillation_loss(pred, target[:, :4])
