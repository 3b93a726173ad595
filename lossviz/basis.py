"""Where the Krylov kernels keep their bases: device and storage precision.

The Lanczos basis of :func:`lossviz.lanczos.lanczos` (``(m + b) × n`` numbers) and the
per-probe bases of :func:`lossviz.slq.slq` (``g × (m + 1) × n``) dominate the memory of
a spectrum once ``n`` (the number of parameters) is large. :class:`Basis` keeps such a
basis

- on the operator's device in the working precision (the default: plain tensor
  arithmetic, exactly what the kernels did before), or
- on another device (``basis_device="cpu"``; pinned memory when the operator is on
  CUDA, so the columns stream to the GPU asynchronously), and / or in a lower storage
  precision (``basis_dtype=torch.float32`` under a float64 operator,
  ``torch.bfloat16`` under a float32 one). The basis is then stored in column blocks
  and every operation (projections, reorthogonalization, Ritz vectors, restarts)
  streams one block at a time to the operator's device, converted to the working
  precision there: the extra memory on the operator's device is one block (at most
  :data:`CHUNK_BYTES`, 64 MiB, on a GPU; 4 MiB on a CPU), never a second copy of the
  basis.

Products, the projected matrix and the recurrence stay in the working precision; the
stored vectors are rounded once, when they are written. The products are taken of the
stored (rounded) vectors and every new vector is orthogonalized (twice) against the
stored vectors, so full reorthogonalization holds to the storage precision ``u`` and
does not degrade as the basis grows. The consequence: the Ritz values are accurate to
about ``u · |λ|_max`` (``u = 2⁻²⁴ ≈ 6e-8`` for float32, ``2⁻⁸ ≈ 4e-3`` for bfloat16),
so tolerances below ``4·eps`` of the storage dtype are raised to it, with a warning
(see :func:`lossviz.lanczos.check_args`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import validate
from .errors import ArgumentTypeError, LossvizError, warn

#: The storage dtypes a basis may have (float16 is not one: unit vectors of a large
#: model have entries near ``1/√n``, below float16's normal range for ``n > 3·10⁸``).
BASIS_DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}

#: The most working-precision bytes a streamed basis moves to a GPU at once (one
#: column block).
CHUNK_BYTES = 1 << 26

#: The same on a CPU, where smaller blocks stay in the allocator's cache (64 MiB
#: blocks are five times slower there: each is a fresh, page-faulted mapping).
CPU_CHUNK_BYTES = 1 << 22


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def check_basis(basis_device, basis_dtype, device, work_dtype) -> tuple[torch.device, torch.dtype]:
    """Check ``basis_device`` and ``basis_dtype`` before any work.

    Args:
        basis_device: None (the operator's device) or a device (``"cpu"``, ``"cuda:0"``,
            a ``torch.device``).
        basis_dtype: None (the working precision) or ``torch.float64``,
            ``torch.float32``, ``torch.bfloat16`` (or their names as strings); not more
            precise than the working precision.
        device: The operator's device.
        work_dtype: The working precision (:func:`lossviz.hvp.work_dtype` of the
            products' dtype).

    Returns:
        ``(device, dtype)`` of the stored basis.

    Raises:
        ArgumentTypeError: if ``basis_dtype`` is neither a ``torch.dtype`` nor a string,
            or ``basis_device`` is not a device.
        LossvizError: if ``basis_dtype`` is not one of :data:`BASIS_DTYPES` or is more
            precise than the working precision, or ``basis_device`` is unavailable.
    """
    device = torch.device(device)
    if basis_device is None:
        bdev = device
    else:
        bdev = validate.device(basis_device, "basis_device")
        if bdev.type == "cuda" and bdev.index is None:
            bdev = torch.device("cuda", torch.cuda.current_device())
    if basis_dtype is None:
        return bdev, work_dtype
    if isinstance(basis_dtype, str):
        key = basis_dtype.replace("torch.", "")
        if key not in BASIS_DTYPES:
            raise LossvizError(
                f"basis_dtype={basis_dtype!r}: expected one of {sorted(BASIS_DTYPES)}"
            )
        bdt = BASIS_DTYPES[key]
    elif isinstance(basis_dtype, torch.dtype):
        bdt = basis_dtype
    else:
        raise ArgumentTypeError(
            "basis_dtype must be a torch.dtype (torch.float32, torch.bfloat16, ...) or its "
            f"name, got {validate.show(basis_dtype)}"
        )
    if bdt not in BASIS_DTYPES.values():
        why = (
            " (float16 cannot hold the ~1/√n entries of a large model's unit vectors: "
            "use torch.bfloat16)"
            if bdt == torch.float16
            else ""
        )
        raise LossvizError(
            f"basis_dtype={_name(bdt)} is not supported{why}; expected one of "
            f"{', '.join(BASIS_DTYPES)}"
        )
    if torch.finfo(bdt).bits > torch.finfo(work_dtype).bits:
        raise LossvizError(
            f"basis_dtype={_name(bdt)} is more precise than the products' working precision "
            f"({_name(work_dtype)}): nothing to gain; use None, or a lower precision to save "
            "memory"
        )
    return bdev, bdt


def lowered(dtype: torch.dtype, work_dtype: torch.dtype) -> bool:
    """Whether a basis stored in ``dtype`` is less precise than ``work_dtype``.

    Args:
        dtype: The storage dtype.
        work_dtype: The working precision.

    Returns:
        True when ``dtype`` has a larger machine epsilon.
    """
    return torch.finfo(dtype).eps > torch.finfo(work_dtype).eps


class Basis:
    """A stack of ``rows`` vectors of size ``n`` (with optional leading dimensions).

    Stored on ``device`` in ``dtype``; every method takes and returns tensors on
    ``work_device`` in ``work_dtype``. See the module docstring.

    Args:
        shape: ``(*lead, rows, n)``.
        device: Where the basis is stored.
        dtype: The storage dtype.
        work_device: The operator's device.
        work_dtype: The working precision.
        chunk_bytes: The largest block moved to ``work_device`` at once (default
            :data:`CHUNK_BYTES` on a GPU, :data:`CPU_CHUNK_BYTES` on a CPU).
        streamed: Store in column blocks even on the operator's device in the working
            precision (what a basis elsewhere does; for tests on a CPU-only machine).
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        *,
        device: torch.device,
        dtype: torch.dtype,
        work_device: torch.device,
        work_dtype: torch.dtype,
        chunk_bytes: int | None = None,
        streamed: bool = False,
    ):
        self.shape = tuple(shape)
        self.n = self.shape[-1]
        self.device, self.dtype = torch.device(device), dtype
        self.work_device, self.wd = torch.device(work_device), work_dtype
        self.direct = self.device == self.work_device and dtype == work_dtype and not streamed
        if chunk_bytes is None:
            chunk_bytes = CHUNK_BYTES if self.work_device.type == "cuda" else CPU_CHUNK_BYTES
        self.chunk = chunk_bytes
        self.pinned = False
        if self.direct:
            self.Q = torch.zeros(self.shape, dtype=dtype, device=self.device)
            self.blocks = None
            return
        self.Q = None
        lead_rows = math.prod(self.shape[:-1])
        item = torch.empty((), dtype=work_dtype).element_size()
        width = max(1, chunk_bytes // max(1, lead_rows * item))
        self.cols = [slice(c, min(c + width, self.n)) for c in range(0, self.n, width)]
        pin = self.device.type == "cpu" and self.work_device.type == "cuda"
        self.blocks = []
        for c in self.cols:
            shp = (*self.shape[:-1], c.stop - c.start)
            if pin:
                try:
                    self.blocks.append(torch.zeros(shp, dtype=dtype, pin_memory=True))
                    self.pinned = True
                    continue
                except RuntimeError as e:  # pinned memory exhausted: pageable
                    warn(
                        f"the Lanczos basis could not be pinned ({e!s:.80}): it is kept in "
                        "pageable memory (slower transfers)"
                    )
                    pin = False
            self.blocks.append(torch.zeros(shp, dtype=dtype, device=self.device))

    @property
    def nbytes(self) -> int:
        """Bytes of the stored basis."""
        if self.direct:
            return self.Q.numel() * self.Q.element_size()
        return sum(b.numel() * b.element_size() for b in self.blocks)

    def _load(self, i: int, lo: int, hi: int) -> Tensor:
        """Rows ``[lo, hi)`` of column block ``i``, on the work device in the work dtype."""
        blk = self.blocks[i][..., lo:hi, :]
        return blk.to(self.work_device, self.wd, non_blocking=self.pinned)

    def rows(self, lo: int, hi: int) -> Tensor:
        """Rows ``[lo, hi)``: ``(*lead, hi - lo, n)`` (a view in the direct case)."""
        if self.direct:
            return self.Q[..., lo:hi, :]
        return torch.cat([self._load(i, lo, hi) for i in range(len(self.blocks))], dim=-1)

    def put(self, lo: int, X: Tensor) -> None:
        """Store ``X`` (``(*lead, r, n)``) as rows ``[lo, lo + r)`` (rounded to ``dtype``)."""
        hi = lo + X.shape[-2]
        if self.direct:
            self.Q[..., lo:hi, :] = X
            return
        for blk, c in zip(self.blocks, self.cols):
            blk[..., lo:hi, :].copy_(X[..., c])

    def dot(self, r: int, W: Tensor) -> Tensor:
        """``Q[:r] Wᵀ``: ``(*lead, r, b)`` for ``W`` of shape ``(*lead, b, n)``."""
        if self.direct:
            return self.Q[..., :r, :] @ W.transpose(-1, -2)
        h = None
        for i, c in enumerate(self.cols):
            part = self._load(i, 0, r) @ W[..., c].transpose(-1, -2)
            h = part if h is None else h.add_(part)
        return h

    def sub(self, r: int, h: Tensor, W: Tensor) -> Tensor:
        """``W - hᵀ Q[:r]`` for ``h`` of shape ``(*lead, r, b)`` (a new tensor)."""
        if self.direct:
            return W - h.transpose(-1, -2) @ self.Q[..., :r, :]
        W = W.clone()
        hT = h.transpose(-1, -2)
        for i, c in enumerate(self.cols):
            W[..., c] -= hT @ self._load(i, 0, r)
        return W

    def project_out(self, r: int, Z: Tensor) -> Tensor:
        """``Z - (Z Q[:r]ᵀ) Q[:r]`` (one classical Gram-Schmidt pass)."""
        if self.direct:
            Q = self.Q[..., :r, :]
            return Z - (Z @ Q.transpose(-1, -2)) @ Q
        return self.sub(r, self.dot(r, Z), Z)

    def combine(self, r: int, S: Tensor) -> Tensor:
        """``Sᵀ Q[:r]`` for ``S`` of shape ``(r, p)``: ``(p, n)`` (no leading dimensions)."""
        if self.direct:
            return S.T @ self.Q[:r]
        out = torch.empty(S.shape[1], self.n, dtype=self.wd, device=self.work_device)
        for i, c in enumerate(self.cols):
            out[:, c] = S.T @ self._load(i, 0, r)
        return out

    def restart(self, na: int, S: Tensor, b: int) -> None:
        """Thick restart in place: ``Q[:p] = Sᵀ Q[:na]`` and ``Q[p:p+b] = Q[na:na+b]``.

        ``p = S.shape[1] <= na - b``; one column block at a time (no copy of the basis).
        """
        p = S.shape[1]
        if self.direct:  # column blocks too: no (p, n) temporary
            item = self.Q.element_size()
            width = max(1, self.chunk // (na * item))
            for c0 in range(0, self.n, width):
                c = slice(c0, min(c0 + width, self.n))
                Y = S.T @ self.Q[:na, c]
                self.Q[p : p + b, c] = self.Q[na : na + b, c]
                self.Q[:p, c] = Y
            return
        for i, blk in enumerate(self.blocks):
            cur = self._load(i, 0, na + b)
            blk[:p].copy_(S.T @ cur[:na])
            blk[p : p + b].copy_(cur[na : na + b])
