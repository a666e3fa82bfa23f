"""The BRIDLE objective: the paper's three training steps, each a module that reads top-down.

Like MAE's `models_mae.py` (forward_encoder -> forward_decoder -> forward_loss), each step's `forward`
is the composition of named parts, and each part is a few lines:

    Pretraining      E + D learn to predict T's codes of the patches E does not see
        forward_targets   T (frozen) -> codes (B, N, L)
        random_mask       (B, N), True = masked (tube masks on video grids)
        forward_encoder   E on the visible patches -> (B, 1 + N_visible, D_E)
        forward_decoder   D fills in the masked places -> logits (B, N, L, K)
        forward_loss      cross-entropy at the masked patches, mean over the RQ levels

    Distillation     T + TE learn to carry what a trained E knows (E frozen: the teacher)
        forward_teacher   E's patch features, instance-normalised (see below) -> (B, N, D_E)
        forward_tokenizer T -> quantized (B, N, code_dim), codes, L_cb
        forward_estimator TE -> (B, N, D_E)
        forward_loss      L_cos(TE output, teacher features) + L_cb

    Classification   E (frozen for a linear probe, or fine-tuned) + a head
        forward_encoder   E's pooled patch tokens -> (B, D_E)
        forward_head      -> logits (B, C)
        forward_loss      cross-entropy

The networks live in their own modules: E encoder.py, D predictor.py, T tokenizer.py, TE estimator.py,
RQ quantizer.py, the head classifier.py; the loss functions in losses.py. Codebooks are fitted in one
place, `tokenizer.fit_codebooks`, on the first batch a tokenizer sees. bridle/training/stages.py builds these
steps from earlier stages' weights and runs the loop; `forward(x, y)` returns (loss, scalars to log).

Under a bf16 `torch.autocast` (bridle/training/precision.py) E, D, T and TE run in bf16; the residual
quantizer runs in fp32 (`tokenizer.quantize_fp32`), so does the frozen T that makes the pretraining targets,
and every loss is computed in fp32 from upcast outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bridle.model.classifier import ClassifierHead
from bridle.model.config import ModelConfig
from bridle.model.encoder import Encoder
from bridle.model.estimator import TokenizerEstimator
from bridle.model.losses import cosine_distillation_loss, masked_code_loss
from bridle.model.masking import random_mask
from bridle.model.predictor import LabelPredictor
from bridle.model.quantizer import ResidualQuantizer
from bridle.model.tokenizer import Tokenizer, TokenizerOutput, fit_codebooks

Scalars = dict[str, float]


def quantizers(module: nn.Module) -> list[ResidualQuantizer]:
    return [m for m in module.modules() if isinstance(m, ResidualQuantizer)]


def freeze(module: nn.Module) -> nn.Module:
    """No gradients, no codebook updates, eval mode (kept there by `Objective.train`)."""
    for p in module.parameters():
        p.requires_grad_(False)
    for q in quantizers(module):
        q.freeze()
    return module.eval()


class Objective(nn.Module):
    """One training step's networks and loss. `frozen` names the parts that stay in eval mode and are not
    trained; `tokenizer_kind` says which T it holds ("random" or "trained")."""

    kind: str
    frozen: tuple[str, ...] = ()
    tokenizer_kind: str = "trained"

    def train(self, mode: bool = True) -> Objective:
        super().train(mode)
        for name in self.frozen:
            getattr(self, name).eval()
        return self

    def parts(self) -> dict[str, nn.Module]:
        """The networks by name, as checkpoints store them."""
        return dict(self.named_children())

    def trainable(self) -> list[nn.Module]:
        return [m for name, m in self.parts().items() if name not in self.frozen]


# ---- pretraining: E + D predict T's codes at masked patches ------------------------------------------


class Pretraining(Objective):
    kind = "pretrain"
    frozen = ("tokenizer",)

    def __init__(self, config: ModelConfig, tokenizer: nn.Module, tokenizer_kind: str) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.predictor = LabelPredictor(config)
        self.tokenizer = freeze(tokenizer)
        self.tokenizer_kind = tokenizer_kind

    @torch.no_grad()
    def forward_targets(self, x: torch.Tensor) -> torch.Tensor:
        """T's codes (B, N, L). A fresh random T (the cold start) fits its codebooks on this first batch
        and keeps them: its targets never move. Always fp32, even under bf16 autocast: T's bf16 features
        change about 30% of the deeper levels' codes (bench/train.py rq), and the targets must be the
        codes the exported T gives."""
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            fit_codebooks(self.tokenizer, x)
            return self.tokenizer(x).codes

    def forward_encoder(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(x, mask)  # (B, 1 + N_visible, D_E)

    def forward_decoder(self, encoded: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.predictor(encoded, mask)  # (B, N, L, K)

    def forward_loss(self, logits: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_code_loss(logits.float(), codes, mask)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, Scalars]:
        codes = self.forward_targets(x)  # (B, N, L)
        mask = random_mask(x.shape[0], self.config.grid, self.config.mask_ratio).to(x.device)  # (B, N)
        logits = self.forward_decoder(self.forward_encoder(x, mask), mask)  # (B, N, L, K)
        loss = self.forward_loss(logits, codes, mask)
        return loss, {"loss": loss.item()}


# ---- distillation: T + TE from the frozen encoder ------------------------------------------------------

TARGET_NORMS: tuple[str, ...] = ("instance", "none")


def check_target_norm(how: str) -> None:
    if how not in TARGET_NORMS:
        raise ValueError(f"target normalisation must be one of {TARGET_NORMS}, got {how!r}")


def normalise_targets(features: torch.Tensor, how: str) -> torch.Tensor:
    """The teacher's patch features (B, N, D) as distillation targets.

    "instance" (data2vec's target normalisation): each feature standardised over one input's N patches.
    A small encoder's features share one dominant direction (mean pairwise cosine 0.9 after a short
    pretraining, results/replication/diagnosis.md); L_cos is then met by reproducing that direction, T's
    vectors collapse to it, and level 1 of the RQ uses a handful of codes. Normalised targets keep only
    what tells one patch from another. "none": the features as they are (the reference design).
    """
    check_target_norm(how)
    if how == "none":
        return features
    return F.instance_norm(features.transpose(1, 2)).transpose(1, 2)  # (B, D, N) per (b, d) -> (B, N, D)


class Distillation(Objective):
    kind = "tokenizer"
    frozen = ("encoder",)

    def __init__(self, config: ModelConfig, teacher: Encoder, target_norm: str = "instance") -> None:
        super().__init__()
        check_target_norm(target_norm)
        self.tokenizer = Tokenizer(config)
        self.estimator = TokenizerEstimator(config)
        self.encoder = freeze(teacher)
        self.target_norm = target_norm

    @torch.no_grad()
    def forward_teacher(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder.features(x)  # (B, N, D_E): E's last LayerNorm, cls dropped
        return normalise_targets(features.float(), self.target_norm)

    def forward_tokenizer(self, x: torch.Tensor) -> TokenizerOutput:
        if self.training:
            fit_codebooks(self.tokenizer, x)  # the first batch seeds the codebooks, EMA moves them after
        return self.tokenizer(x)  # quantized (B, N, code_dim), codes (B, N, L), L_cb

    def forward_estimator(self, quantized: torch.Tensor) -> torch.Tensor:
        return self.estimator(quantized)  # (B, N, D_E)

    def forward_loss(
        self, estimate: torch.Tensor, target: torch.Tensor, codebook_loss: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_cos + L_cb, L_cos)."""
        cos = cosine_distillation_loss(estimate.float(), target.float())
        return cos + codebook_loss, cos

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None, target: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Scalars]:
        """`target`: `forward_teacher(x)` when the caller already has it (the teacher is frozen, so its
        features of a fixed data set can be computed once: bridle/training/distill_tokenizer.py)."""
        if target is None:
            target = self.forward_teacher(x)  # (B, N, D_E)
        out = self.forward_tokenizer(x)
        loss, cos = self.forward_loss(self.forward_estimator(out.quantized), target, out.loss)
        return loss, {"loss": loss.item(), "loss_cos": cos.item(), "loss_cb": out.loss.item()}


