"""Orthonormal bases of old-task feature spaces and gradient projection — one implementation for all users.

Gradient Projection Memory (Saha et al., ICLR 2021), carried to PET parameters by PEGP (Qiao et al., 2024,
arXiv:2405.13383). Features are accumulated as an uncentred second-moment matrix ``C = sum x xᵀ`` (d x d):
it has the same eigenvectors and energies as the SVD of the stacked features ``R`` (``σ_i² = λ_i``), costs
O(d²) memory whatever the number of samples, and under DDP one ``all_reduce`` of ``C`` gives every rank the
identical basis. After a task, with existing basis ``U``:

    total = tr(C);  kept = tr(Uᵀ C U)
    Ĉ = (I - UUᵀ) C (I - UUᵀ)            (what U does not explain)
    add the fewest top eigenvectors of Ĉ so that (kept + Σ λ_new) / total ≥ ε

and ``U ← [U, new]`` (re-orthonormalised). During later tasks a gradient ``G`` acting on these features is
replaced by ``G - G U Uᵀ`` (features on the right) or ``G - U Uᵀ G`` (features on the left).
No raw data is stored; only ``U``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist


class FeatureBasis:
    """A growing orthonormal basis (``d x k``) of one feature space, and its running statistics."""

    def __init__(self, dim: int, threshold: float = 0.97):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.dim, self.threshold = int(dim), float(threshold)
        self.U = torch.zeros(self.dim, 0, dtype=torch.float64)
        self._cast: dict[tuple, torch.Tensor] = {}  # U in the dtype/device of the gradients (hot path)
        self._cov: torch.Tensor | None = None
        self._count = 0

    # -- collection ---------------------------------------------------------------------------------
    @torch.no_grad()
    def observe(self, feats: torch.Tensor) -> None:
        """Add features ``(..., d)`` of the current task to the running second moment."""
        x = feats.detach().reshape(-1, self.dim).to(torch.float64)
        cov = x.T @ x
        self._cov = cov.cpu() if self._cov is None else self._cov + cov.cpu()
        self._count += x.shape[0]

    @property
    def pending(self) -> bool:
        return self._cov is not None

    # -- update -------------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self) -> int:
        """Extend ``U`` from the features observed since the last update; returns the directions added."""
        if self._cov is None:
            return 0
        cov = self._cov
        if dist.is_available() and dist.is_initialized():
            cov = cov.clone()
            dist.all_reduce(cov)
        self._cov, self._count = None, 0
        total = float(torch.trace(cov))
        if total <= 0.0:
            return 0
        U = self.U
        kept = float(torch.trace(U.T @ cov @ U)) if U.shape[1] else 0.0
        if kept / total >= self.threshold or U.shape[1] >= self.dim:
            return 0
        P = torch.eye(self.dim, dtype=torch.float64) - U @ U.T
        resid = P @ cov @ P
        evals, evecs = torch.linalg.eigh((resid + resid.T) / 2)
        evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
        need = self.threshold * total - kept
        cum = torch.cumsum(evals, 0)
        k = int(torch.searchsorted(cum, torch.tensor(need, dtype=cum.dtype)).item()) + 1
        k = max(0, min(k, self.dim - U.shape[1], int((evals > 1e-12 * total).sum())))
        if k == 0:
            return 0
        new = torch.cat([U, evecs[:, :k]], dim=1)
        q, _ = torch.linalg.qr(new)
        self.U = q[:, : new.shape[1]].contiguous()
        self._cast.clear()
        return k

    # -- projection ---------------------------------------------------------------------------------
    def project(self, grad: torch.Tensor, side: str = "right") -> torch.Tensor:
        """Remove from ``grad`` its component along the basis, on the feature axis ``side`` (last or first)."""
        if self.U.shape[1] == 0:
            return grad
        key = (grad.device, grad.dtype)
        U = self._cast.get(key)
        if U is None:
            U = self._cast[key] = self.U.to(device=grad.device, dtype=grad.dtype)
        if side == "right":
            g = grad.reshape(-1, self.dim)
            return (g - (g @ U) @ U.T).reshape(grad.shape)
        g = grad.reshape(self.dim, -1)
        return (g - U @ (U.T @ g)).reshape(grad.shape)

    def residual_ratio(self, grad: torch.Tensor, side: str = "right", reference_norm: float | None = None) -> float:
        """``‖G U‖ / ‖G‖`` (or ``‖Uᵀ G‖ / ‖G‖``): ~0 after projection. ``reference_norm`` replaces ``‖G‖``
        (e.g. the norm before projection, so that a gradient projected to ~0 reads ~0, not noise/noise)."""
        norm = float(grad.norm()) if reference_norm is None else float(reference_norm)
        if self.U.shape[1] == 0 or norm == 0.0:
            return 0.0
        U = self.U.to(device=grad.device, dtype=torch.float64)
        g = grad.detach().to(torch.float64)
        inner = g.reshape(-1, self.dim) @ U if side == "right" else U.T @ g.reshape(self.dim, -1)
        return float(inner.norm() / norm)

    @property
    def rank(self) -> int:
        return int(self.U.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes of the stored basis (float32 storage, as checkpointed)."""
        return self.rank * self.dim * 4

    def state_dict(self) -> dict:
        return {"dim": self.dim, "threshold": self.threshold, "U": self.U.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.dim, self.threshold = int(state["dim"]), float(state["threshold"])
        self.U = state["U"].to(torch.float64)
        self._cast.clear()


@dataclass
class GradSpace:
    """One projected gradient: ``param``'s gradient acts on the features of ``key`` along ``side``.

    ``view`` reshapes the gradient so the feature axis is last (``right``) or first (``left``); ``dim`` is
    that axis' size. A PET layer lists its spaces and feeds their features; it never projects by itself.
    """

    key: str
    param: torch.nn.Parameter
    dim: int
    side: str = "right"
    view: tuple[int, ...] | None = None
    threshold: float | None = None
    extra: dict = field(default_factory=dict)
