"""shieldkit: make a pretrained image classifier adversarially robust without its training data.

Stages live in sub-packages: :mod:`shieldkit.data` → :mod:`shieldkit.models` →
:mod:`shieldkit.synthesis` → :mod:`shieldkit.training` → :mod:`shieldkit.evaluation` →
:mod:`shieldkit.reporting`; :mod:`shieldkit.cli` is a thin typer layer over them.
"""

__version__ = "0.1.0"
