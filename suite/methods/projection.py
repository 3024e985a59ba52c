"""Orthonormal bases of old-task feature spaces and gradient projection — one implementation for all users.

Gradient Projection Memory (Saha et al., ICLR 2021), carried to PET parameters by PEGP (Qiao et al., 2024,
arXiv:2405.13383). Features are accumulated as an uncentred second-moment matrix ``C = sum x xᵀ`` (d x d):
it has the same eigenvectors and energies as the SVD of the stacked features ``R`` (``σ_i² = λ_i``), costs
O(d²) memory whatever the number of samples, and under DDP one ``all_reduce`` of ``C`` gives every rank the
identical basis. After a task, with existing basis ``U`` and ``P = I - UUᵀ``, two criteria pick new directions:

``criterion="gpm"`` (the suite's default; GPM's σ² energy, two-sided residual)::

    total = tr(C);  kept = tr(Uᵀ C U);  Ĉ = P C P
    add the fewest top eigenvectors of Ĉ so that (kept + Σ λ_new) / total ≥ ε

``criterion="official"`` (what the PEGP authors' released code computes: the SVD of the Gram matrix of the
features, its squared singular values as energy — σ⁴ of the features — and a one-sided residual)::

    total = ‖C‖_F²;  Ĉ = P C;  kept = total - ‖Ĉ‖_F²
    add the fewest top left singular vectors of Ĉ so that (kept + Σ s_new²) / total ≥ ε

At the same ε the σ⁴ criterion keeps far fewer directions (a 1/i spectrum of λ in d = 768 at ε = 0.97: 20 instead
of 619). ``U ← [U, new]`` is re-orthonormalised. During later tasks a gradient ``G`` acting on these features is
replaced by ``G - G U Uᵀ`` (features on the right) or ``G - U Uᵀ G`` (features on the left): :class:`Projector`.
No raw data is stored; only ``U``.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from suite.errors import ConfigError
from suite.pet.base import GradSpace


class FeatureBasis:
    """A growing orthonormal basis (``d x k``) of one feature space, and its running statistics."""

    CRITERIA = ("gpm", "official")

    def __init__(self, dim: int, threshold: float = 0.97, criterion: str = "gpm"):
        if not 0.0 < threshold <= 1.0:
            raise ConfigError(f"threshold must be in (0, 1], got {threshold}")
        if criterion not in self.CRITERIA:
            raise ConfigError(f"basis criterion must be one of {', '.join(self.CRITERIA)}, got {criterion!r}")
        self.dim, self.threshold, self.criterion = int(dim), float(threshold), criterion
        self.U = torch.zeros(self.dim, 0, dtype=torch.float64)
        self._cov: torch.Tensor | None = None

    # -- collection ---------------------------------------------------------------------------------
    @torch.no_grad()
    def observe(self, feats: torch.Tensor) -> None:
        """Add features ``(..., d)`` of the current task to the running second moment."""
        x = feats.detach().reshape(-1, self.dim).to(torch.float64)
        cov = x.T @ x
        self._cov = cov.cpu() if self._cov is None else self._cov + cov.cpu()

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
        self._cov = None
        U = self.U
        if U.shape[1] >= self.dim:
            return 0
        P = torch.eye(self.dim, dtype=torch.float64) - U @ U.T
        if self.criterion == "gpm":
            total = float(torch.trace(cov))
            kept = float(torch.trace(U.T @ cov @ U)) if U.shape[1] else 0.0
            resid = P @ cov @ P
            energy, vecs = torch.linalg.eigh((resid + resid.T) / 2)
            energy, vecs = energy.flip(0).clamp_min(0), vecs.flip(1)
        else:
            total = float((cov * cov).sum())
            resid = P @ cov
            vecs, sv, _ = torch.linalg.svd(resid)
            energy = sv * sv
            kept = total - float(energy.sum())
        if total <= 0.0 or kept / total >= self.threshold:
            return 0
        need = self.threshold * total - kept
        cum = torch.cumsum(energy, 0)
        k = int(torch.searchsorted(cum, torch.tensor(need, dtype=cum.dtype)).item()) + 1
        k = max(0, min(k, self.dim - U.shape[1], int((energy > 1e-12 * total).sum())))
        if k == 0:
            return 0
        new = torch.cat([U, vecs[:, :k]], dim=1)
        q, _ = torch.linalg.qr(new)
        self.U = q[:, : new.shape[1]].contiguous()
        return k

    # -- checks -------------------------------------------------------------------------------------
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
        """Bytes of the basis as held and checkpointed (float64)."""
        return self.U.element_size() * self.U.numel()

    def state_dict(self) -> dict:
        return {"dim": self.dim, "threshold": self.threshold, "criterion": self.criterion, "U": self.U.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.dim, self.threshold = int(state["dim"]), float(state["threshold"])
        self.criterion = str(state.get("criterion", "gpm"))
        self.U = state["U"].to(torch.float64)


class Projector:
    """The one projection of the suite (PEGP and GPM): every step, the gradient of each space is replaced by
    ``G - G U Uᵀ`` (right) or ``G - U Uᵀ G`` (left); with ``project_update`` the applied optimiser update is
    projected the same way after the step (adaptive optimisers and weight decay move parameters off the projected
    gradient). ``frozen()`` lists parameters whose gradient and update are zeroed (e.g. gates without a space).

    Spaces with a basis are grouped by (side, dim, slice shape) with their bases stacked and zero-padded (a zero
    column projects nothing), so each group costs two batched matmuls per step.
    """

    def __init__(self, spaces: list[GradSpace], bases: dict[str, FeatureBasis], params: list[torch.nn.Parameter],
                 project_update: bool = True, frozen=lambda: []):
        self.spaces, self.bases, self.params = spaces, bases, list(params)
        self.project_update, self.frozen = bool(project_update), frozen
        self._index = {id(p): i for i, p in enumerate(self.params)}
        self._groups: list | None = None
        self._before: list[torch.Tensor] | None = None

    def invalidate(self) -> None:
        """Call after the bases changed."""
        self._groups = None

    def groups(self) -> list[tuple[str, int, list[GradSpace], torch.Tensor, dict]]:
        if self._groups is None:
            found: dict[tuple, list[GradSpace]] = {}
            for s in self.spaces:
                basis = self.bases[s.key]
                if basis.rank == 0:
                    continue
                shape = tuple(s.param.shape[1:]) if s.index is not None else tuple(s.param.shape)
                found.setdefault((s.side, basis.dim, shape), []).append(s)
            self._groups = []
            for (side, dim, _), spaces in found.items():
                stacked = torch.zeros(len(spaces), dim, max(self.bases[s.key].rank for s in spaces), dtype=torch.float64)
                for i, s in enumerate(spaces):
                    stacked[i, :, : self.bases[s.key].rank] = self.bases[s.key].U
                self._groups.append((side, dim, spaces, stacked, {}))
        return self._groups

    @torch.no_grad()
    def project(self, tensor_of) -> None:
        """Project, in place, the tensor ``tensor_of(param)`` (a gradient, an update) of every space with a basis."""
        for side, dim, spaces, stacked, casts in self.groups():
            rows, views = [], []
            for i, s in enumerate(spaces):
                t = tensor_of(s.param)
                if t is not None:
                    rows.append(i)
                    views.append(s.pick(t))
            if not views:
                continue
            key = (views[0].device, views[0].dtype)
            if key not in casts:
                casts[key] = stacked.to(device=key[0], dtype=key[1])
            U = casts[key] if len(rows) == len(spaces) else casts[key][rows]
            if side == "right":
                G = torch.stack([v.reshape(-1, dim) for v in views])
                P = G - torch.bmm(torch.bmm(G, U), U.transpose(1, 2))
            else:
                G = torch.stack([v.reshape(dim, -1) for v in views])
                P = G - torch.bmm(U, torch.bmm(U.transpose(1, 2), G))
            torch._foreach_copy_(views, [p.view(v.shape) for p, v in zip(P.unbind(0), views)])

    @torch.no_grad()
    def before_step(self) -> None:
        """After ``backward``, before the optimiser: project gradients, zero the frozen ones, remember θ."""
        self.project(lambda p: p.grad)
        for p in self.frozen():
            if p.grad is not None:
                p.grad.zero_()
        if self.project_update:
            self._before = torch._foreach_mul(self.params, 1.0)  # copies, one call

    @torch.no_grad()
    def after_step(self) -> None:
        """After the optimiser: replace the applied update ``Δθ`` by its projection (``project_update``)."""
        if not self.project_update or self._before is None:
            return
        deltas = torch._foreach_sub(self.params, self._before)
        self.project(lambda p: deltas[self._index[id(p)]])
        for p in self.frozen():
            deltas[self._index[id(p)]].zero_()
        torch._foreach_add_(self._before, deltas)
        torch._foreach_copy_(self.params, self._before)
        self._before = None

    def max_residual(self, reference: dict[int, torch.Tensor] | None = None) -> float:
        """max over spaces of ‖G U‖ / ‖G_ref‖ (the orthogonality check). ``reference``: gradients before
        projection (by ``id(param)``), so that a space whose gradient was projected to ~0 counts as ~0."""
        worst = 0.0
        for s in self.spaces:
            basis = self.bases[s.key]
            if s.param.grad is None or basis.rank == 0:
                continue
            g = s.pick(s.param.grad)
            ref = s.pick(reference[id(s.param)]) if reference else g
            worst = max(worst, basis.residual_ratio(g, s.side, float(ref.detach().to(torch.float64).norm())))
        return worst