# ---- classification: a head on E's pooled tokens ---------------------------------------------------------


class Classification(Objective):
    """mode "linear": E frozen (a linear probe); "finetune": E trained with the head. T is only carried
    along, frozen, so that the servable written after this step holds it."""

    kind = "classifier"

    def __init__(
        self,
        config: ModelConfig,
        encoder: Encoder,
        tokenizer: nn.Module,
        tokenizer_kind: str,
        num_classes: int,
        mode: str,
    ) -> None:
        super().__init__()
        self.encoder = freeze(encoder) if mode == "linear" else encoder
        self.classifier = ClassifierHead(config.encoder.dim, num_classes)
        self.tokenizer = freeze(tokenizer)
        self.tokenizer_kind = tokenizer_kind
        self.frozen = ("encoder", "tokenizer") if mode == "linear" else ("tokenizer",)

    def forward_encoder(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and "encoder" not in self.frozen):
            return self.encoder.pooled(x)  # (B, D_E)

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(pooled)  # (B, C)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_encoder(x))  # (B, C)

    def forward_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Scalars]:
        """y: (B,) class indices, or (B, C) class probabilities (mixed targets; accuracy on their top)."""
        logits = self.logits(x)
        loss = self.forward_loss(logits, y)
        top = y.argmax(-1) if y.ndim == 2 else y
        accuracy = (logits.argmax(-1) == top).float().mean()
        return loss, {"loss": loss.item(), "train_accuracy": accuracy.item()}
