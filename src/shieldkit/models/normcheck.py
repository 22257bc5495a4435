"""Is the declared input normalisation the one the model was trained with? (:func:`check_input_normalisation`,
run by ``shieldkit import-model`` on real test points.) A wrong ``mean``/``std`` silently costs accuracy and
robustness, so the declared one is compared with common alternatives and the data's own statistics."""

from __future__ import annotations

import warnings

import torch

from shieldkit.errors import IncompatibleError
from shieldkit.models.wrapper import NormalizedClassifier

COMMON_NORMALISATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "none (mean 0, std 1)": ((0.0,), (1.0,)),
    "mean 0.5, std 0.5 ([-1, 1])": ((0.5,), (0.5,)),
    "ImageNet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "CIFAR-10 (pytorchcv)": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
}


class NormalisationMismatch(IncompatibleError):  # noqa: N818 - named for what users see
    """The declared input normalisation is very likely wrong for this model (or, at chance accuracy, the
    weights / class order / data do not belong to it)."""


@torch.no_grad()
def check_input_normalisation(model: NormalizedClassifier, x: torch.Tensor, y: torch.Tensor | None = None, *,
                              margin: float = 0.15, raise_on_mismatch: bool = True,
                              device: str | torch.device = "cpu") -> dict:
    """Is the declared ``mean``/``std`` the one the model was trained with?

    With labels: clean accuracy under the declared normalisation vs the alternatives (none, ±1,
    ImageNet, CIFAR, and the data's own per-channel statistics); if one beats the declared one by more
    than ``margin`` (absolute accuracy), it is a mismatch. Without labels: the logit statistics — a
    model fed wrongly scaled inputs typically predicts one class for most images; if the declared
    normalisation's predictions collapse (> 90 % one class) while an alternative's do not, mismatch.
    With labels, clean accuracy at chance level (≤ 1/C + max(0.02, 2/n)) under the declared normalisation
    also fails (``report["chance"]``), whatever the alternatives score: the check cannot pass on a model
    that does not classify the data at all (random or wrong weights, another dataset or class order).
    Returns the measurements; raises :class:`NormalisationMismatch` (or warns) with the fix.
    """
    c = model.card.in_channels
    x = x.to(device)
    data_mean = x.mean(dim=(0, 2, 3)).tolist()
    data_std = x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    candidates = {"declared": (model.card.mean, model.card.std), "data statistics": (data_mean, data_std)}
    for k, (m, s) in COMMON_NORMALISATIONS.items():
        if len(m) in (1, c):
            candidates[k] = (list(m) * (c // len(m)), list(s) * (c // len(s)))
    old_mean, old_std = model.mean.clone(), model.std.clone()
    model.to(device).eval()
    scores: dict[str, dict] = {}
    try:
        for k, (m, s) in candidates.items():
            model.mean.copy_(torch.tensor(m).view_as(model.mean))
            model.std.copy_(torch.tensor(s).view_as(model.std))
            logits = torch.cat([model(x[i:i + 256]) for i in range(0, len(x), 256)])
            pred = logits.argmax(1).cpu()
            top_share = pred.bincount(minlength=logits.shape[1]).max().item() / len(pred)
            scores[k] = {"mean": [round(v, 4) for v in m], "std": [round(v, 4) for v in s],
                         "top_class_share": top_share, "logit_std": logits.std().item()}
            if y is not None:
                scores[k]["accuracy"] = (pred == y.cpu()).float().mean().item()
    finally:
        model.mean.copy_(old_mean)
        model.std.copy_(old_std)
    declared = scores["declared"]
    if y is not None:
        best = max(scores, key=lambda k: scores[k]["accuracy"])
        bad = scores[best]["accuracy"] - declared["accuracy"] > margin
        evidence = (f"clean accuracy {declared['accuracy']:.1%} with the declared normalisation, "
                    f"{scores[best]['accuracy']:.1%} with '{best}'")
    else:
        ok = [k for k in scores if k != "declared" and scores[k]["top_class_share"] < 0.5]
        best = ok[0] if ok else "declared"
        bad = declared["top_class_share"] > 0.9 and bool(ok)
        evidence = (f"{declared['top_class_share']:.0%} of the images get the same class with the declared "
                    f"normalisation, {scores[best]['top_class_share']:.0%} with '{best}'")
    chance = False
    if y is not None:
        n_cls = int(model.card.num_classes or logits.shape[1])
        chance_level = 1.0 / n_cls + max(0.02, 2.0 / max(len(x), 1))
        chance = declared["accuracy"] <= chance_level
    report = {"ok": not (bad or chance), "best": best, "chance": chance, "candidates": scores}
    if chance and not bad:
        msg = (f"clean accuracy {declared['accuracy']:.1%} on {len(x)} test points is at chance level "
               f"(≤ {chance_level:.1%} for {n_cls} classes) with the declared normalisation (best alternative "
               f"'{best}': {scores[best]['accuracy']:.1%}): the model does not classify this data")
        fix = ("check --weights (trained? this architecture / --init-args?), --data and its class order, and "
               "--mean/--std; --check-n 0 skips the check")
        if raise_on_mismatch:
            raise NormalisationMismatch(msg, hint=fix)
        warnings.warn(f"{msg}; {fix}", stacklevel=2)
    elif bad:
        msg = (f"input normalisation mismatch: {evidence}. The model probably expects inputs normalised with "
               f"mean={scores[best]['mean']} std={scores[best]['std']} (declared mean={model.card.mean} "
               f"std={model.card.std}). Declare it with --mean/--std (in [0, 1] pixel units).")
        if raise_on_mismatch:
            raise NormalisationMismatch(msg)
        warnings.warn(msg, stacklevel=2)
    return report
