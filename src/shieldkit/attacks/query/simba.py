"""SimBA (Guo, Gardner, You, Wilson & Weinberger, ICML 2019), pixel (SimBA) and DCT (SimBA-DCT) bases.

Each iteration takes the next direction ``q`` of an orthonormal basis (in a random order; for DCT,
low frequencies first via the authors' ``block_order``), tries ``x − α q``, and only if that did not
lower the probability of the true class (raise the target's, when targeted) tries ``x + α q``; the
first improving candidate is kept. At most two queries per iteration, each counted; the second is
spent only when the first failed (the authors' ``simba_batch`` forwards both but counts one).

As in UniG's evaluation, the iterate is projected onto the ℓ∞ (or ℓ2) threat-model ball, so SimBA
runs under the same ε as the other attacks. When the basis is exhausted a fresh order is drawn.
Success is read from the probabilities already returned, so it costs no extra (uncounted) forward.
"""

from __future__ import annotations

import math

import torch

from shieldkit.attacks.query.base import QueryAttack, Tracker, project


def dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``D`` (``D @ D.T = I``); a 2-D basis image is ``outer(D[u], D[v])``."""
    k = torch.arange(n, dtype=torch.float64).view(-1, 1)
    i = torch.arange(n, dtype=torch.float64).view(1, -1)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.float()


def block_order(image_size: int, channels: int, initial_size: int, stride: int, g: torch.Generator
                ) -> torch.Tensor:
    """The authors' low-frequency-first ordering of DCT coefficients (``utils.block_order``): a random
    order inside the top-left ``initial_size²`` block, then each L-shaped band of width ``stride``."""
    order = torch.zeros(channels, image_size, image_size)
    total = channels * initial_size * initial_size
    order[:, :initial_size, :initial_size] = torch.randperm(total, generator=g).view(
        channels, initial_size, initial_size).float()
    for i in range(initial_size, image_size, stride):
        st = min(stride, image_size - i)
        num = channels * (2 * st * i + st * st)
        perm = (torch.randperm(num, generator=g) + total).float()
        num_first = channels * st * (st + i)
        order[:, :(i + st), i:(i + st)] = perm[:num_first].view(channels, -1, st)
        order[:, i:(i + st), :i] = perm[num_first:].view(channels, st, -1)
        total += num
    return order.view(-1).argsort()


class SimBA(QueryAttack):
    """SimBA with ``basis='pixel'`` or ``'dct'``; ``step`` is α (authors: 0.2 in [0, 1] pixel scale).

    Defaults: pixel step = ε for ℓ∞ (one step moves a pixel to the ball's face), otherwise the authors'
    0.2 (an ℓ2 step along a unit-norm basis vector); ``freq_dims`` is the low-frequency block searched first
    (the authors use 28 of 224 for ImageNet; we use half the side), ``stride`` the band width.
    """

    def __init__(self, eps: float, norm: str = "linf", targeted: bool = False, basis: str = "dct",
                 step: float | None = None, freq_dims: int | None = None, stride: int | None = None) -> None:
        super().__init__(eps, norm, targeted)
        if basis not in ("pixel", "dct"):
            raise ValueError(f"basis must be 'pixel' or 'dct', got {basis!r}")
        self.basis = basis
        self.name = f"simba_{basis}"
        self.step = step if step is not None else (eps if basis == "pixel" and norm == "linf" else 0.2)
        if self.step <= 0:
            raise ValueError("step must be > 0")
        self.freq_dims, self.stride = freq_dims, stride

    def _order(self, c: int, h: int, g: torch.Generator) -> torch.Tensor:
        if self.basis == "pixel":
            return torch.randperm(c * h * h, generator=g)
        fd = self.freq_dims or max(h // 2, 1)
        st = self.stride or max(h // 4, 1)
        return block_order(h, c, min(fd, h), st, g)

    def _direction(self, coord: int, shape: tuple[int, int, int], D: torch.Tensor | None,
                   device: torch.device) -> torch.Tensor:
        c, h, w = shape
        q = torch.zeros(c, h, w, device=device)
        ch, rem = divmod(coord, h * w)
        u, v = divmod(rem, w)
        if D is None:
            q[ch, u, v] = 1.0
        else:
            q[ch] = torch.outer(D[u], D[v])
        return q

    def _attack(self, tr: Tracker, g: torch.Generator) -> None:
        x = tr.x
        n, c, h, w = x.shape
        if self.basis == "dct" and h != w:
            raise ValueError("SimBA-DCT needs square images")
        D = dct_matrix(h).to(x.device) if self.basis == "dct" else None
        x_adv = x.clone()
        act = tr.active()
        if len(act) == 0:
            return
        # current log p(label | x_adv): starts from the (counted) clean query
        logp = tr.clean_logp.gather(1, tr.label.view(-1, 1)).squeeze(1).to(x.device)
        sign = 1.0 if self.targeted else -1.0  # improvement = lower p(y) / higher p(t)
        order = self._order(c, h, g)
        k = 0
        while True:
            act = tr.active()
            if len(act) == 0:
                break
            if k == len(order):
                order, k = self._order(c, h, g), 0
            q = self._direction(int(order[k]), (c, h, w), D, x.device) * self.step
            k += 1
            improved = torch.zeros(len(act), dtype=torch.bool, device=x.device)
            for direction in (-1.0, 1.0):
                todo = ~improved & tr.oracle.can_query(act).to(x.device) & ~tr.done[act].to(x.device)
                if not todo.any():
                    break
                ids = act[todo.cpu()]
                cand = project(x_adv[ids] + direction * q, x[ids], self.eps, self.norm)
                lp = tr.query(cand, ids)
                new = lp.gather(1, tr.label[ids].view(-1, 1)).squeeze(1)
                better = sign * (new - logp[ids]) > 0
                sel = ids[better.cpu()]
                x_adv[sel] = cand[better]
                logp[sel] = new[better]
                improved[todo] = better
