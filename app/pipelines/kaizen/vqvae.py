"""VQ-VAE that redraws the central object of a patch (Kaizen, Majoral & Domnich 2025).

Input: a (B, 1, P, P) patch of a normalised image, centred on a point.  Output: the object that
covers the central pixel, as an intensity image (``object``) and a mask probability (``mask``);
everything else in the patch (neighbours, background) is left out.  The bottleneck is a grid of
discrete codes (P / 2**downsample per side) from a codebook trained with exponential moving
averages; entries that go unused are reseeded from encoder outputs so the codebook stays in use
(the quick trial on this data collapsed to 2 entries without that).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from app.pipelines.kaizen.params import VQVAEConfig


@dataclass
class VQOutput:
    """What one forward pass gives: object image, mask logits, code indices and the VQ loss terms."""

    object: torch.Tensor  # (B, 1, P, P) generated object intensity (>= 0)
    mask_logit: torch.Tensor  # (B, 1, P, P) logit that a pixel belongs to the object
    codes: torch.Tensor  # (B, G, G) int64 codebook indices
    commitment: torch.Tensor  # scalar beta-free commitment term ||z_e - sg(e)||^2
    perplexity: torch.Tensor  # scalar: exp(entropy) of code usage in this batch


class VectorQuantizerEMA(nn.Module):
    """Nearest-codebook quantisation with EMA codebook updates, dead-entry restarts and a straight-through gradient."""

    def __init__(self, num_codes: int, code_dim: int, decay: float = 0.99, eps: float = 1e-5,
                 dead_fraction: float = 0.03) -> None:
        super().__init__()
        self.num_codes, self.code_dim, self.decay, self.eps = num_codes, code_dim, decay, eps
        self.dead_fraction = dead_fraction  # dead: EMA usage below this share of the mean usage
        self.register_buffer("codebook", torch.randn(num_codes, code_dim) * 0.1)
        self.register_buffer("ema_count", torch.ones(num_codes))
        self.register_buffer("ema_sum", self.codebook.clone())
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def _nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook entry for each row of ``flat`` (N, D)."""
        distance = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.t()
                    + self.codebook.pow(2).sum(1)[None, :])
        return distance.argmin(1)

    @torch.no_grad()
    def _initialise(self, flat: torch.Tensor) -> None:
        """Seed the codebook with encoder outputs (random rows) so every entry starts where the data is."""
        picks = flat[torch.randint(0, flat.shape[0], (self.num_codes,), device=flat.device)]
        self.codebook.copy_(picks)
        self.ema_sum.copy_(picks)
        self.ema_count.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, onehot: torch.Tensor) -> None:
        """EMA update of counts and sums, then reseed entries whose usage fell below the threshold."""
        self.ema_count.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
        total = self.ema_count.sum()
        count = (self.ema_count + self.eps) / (total + self.num_codes * self.eps) * total
        self.codebook.copy_(self.ema_sum / count[:, None])
        dead = self.ema_count < self.dead_fraction * total / self.num_codes
        n_dead = int(dead.sum())
        if n_dead:
            picks = flat[torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)]
            picks = picks + 0.01 * picks.std() * torch.randn_like(picks)
            self.codebook[dead] = picks
            self.ema_sum[dead] = picks
            self.ema_count[dead] = 1.0

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantise (B, D, G, G) encoder outputs; returns (quantised with straight-through grad, codes, commitment, perplexity)."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        if self.training and not bool(self.initialised):
            self._initialise(flat.detach())
        codes = self._nearest(flat.detach())
        quantised = self.codebook[codes]
        if self.training:
            self._update(flat.detach(), F.one_hot(codes, self.num_codes).type(flat.dtype))
        commitment = F.mse_loss(flat, quantised.detach())
        perplexity = code_perplexity(codes, self.num_codes)
        quantised = flat + (quantised - flat).detach()  # straight-through estimator
        quantised = quantised.view(b, h, w, d).permute(0, 3, 1, 2).contiguous()
        return quantised, codes.view(b, h, w), commitment, perplexity

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Codebook vectors for (B, G, G) indices, as (B, D, G, G): decode from stored codes."""
        return self.codebook[codes].permute(0, 3, 1, 2).contiguous()


def code_perplexity(codes: torch.Tensor, num_codes: int) -> torch.Tensor:
    """exp(entropy) of how often each code is used: 1 = one code for everything, num_codes = all equally."""
    usage = torch.bincount(codes.flatten(), minlength=num_codes).float()
    usage = usage / usage.sum().clamp_min(1)
    return torch.exp(-(usage * torch.log(usage + 1e-10)).sum())


class ResBlock(nn.Module):
    """Two 3x3 convolutions with a skip connection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class VQVAE(nn.Module):
    """Encoder -> EMA vector quantiser -> decoder with an intensity head and a mask head."""

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        self.config = config
        c, c2 = config.channels, config.channels * 2
        enc: list[nn.Module] = [nn.Conv2d(1, c, 3, padding=1), nn.ReLU()]
        dec: list[nn.Module] = []
        width = c
        for i in range(config.downsample):
            out = c2
            enc += [nn.Conv2d(width, out, 4, stride=2, padding=1), nn.ReLU()]
            width = out
        enc += [ResBlock(c2) for _ in range(config.res_blocks)]
        enc += [nn.ReLU(), nn.Conv2d(c2, config.code_dim, 1)]
        self.encoder = nn.Sequential(*enc)
        self.quantizer = VectorQuantizerEMA(config.codebook_size, config.code_dim, decay=config.ema_decay)
        dec += [nn.Conv2d(config.code_dim, c2, 3, padding=1)]
        dec += [ResBlock(c2) for _ in range(config.res_blocks)]
        dec += [nn.ReLU()]
        width = c2
        for i in range(config.downsample):
            out = c if i == config.downsample - 1 else c2
            dec += [nn.ConvTranspose2d(width, out, 4, stride=2, padding=1), nn.ReLU()]
            width = out
        dec += [nn.Conv2d(c, 2, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def _heads(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Split decoder output into object image (intensity x mask probability) and mask logits."""
        intensity, mask_logit = F.softplus(out[:, :1]), out[:, 1:]
        return intensity * torch.sigmoid(mask_logit), mask_logit

    def forward(self, x: torch.Tensor) -> VQOutput:
        """Encode, quantise and decode a batch of patches."""
        quantised, codes, commitment, perplexity = self.quantizer(self.encoder(x))
        obj, mask_logit = self._heads(self.decoder(quantised))
        return VQOutput(obj, mask_logit, codes, commitment, perplexity)

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Object images redrawn from stored code indices (B, G, G)."""
        obj, _ = self._heads(self.decoder(self.quantizer.lookup(codes)))
        return obj


def vqvae_loss(out: VQOutput, target: torch.Tensor, mask: torch.Tensor, beta: float,
               mask_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Reconstruction (L1 + MSE of the object image) + mask BCE + beta x commitment; the codebook learns by EMA."""
    recon = F.l1_loss(out.object, target) + F.mse_loss(out.object, target)
    mask_term = F.binary_cross_entropy_with_logits(out.mask_logit, mask)
    loss = recon + mask_weight * mask_term + beta * out.commitment
    return loss, {"recon": float(recon.detach()), "mask": float(mask_term.detach()), "commit": float(out.commitment.detach()),
                  "perplexity": float(out.perplexity.detach())}
