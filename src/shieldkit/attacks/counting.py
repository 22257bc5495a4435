"""Count what an attack costs: forward and backward passes through the model, in images.

Wall time alone hides *why* an attack is slow; the number of model evaluations (queries) is what
papers compare (Square's 5,000 queries, SPSA's 2·samples per step, HopSkipJump's max_eval) and what
a black-box threat model bounds. :class:`CountingModel` wraps any classifier without changing its
outputs: every forward adds the batch size to ``forwards``; when the output takes part in an autograd
graph, a tensor hook adds the batch size to ``backwards`` each time a gradient flows back through it
(``loss.backward()`` or ``torch.autograd.grad`` alike).
"""

from __future__ import annotations

import torch
from torch import nn


class CountingModel(nn.Module):
    """Transparent wrapper counting images forwarded / back-propagated through ``model``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.forwards = 0
        self.backwards = 0
        # Mirror the wrapped model's mode: a fresh nn.Module is in train mode, and libraries that
        # "restore" the mode they found (torchattacks) would otherwise switch the model to train mode.
        self.train(model.training)

    def reset(self) -> None:
        self.forwards = 0
        self.backwards = 0

    def counts(self) -> dict[str, int]:
        return {"forwards": int(self.forwards), "backwards": int(self.backwards)}

    def _count(self, out: torch.Tensor, n: int) -> torch.Tensor:
        self.forwards += n
        if out.requires_grad:

            def _hook(grad: torch.Tensor) -> None:
                self.backwards += n

            out.register_hook(_hook)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._count(self.model(x), int(x.shape[0]))

    def features(self, x: torch.Tensor) -> torch.Tensor:  # latent attacks need the feature map
        return self._count(self.model.features(x), int(x.shape[0]))

    def through(self, system: nn.Module) -> nn.Module:
        """``system`` (an adaptive stand-in for the model: a BPDA surrogate, an EOT average) with its
        passes added to this counter, as if they went through the model (same images per pass)."""
        return _CountThrough(self, system)


class _CountThrough(nn.Module):
    def __init__(self, counter: CountingModel, system: nn.Module) -> None:
        super().__init__()
        self.counter, self.system = counter, system  # no .train() here: it would switch the wrapped model's mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.counter._count(self.system(x), int(x.shape[0]))

