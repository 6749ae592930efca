"""Token attributions: which tokens (genes, brain regions, behaviour measures) and modalities drive a prediction.

Two methods, both per subject and token, for one target's output at a time:

* :func:`integrated_gradients` -- Integrated Gradients (Sundararajan et al. 2017, through captum) on the token
  *values* of every modality at once (captum's inputs: one ``[B, T, F]`` tensor per modality; ``missing`` and
  ``present`` are held fixed as additional forward arguments). The attribution of a feature is
  ``(x - x') * mean_along_path(d output / d x)``; a token's attribution is the sum over its features.
  Completeness: the attributions of all tokens of a subject sum to ``output(x) - output(x')``, up to the error of
  the path integral (captum's convergence ``delta``, returned).
* :func:`occlusion` -- hide a token (``present[mod][:, t] = False``, the way the model treats a token a subject
  does not have) and record ``output(full) - output(occluded)``; also per modality (all its tokens hidden).

What is attributed (the "output"):

* regression: the head's prediction on the standardised target scale;
* binary: the logit (not the probability: the logit is additive, the probability saturates);
* multiclass: the logit of ``class_index``; with ``class_index=None``, the logit of each subject's predicted class
  on the full input (argmax), the same class for the baseline and every occluded variant of that subject.

The baseline of Integrated Gradients (``baseline="zeros"``) is 0 in the standardised space of the inputs: after
the fold's preprocessing (fitted on the training rows), 0 is the training mean of every numeric slot, so an
attribution answers "how much does this subject's deviation from the average training subject move the output".
Only *observed numeric* slots of *present* tokens move along the path; every other entry keeps its value in the
baseline too, so it gets exactly 0 attribution:

* missing (imputed) slots: a missing value carries no information of the subject (its missingness is an input
  the model sees, held fixed), so it contributes nothing;
* padding slots (``feature_mask`` False): not read by the model;
* categorical tokens: their value is a category index, and a path from 0 to index 2 through 0.7, 1.3, ... is
  meaningless. They are excluded from Integrated Gradients (NaN in :attr:`Attributions.tokens`, no row in the
  tables); :func:`occlusion` covers them like any other token;
* tokens a subject does not have (``present`` False): the model does not see their values.

Cost: Integrated Gradients runs ``n_steps`` forward and backward passes over the batch (in chunks of
``internal_batch_size`` rows if given). Occlusion runs one forward per token plus one per modality plus one
(``sum(T) + M + 1`` over the batch), stacked ``max_rows`` rows per forward: on the demo cohort (28 tokens,
3 modalities) that is 32 batch-forwards. Fine for tens of tokens; for thousands of tokens (SNP-level genes)
occlude groups instead.

The functions take an :class:`Explainable` (a ``predict(batch) -> {target: [B] or [B, C] tensor}`` callable and
the modalities' :class:`ModalitySpec`), or anything with ``encoder`` and ``heads`` (the LightningModule
``NeuroOmicsModule``), turned into one by :func:`explainable`. No Lightning import here.

:func:`attribution_table` makes the long table (``subject``, ``modality``, ``token``, ``target``, ``method``,
``value``); :func:`aggregate_attributions` the per-token summary over subjects (``mean``, ``mean_abs``, ``sd``,
``n``). Modality totals are rows with ``token == "*"`` (IG: the sum over the modality's tokens; occlusion: all the
modality's tokens hidden at once).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from mot_neuro.model.tokenizers import ModalitySpec

__all__ = [
    "ALL_TOKENS",
    "Attributions",
    "Explainable",
    "aggregate_attributions",
    "attribution_table",
    "explainable",
    "integrated_gradients",
    "occlusion",
    "target_output",
]

ALL_TOKENS = "*"
"""``token`` of a modality-total row in the tables."""
IG = "integrated_gradients"
OCCLUSION = "occlusion"
TABLE_COLUMNS = ["subject", "modality", "token", "target", "method", "value"]
AGGREGATE_COLUMNS = ["modality", "token", "target", "method", "mean", "mean_abs", "sd", "n"]

Batch = Mapping[str, Mapping[str, torch.Tensor]]
Predict = Callable[[Batch], Mapping[str, torch.Tensor]]


@dataclass
class Explainable:
    """What the attribution functions need of a model.

    predict: ``batch -> {target: [B] or [B, C] tensor}`` (head outputs: value, logit, or class logits); it must
        be deterministic (dropout off): see ``module``.
    specs: the modalities the model reads, in layout order (``name -> ModalitySpec``): categorical tokens and
        padding slots come from here.
    module: when given, put in eval mode while attributions are computed (and restored afterwards).
    """

    predict: Predict
    specs: Mapping[str, ModalitySpec]
    module: nn.Module | None = None

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        if self.module is None:
            yield
            return
        was_training = self.module.training
        self.module.eval()
        try:
            yield
        finally:
            self.module.train(was_training)


def explainable(model) -> Explainable:
    """An :class:`Explainable` of ``model``: itself, or built from an object with ``encoder`` (a
    ``NeuroOmicsEncoder``) and ``heads`` (target -> module on the pooled embedding), such as ``NeuroOmicsModule``."""
    if isinstance(model, Explainable):
        return model
    encoder, heads = getattr(model, "encoder", None), getattr(model, "heads", None)
    if encoder is None or heads is None:
        raise TypeError(
            f"cannot explain a {type(model).__name__}: pass an Explainable(predict, specs) or a model with"
            " `encoder` and `heads` (a NeuroOmicsModule)"
        )
    if not len(heads):
        raise ValueError("the model has no supervised heads (objective: masked): there is no prediction to explain")

    def predict(batch: Batch) -> dict[str, torch.Tensor]:
        pooled = encoder(batch).pooled
        return {name: head(pooled) for name, head in heads.items()}

    specs = {spec.name: spec for spec in encoder.cfg.modalities if spec.n_tokens > 0}
    return Explainable(predict, specs, model if isinstance(model, nn.Module) else None)


def target_output(outputs: Mapping[str, torch.Tensor], target: str, classes: torch.Tensor | None) -> torch.Tensor:
    """``[B]``: the attributed output of ``target`` (see the module docstring); ``classes`` ``[B]`` long picks a
    logit of a multiclass head per subject."""
    if target not in outputs:
        raise ValueError(f"target {target!r} is not among the model's outputs {sorted(outputs)}")
    out = outputs[target]
    if out.dim() == 1:
        return out
    if out.shape[-1] == 1:
        return out[:, 0]
    if classes is None:
        raise ValueError(f"target {target!r} has {out.shape[-1]} outputs: pick a class (class_index)")
    return out.gather(1, classes[:, None].to(out.device))[:, 0]


def _classes(outputs: Mapping[str, torch.Tensor], target: str, class_index: int | None) -> torch.Tensor | None:
    if target not in outputs:
        raise ValueError(f"target {target!r} is not among the model's outputs {sorted(outputs)}")
    out = outputs[target]
    if out.dim() == 1 or out.shape[-1] == 1:
        return None
    if class_index is None:
        return out.argmax(-1)
    if not 0 <= int(class_index) < out.shape[-1]:
        raise ValueError(f"class_index={class_index} is outside [0, {out.shape[-1] - 1}] for target {target!r}")
    return torch.full((out.shape[0],), int(class_index), dtype=torch.long, device=out.device)


@dataclass
class Attributions:
    """Attributions of one target's output on one batch, by one method.

    tokens: modality -> ``[B, T]`` per subject and token (IG: summed over the token's features; occlusion:
        ``output(full) - output(token hidden)``); NaN where the method does not score a token (IG: categorical).
    modalities: modality -> ``[B]``, the modality's total (IG: sum over its tokens; occlusion: all hidden at once).
    present: modality -> ``[B, T]`` bool, whether the subject has the token (tables leave absent ones out).
    output: ``[B]`` the attributed output on the full input.
    features: IG only: modality -> ``[B, T, F]`` per feature slot (0 on slots that do not move).
    delta: IG only: ``[B]`` captum's convergence delta, ``sum(attributions) - (output(x) - output(baseline))``.
    baseline_output: IG only: ``[B]`` the output at the baseline.
    """

    method: str
    target: str
    tokens: dict[str, torch.Tensor]
    modalities: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]
    output: torch.Tensor
    subjects: np.ndarray
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    delta: torch.Tensor | None = None
    baseline_output: torch.Tensor | None = None

    def total(self) -> torch.Tensor:
        """``[B]``: the sum over every scored token of every modality (IG: ~ output - baseline output)."""
        return sum(torch.nansum(t, dim=1) for t in self.tokens.values())


def _inputs(model: Explainable, batch: Batch) -> tuple[list[str], dict, dict, dict]:
    """Modality order, and values / missing / present per modality (defaults filled in), all on one device."""
    names = [name for name in model.specs if name in batch["values"]]
    lacking = sorted(set(model.specs) - set(batch["values"]))
    if lacking:
        raise ValueError(f"batch has no values for modality(ies) {lacking} that the model reads")
    values, missing, present = {}, {}, {}
    for name in names:
        v = batch["values"][name]
        values[name] = v
        m = batch.get("missing", {}).get(name)
        missing[name] = torch.zeros_like(v, dtype=torch.bool) if m is None else m.bool()
        p = batch.get("present", {}).get(name)
        present[name] = torch.ones(v.shape[:2], dtype=torch.bool, device=v.device) if p is None else p.bool()
    return names, values, missing, present


def _subjects(batch: Batch, n: int, subjects: Sequence | None) -> np.ndarray:
    if subjects is not None:
        if len(subjects) != n:
            raise ValueError(f"subjects has {len(subjects)} entries for a batch of {n}")
        return np.asarray(subjects)
    row = batch.get("row") if isinstance(batch, Mapping) else None
    return row.detach().cpu().numpy() if isinstance(row, torch.Tensor) else np.arange(n)


def moving_slots(spec: ModalitySpec, missing: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``[B, T, F]`` bool: the entries Integrated Gradients integrates over (observed numeric slots of present
    tokens); every other entry keeps its value along the path and gets 0 attribution."""
    numeric = spec.numeric_slots().to(missing.device)
    return numeric[None] & ~missing & present[..., None]


