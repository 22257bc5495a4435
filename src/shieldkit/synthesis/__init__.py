"""Synthetic surrogate data from a teacher: diversified sample synthesis (DataFreeShield §4.2), by image-space
optimisation (``method="dss"``) or a meta-learned generator (``method="fast"``)."""

from shieldkit.synthesis.config import FastConfig, SynthesisConfig
from shieldkit.synthesis.engine import METHODS, synthesize
from shieldkit.synthesis.losses import BNStatistics, class_loss, tv_prior
from shieldkit.synthesis.store import SyntheticSet, load_synthetic

__all__ = ["METHODS", "BNStatistics", "FastConfig", "SynthesisConfig", "SyntheticSet", "class_loss",
           "load_synthetic", "synthesize", "tv_prior"]
