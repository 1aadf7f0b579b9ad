"""The Wav2Lip generator network, laid out so the public checkpoints load into it unchanged.

Only nn.Modules live here: no file access, no device choice. Module and attribute names are part
of the weight format (state-dict keys such as `face_encoder_blocks.1.0.conv_block.1.running_mean`),
so they must not be renamed.
"""

from __future__ import annotations

import torch
from torch import nn

from heygem.engine.api import FACE_SIZE

FACE_CHANNELS = 6  # masked BGR face + reference BGR face, stacked on channels
OUT_CHANNELS = 3  # generated BGR face
MEL_BINS = 80  # audio input height
MEL_STEPS = 16  # audio input width (0.2 s of mel frames)
EMBEDDING = 512  # width of the audio embedding and the deepest face feature

Size2 = int | tuple[int, int]  # a conv kernel, stride or padding: square, or (height, width)


class ConvBlock(nn.Module):
    """Conv2d -> BatchNorm2d -> (+ input when residual) -> ReLU."""

    def __init__(
        self, cin: int, cout: int, kernel_size: Size2, stride: Size2, padding: Size2, residual: bool = False
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.BatchNorm2d(cout)
        )
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv_block(x)  # annotated: Module calls are typed as Any
        if self.residual:
            out = out + x
        activated: torch.Tensor = self.act(out)
        return activated


class DeconvBlock(nn.Module):
    """ConvTranspose2d -> BatchNorm2d -> ReLU (never residual)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: Size2,
        stride: Size2,
        padding: Size2,
        output_padding: Size2 = 0,
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding),
            nn.BatchNorm2d(cout),
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated: torch.Tensor = self.act(self.conv_block(x))  # annotated: Module calls are typed as Any
        return activated


def _res(channels: int) -> ConvBlock:
    return ConvBlock(channels, channels, 3, 1, 1, residual=True)


def _down(cin: int, cout: int, stride: Size2 = 2) -> ConvBlock:
    return ConvBlock(cin, cout, 3, stride, 1)


def _up(cin: int, cout: int) -> DeconvBlock:
    """Doubles the spatial size."""
    return DeconvBlock(cin, cout, 3, 2, 1, output_padding=1)


def _face_encoder() -> nn.ModuleList:
    """(B, 6, 96, 96) -> skip features at 96, 48, 24, 12, 6, 3 and 1 pixels."""
    return nn.ModuleList([
        nn.Sequential(ConvBlock(FACE_CHANNELS, 16, 7, 1, 3)),
        nn.Sequential(_down(16, 32), _res(32), _res(32)),
        nn.Sequential(_down(32, 64), _res(64), _res(64), _res(64)),
        nn.Sequential(_down(64, 128), _res(128), _res(128)),
        nn.Sequential(_down(128, 256), _res(256), _res(256)),
        nn.Sequential(_down(256, 512), _res(512)),
        nn.Sequential(ConvBlock(512, EMBEDDING, 3, 1, 0), ConvBlock(EMBEDDING, EMBEDDING, 1, 1, 0)),
    ])  # fmt: skip


def _audio_encoder() -> nn.Sequential:
    """(B, 1, 80, 16) -> (B, 512, 1, 1): the audio embedding."""
    return nn.Sequential(
        ConvBlock(1, 32, 3, 1, 1), _res(32), _res(32),
        _down(32, 64, stride=(3, 1)), _res(64), _res(64),
        _down(64, 128, stride=3), _res(128), _res(128),
        _down(128, 256, stride=(3, 2)), _res(256),
        ConvBlock(256, 512, 3, 1, 0),
        ConvBlock(512, EMBEDDING, 1, 1, 0),
    )  # fmt: skip


def _face_decoder() -> nn.ModuleList:
    """Each block's output is concatenated with the matching encoder feature before the next."""
    return nn.ModuleList([
        nn.Sequential(ConvBlock(EMBEDDING, 512, 1, 1, 0)),
        nn.Sequential(DeconvBlock(1024, 512, 3, 1, 0), _res(512)),
        nn.Sequential(_up(1024, 512), _res(512), _res(512)),
        nn.Sequential(_up(768, 384), _res(384), _res(384)),
        nn.Sequential(_up(512, 256), _res(256), _res(256)),
        nn.Sequential(_up(320, 128), _res(128), _res(128)),
        nn.Sequential(_up(160, 64), _res(64), _res(64)),
    ])  # fmt: skip


def _output_block() -> nn.Sequential:
    return nn.Sequential(ConvBlock(80, 32, 3, 1, 1), nn.Conv2d(32, OUT_CHANNELS, 1, 1, 0), nn.Sigmoid())


class Wav2Lip(nn.Module):
    """Generator: (mel window, masked+reference face) -> face with the mouth for that audio.

    forward(audio (B, 1, 80, 16), face (B, 6, 96, 96)) -> (B, 3, 96, 96) in [0, 1].
    Training clips use the time-folded form: audio (B, T, 1, 80, 16), face (B, 6, T, 96, 96)
    -> (B, 3, T, 96, 96).
    """

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder_blocks = _face_encoder()
        self.audio_encoder = _audio_encoder()
        self.face_decoder_blocks = _face_decoder()
        self.output_block = _output_block()

    def forward(self, audio_sequences: torch.Tensor, face_sequences: torch.Tensor) -> torch.Tensor:
        if face_sequences.dim() == 5:
            return self._forward_clips(audio_sequences, face_sequences)
        return self._forward_frames(audio_sequences, face_sequences)

    def _forward_frames(self, audio: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        x = self.audio_encoder(audio)
        skips = []
        feature = face
        for block in self.face_encoder_blocks:
            feature = block(feature)
            skips.append(feature)
        for block in self.face_decoder_blocks:
            x = torch.cat((block(x), skips.pop()), dim=1)
        face_out: torch.Tensor = self.output_block(x)  # annotated: Module calls are typed as Any
        return face_out

    def _forward_clips(self, audio: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        """Fold time into the batch axis time-major (all of t=0, then t=1...), then unfold."""
        batch, steps = audio.size(0), audio.size(1)
        audio_flat = torch.cat([audio[:, t] for t in range(steps)], dim=0)
        face_flat = torch.cat([face[:, :, t] for t in range(steps)], dim=0)
        out = self._forward_frames(audio_flat, face_flat)
        return torch.stack(torch.split(out, batch, dim=0), dim=2)


__all__ = ["Wav2Lip", "ConvBlock", "DeconvBlock", "FACE_SIZE", "MEL_BINS", "MEL_STEPS"]