def integrated_gradients(
    model,
    batch: Batch,
    target: str,
    baseline: str | Mapping[str, torch.Tensor] = "zeros",
    n_steps: int = 32,
    *,
    class_index: int | None = None,
    internal_batch_size: int | None = None,
    subjects: Sequence | None = None,
) -> Attributions:
    """Integrated Gradients of ``target``'s output (module docstring) on the token values of every modality.

    baseline: ``"zeros"`` (the training mean in the standardised space) or modality -> tensor broadcastable to
        ``[B, T, F]``; either way only observed numeric slots of present tokens take the baseline value.
    n_steps: points of captum's Gauss-Legendre rule; 32 gives completeness within ~1e-3 relative on the demo
        model, more steps for a sharper model (check :attr:`Attributions.delta`).
    """
    from captum.attr import IntegratedGradients

    model = explainable(model)
    names, values, missing, present = _inputs(model, batch)
    if not names:
        raise ValueError("the model reads no modality of this batch: nothing to attribute")
    moving = {name: moving_slots(model.specs[name], missing[name], present[name]) for name in names}
    starts = {}
    for name in names:
        if isinstance(baseline, str):
            if baseline != "zeros":
                raise ValueError(f'baseline={baseline!r}: use "zeros" or a mapping modality -> tensor')
            reference = torch.zeros_like(values[name])
        else:
            reference = torch.as_tensor(baseline[name], dtype=values[name].dtype, device=values[name].device)
            reference = reference.expand_as(values[name])
        starts[name] = torch.where(moving[name], reference, values[name]).detach()
    n_mod = len(names)

    def forward(*args: torch.Tensor) -> torch.Tensor:
        vals, miss, pres, classes = args[:n_mod], args[n_mod : 2 * n_mod], args[2 * n_mod : 3 * n_mod], args[-1]
        batch_in = {
            "values": dict(zip(names, vals, strict=True)),
            "missing": dict(zip(names, miss, strict=True)),
            "present": dict(zip(names, pres, strict=True)),
        }
        return target_output(model.predict(batch_in), target, None if classes.numel() == 0 else classes)

    with model.evaluating():
        with torch.no_grad():
            full = model.predict({"values": values, "missing": missing, "present": present})
            classes = _classes(full, target, class_index)
            # captum repeats tensor arguments along the path; an empty tensor stands for "no class"
            classes_arg = classes if classes is not None else torch.zeros(len(values[names[0]]), 0)
            output = target_output(full, target, classes)
            extra = (*missing.values(), *present.values(), classes_arg)
            baseline_output = forward(*starts.values(), *extra)
        attributions, delta = IntegratedGradients(forward).attribute(
            tuple(values[name].detach() for name in names),
            baselines=tuple(starts[name] for name in names),
            additional_forward_args=extra,
            n_steps=n_steps,
            internal_batch_size=internal_batch_size,
            return_convergence_delta=True,
        )
    features, tokens = {}, {}
    for name, attribution in zip(names, attributions, strict=True):
        attribution = torch.where(moving[name], attribution, 0).detach()
        features[name] = attribution
        per_token = attribution.sum(-1)
        categorical = list(model.specs[name].categorical)
        if categorical:
            per_token[:, categorical] = float("nan")
        tokens[name] = per_token
    return Attributions(
        method=IG,
        target=target,
        tokens=tokens,
        modalities={name: torch.nansum(tokens[name], dim=1) for name in names},
        present=present,
        output=output.detach(),
        subjects=_subjects(batch, len(output), subjects),
        features=features,
        delta=delta.detach(),
        baseline_output=baseline_output.detach(),
    )


