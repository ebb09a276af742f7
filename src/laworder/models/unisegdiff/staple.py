"""STAPLE (Warfield, Zou & Wells, IEEE TMI 2004) for binary masks, batched, in log space.

UniSegDiff fuses its N sampled masks z_j with it (paper §2.4): each sample j gets a sensitivity
α_j = P(z_j = 1 | y = 1) and a false-positive rate β_j = P(z_j = 1 | y = 0), initialised to 0.9
and 0.1; EM alternates the pixel posterior (eq. 2) and the maximum-likelihood α_j, β_j (eq. 3).

The paper sets P(y_i = 1) to 50 % at the start and gives no rule for it afterwards; here it is
re-estimated every iteration as the mean posterior over the image (the global-prior form of
STAPLE). With a prior fixed at 50 %, a set of all-empty samples is a tie (every α_j and β_j
collapse to 0, the posterior falls back to the prior, 0.5) and would come out as a full mask;
with the re-estimated prior it comes out empty, as it should.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EPS = 1e-6


@dataclass
class StapleResult:
    """``logits``/``probability``: ``B×1×H×W`` consensus; ``sensitivity``/``false_positive_rate``:
    ``B×N`` per sample; ``prior``: ``B`` foreground prior."""

    logits: torch.Tensor
    probability: torch.Tensor
    sensitivity: torch.Tensor
    false_positive_rate: torch.Tensor
    prior: torch.Tensor


def staple(samples: torch.Tensor, iterations: int = 20, sensitivity: float = 0.9,
           false_positive_rate: float = 0.1, prior: float = 0.5) -> StapleResult:
    """Fuse ``B×N×H×W`` binary samples (N per image) into one consensus per image.

    Args:
        samples: ``B×N×H×W`` (or ``B×N×1×H×W``) masks in {0, 1} (bool or float).
        iterations: EM iterations (20, paper §2.4); a last E-step follows them.
        sensitivity, false_positive_rate: initial α_j and β_j (0.9, 0.1).
        prior: initial P(y_i = 1) (0.5).

    Returns:
        ``StapleResult``; ``logits`` are the posterior log-odds (finite: α, β and the prior stay
        in [1e-6, 1 − 1e-6]).

    Raises:
        ValueError: wrong rank, no samples, or initial values outside (0, 1).
    """
    if samples.ndim == 5 and samples.shape[2] == 1:
        samples = samples[:, :, 0]
    if samples.ndim != 4 or samples.shape[1] < 1:
        raise ValueError(f"samples must be B×N×H×W with N >= 1, got shape {tuple(samples.shape)}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    for name, value in (("sensitivity", sensitivity), ("false_positive_rate", false_positive_rate), ("prior", prior)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {value}")
    batch, count, height, width = samples.shape
    # float32 is enough: each log term is >= log(1e-6) ≈ −14, so N of them stay far from overflow
    votes = samples.reshape(batch, count, -1).to(torch.float32)
    alpha = torch.full((batch, count), sensitivity, dtype=torch.float32, device=samples.device)
    beta = torch.full_like(alpha, false_positive_rate)
    foreground = torch.full((batch,), prior, dtype=torch.float32, device=samples.device)

    def posterior_logits() -> torch.Tensor:
        # eq. 2 in log space: log P(z|y=1)P(y=1) − log P(z|y=0)P(y=0), per pixel
        log_fg = torch.einsum("bnp,bn->bp", votes, alpha.log()) + torch.einsum("bnp,bn->bp", 1 - votes, (1 - alpha).log())
        log_bg = torch.einsum("bnp,bn->bp", votes, beta.log()) + torch.einsum("bnp,bn->bp", 1 - votes, (1 - beta).log())
        return log_fg - log_bg + (foreground.log() - (1 - foreground).log())[:, None]

    for _ in range(iterations):
        weight = torch.sigmoid(posterior_logits())  # W_i = P(y_i = 1 | z)
        # eq. 3 (Warfield's M-step): α_j = Σ W z / Σ W, β_j = Σ (1−W) z / Σ (1−W)
        alpha = torch.einsum("bnp,bp->bn", votes, weight) / weight.sum(-1, keepdim=True).clamp_min(EPS)
        beta = torch.einsum("bnp,bp->bn", votes, 1 - weight) / (1 - weight).sum(-1, keepdim=True).clamp_min(EPS)
        alpha, beta = alpha.clamp(EPS, 1 - EPS), beta.clamp(EPS, 1 - EPS)
        foreground = weight.mean(-1).clamp(EPS, 1 - EPS)
    logits = posterior_logits().reshape(batch, 1, height, width)
    dtype = samples.dtype if samples.is_floating_point() else torch.float32
    return StapleResult(logits.to(dtype), torch.sigmoid(logits).to(dtype), alpha.to(dtype), beta.to(dtype), foreground.to(dtype))


def vote_entropy(samples: torch.Tensor) -> torch.Tensor:
    """Per-pixel disagreement between samples: binary entropy (bits) of the vote fraction.

    ``B×N×H×W`` -> ``B×1×H×W`` in [0, 1]: 0 where every sample agrees, 1 where they split evenly.
    """
    fraction = samples.float().mean(dim=1, keepdim=True)
    inside = fraction.clamp(EPS, 1 - EPS)
    entropy = -(inside * inside.log2() + (1 - inside) * (1 - inside).log2())
    return torch.where((fraction <= 0) | (fraction >= 1), torch.zeros_like(entropy), entropy)
