"""The two servable graphs as torch modules: what an exported model computes, in one place for the export
(bridle/export/onnx_graphs.py), its check against PyTorch, and the training side's calibration and
evaluations.

Both graphs start from the raw `signal` the service decodes (audio float32 (B, samples), image uint8
(B, 3, S, S), video uint8 (B, T, 3, S, S)) and run the same preprocessing module training uses, so the
fbank and the normalisation live inside the graph.

- `EncoderGraph`: preprocess -> E.outputs: patch features and the pooled embedding (the patch mean, or
  what an imported model's head reads) (-> classifier head)
  outputs `patch_embeddings` (B, N, D), `embedding` (B, E) [, `logits` (B, C)]
- `TokenizerGraph`: preprocess -> T -> outputs `codes` int64 (B, N, L), `quantized` (B, N, code_dim)
"""

from __future__ import annotations

import torch
from torch import nn

from bridle.model.checkpoint import Servable
from bridle.model.preprocessing import build_preprocessor

ENCODER_OUTPUTS = ("patch_embeddings", "embedding", "logits")
TOKENIZER_OUTPUTS = ("codes", "quantized")


class EncoderGraph(nn.Module):
    def __init__(self, servable: Servable) -> None:
        super().__init__()
        self.preprocess = build_preprocessor(servable.config)
        self.encoder = servable.encoder
        self.classifier = servable.classifier

    @property
    def output_names(self) -> tuple[str, ...]:
        return ENCODER_OUTPUTS if self.classifier is not None else ENCODER_OUTPUTS[:2]

    def forward(self, signal: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.preprocess(signal)  # audio (B, 1, frames, mel); image (B, 3, S, S); video (B, 3, T, S, S)
        patches, embedding = self.encoder.outputs(x)  # (B, N, D), (B, E) = encoder.pooled(x)
        if self.classifier is None:
            return patches, embedding
        return patches, embedding, self.classifier(embedding)  # logits (B, C)


class TokenizerGraph(nn.Module):
    output_names = TOKENIZER_OUTPUTS

    def __init__(self, servable: Servable) -> None:
        super().__init__()
        self.preprocess = build_preprocessor(servable.config)
        self.tokenizer = servable.tokenizer

    def forward(self, signal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.tokenizer(self.preprocess(signal))
        return out.codes.to(torch.int64), out.quantized  # (B, N, L), (B, N, code_dim)
