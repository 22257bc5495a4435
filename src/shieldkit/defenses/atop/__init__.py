"""AToP — Adversarial Training on Purification (Lin et al.), with a data-free purifier option.

transform (RT1/RT2/RT3, :mod:`.transforms`) → purifier (gated-conv inpainter or AE, :mod:`.purifiers`)
→ frozen classifier, as one module (:mod:`.pipeline`); purifier pre-training with L_org
(:mod:`.pretrain`) and AToP fine-tuning with L_org + λ·CE on adversarial examples crafted against the
whole pipeline (:mod:`.finetune`). Its evaluation with EOT / BPDA+EOT / AutoAttack-rand is
:mod:`shieldkit.evaluation.atop` (the evaluation layer, above the defences).
"""

from shieldkit.defenses.atop.finetune import FinetuneConfig, finetune_purifier
from shieldkit.defenses.atop.pipeline import PurificationPipeline, load_pipeline, load_purifier, save_purifier
from shieldkit.defenses.atop.pretrain import PretrainConfig, pretrain_purifier
from shieldkit.defenses.atop.purifiers import (
    AEPurifier,
    GatedInpainter,
    PatchDiscriminator,
    PurifierConfig,
    build_purifier,
    df_discriminator_loss,
    df_generator_loss,
    mae_loss,
)
from shieldkit.defenses.atop.transforms import RandomTransform, TransformConfig, default_patch

__all__ = ["AEPurifier", "FinetuneConfig", "GatedInpainter", "PatchDiscriminator", "PretrainConfig",
           "PurificationPipeline", "PurifierConfig", "RandomTransform", "TransformConfig", "build_purifier",
           "default_patch", "df_discriminator_loss", "df_generator_loss", "finetune_purifier", "load_pipeline",
           "load_purifier", "mae_loss", "pretrain_purifier", "save_purifier"]
