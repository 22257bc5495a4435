"""Synthetic surrogate data from a teacher: diversified sample synthesis (DataFreeShield §4.2)."""

from shieldkit.synthesis.dss import SynthesisConfig, synthesize
from shieldkit.synthesis.losses import BNStatistics, class_loss, tv_prior
from shieldkit.synthesis.store import SyntheticSet, load_synthetic

__all__ = ["BNStatistics", "SynthesisConfig", "SyntheticSet", "class_loss", "load_synthetic", "synthesize",
           "tv_prior"]