def occlusion(
    model,
    batch: Batch,
    target: str,
    *,
    class_index: int | None = None,
    max_rows: int = 4096,
    subjects: Sequence | None = None,
) -> Attributions:
    """Occlusion of each token and of each modality: ``output(full) - output(hidden)``, per subject.

    Hiding sets ``present`` False (the model's own "subject does not have this token"); a token that is already
    absent gives exactly 0 (as does a modality the subject has none of). Variants of the batch are stacked up to
    ``max_rows`` rows per forward.
    """
    model = explainable(model)
    names, values, missing, present = _inputs(model, batch)
    n = len(next(iter(values.values()))) if values else 0
    variants: list[tuple[str, int | None]] = [(name, t) for name in names for t in range(values[name].shape[1])]
    variants += [(name, None) for name in names]
    per_forward = max(1, int(max_rows) // max(n, 1))

    def hidden(name: str, token: int | None) -> dict[str, torch.Tensor]:
        out = dict(present)
        p = present[name].clone()
        if token is None:
            p[:] = False
        else:
            p[:, token] = False
        out[name] = p
        return out

    with model.evaluating(), torch.no_grad():
        full = model.predict({"values": values, "missing": missing, "present": present})
        classes = _classes(full, target, class_index)
        output = target_output(full, target, classes)
        changes = []
        for start in range(0, len(variants), per_forward):
            chunk = variants[start : start + per_forward]
            k = len(chunk)
            presents = [hidden(name, token) for name, token in chunk]
            stacked = {
                "values": {name: values[name].repeat(k, *([1] * (values[name].dim() - 1))) for name in names},
                "missing": {name: missing[name].repeat(k, 1, 1) for name in names},
                "present": {name: torch.cat([p[name] for p in presents]) for name in names},
            }
            stacked_classes = None if classes is None else classes.repeat(k)
            occluded = target_output(model.predict(stacked), target, stacked_classes).reshape(k, n)
            changes.extend(output[None] - occluded)
    tokens = {name: torch.empty(n, values[name].shape[1], device=output.device) for name in names}
    modalities = {}
    for (name, token), change in zip(variants, changes, strict=True):
        # Hiding what a subject does not have is no change: exactly 0 (a stacked forward of another batch size
        # may differ from the full one in the last float bit).
        if token is None:
            modalities[name] = torch.where(present[name].any(1), change, 0)
        else:
            tokens[name][:, token] = torch.where(present[name][:, token], change, 0)
    return Attributions(
        method=OCCLUSION,
        target=target,
        tokens=tokens,
        modalities=modalities,
        present=present,
        output=output,
        subjects=_subjects(batch, n, subjects),
    )


def attribution_table(
    attributions: Attributions | Sequence[Attributions],
    token_names: Mapping[str, Sequence[str]] | None = None,
    *,
    keep_absent: bool = False,
    modality_totals: bool = True,
) -> pd.DataFrame:
    """Long table, one row per subject, token, target and method: ``subject``, ``modality``, ``token``,
    ``target``, ``method``, ``value``.

    token_names: modality -> names of its tokens (default: the token index as text). Tokens a method does not
    score (IG: categorical) have no row; neither do tokens a subject does not have, unless ``keep_absent`` (their
    value is 0). With ``modality_totals``, one row per subject and modality with ``token == "*"`` (a subject with
    none of the modality's tokens has none unless ``keep_absent``).
    """
    if isinstance(attributions, Attributions):
        attributions = [attributions]
    frames = []
    for a in attributions:
        for name, values in a.tokens.items():
            v = values.detach().cpu().numpy()
            present = a.present[name].detach().cpu().numpy()
            n, t = v.shape
            names = list(token_names[name]) if token_names and name in token_names else [str(i) for i in range(t)]
            if len(names) != t:
                raise ValueError(f"token_names[{name!r}] has {len(names)} names for {t} tokens")
            keep = ~np.isnan(v) & (present | keep_absent)
            subject_index, token_index = np.nonzero(keep)
            frames.append(
                pd.DataFrame(
                    {
                        "subject": a.subjects[subject_index],
                        "modality": name,
                        "token": np.asarray(names, dtype=object)[token_index],
                        "target": a.target,
                        "method": a.method,
                        "value": v[keep].astype(np.float64),
                    }
                )
            )
            if modality_totals and name in a.modalities:
                # a subject counts when the method scored one of its tokens (IG scores no categorical token)
                keep_subject = (present & ~np.isnan(v)).any(1) | keep_absent
                frames.append(
                    pd.DataFrame(
                        {
                            "subject": a.subjects[keep_subject],
                            "modality": name,
                            "token": ALL_TOKENS,
                            "target": a.target,
                            "method": a.method,
                            "value": a.modalities[name].detach().cpu().numpy()[keep_subject].astype(np.float64),
                        }
                    )
                )
    if not frames:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    return pd.concat(frames, ignore_index=True)[TABLE_COLUMNS]


def aggregate_attributions(table: pd.DataFrame) -> pd.DataFrame:
    """Per ``modality``, ``token``, ``target``, ``method``: ``mean``, ``mean_abs``, ``sd`` (over subjects, ddof 1;
    NaN for one subject) and ``n`` (subjects), in the table's order of first appearance."""
    missing = sorted(set(TABLE_COLUMNS) - set(table.columns))
    if missing:
        raise ValueError(f"an attribution table needs the columns {TABLE_COLUMNS}; missing {missing}")
    keys = ["modality", "token", "target", "method"]
    grouped = table.assign(abs_value=table["value"].abs()).groupby(keys, sort=False)
    out = grouped.agg(mean=("value", "mean"), mean_abs=("abs_value", "mean"), sd=("value", "std"), n=("value", "size"))
    return out.reset_index()[AGGREGATE_COLUMNS]
