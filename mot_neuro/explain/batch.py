"""One batch of ``explain``: attributions of every target by every method, and the cross-modal attention, folded
into the run's streaming summaries (torch; no Lightning).

:class:`BatchExplainer` holds what does not change between batches (the model, the targets and methods, token and
feature names) and :meth:`BatchExplainer.add` takes a batch as the DataModule serves it (``values``, ``missing``,
``present`` per modality, ``row``). Nothing per subject is kept unless a ``per_subject`` sink is given (it gets
each batch's long table, :func:`mot_neuro.explain.attributions.attribution_table` plus ``feature``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from mot_neuro.explain.attributions import (
    ALL_TOKENS,
    IG,
    OCCLUSION,
    Attributions,
    attribution_table,
    explainable,
    integrated_gradients,
    occlusion,
)
from mot_neuro.explain.summary import WHOLE_TOKEN, AttentionSummary, AttributionSummary
from mot_neuro.model.attention_maps import attention_rollout, modality_attention, record_attention

METHODS = (IG, OCCLUSION)
IG_RELATIVE_TOLERANCE = 0.05
IG_ABSOLUTE_FLOOR = 1e-3
"""Completeness of Integrated Gradients: |sum of attributions - (output - baseline output)| must stay within this
share of |output - baseline output| plus the floor (outputs are on the standardised scale), for every subject."""
TOKENS_PER_FORWARD = 2**15
"""Most tokens (rows x sequence length) in one forward of Integrated Gradients' path points or of occlusion's
stacked variants: activation memory stays about this size whatever the batch, steps and token count."""
ATTENTION_BYTES = 256 * 2**20
"""Most bytes of attention probabilities held at once (all layers); larger batches are recorded in slices."""


@dataclass
class TokenNames:
    """Names of a modality's tokens and, per token, of its feature slots (for feature-level rows)."""

    tokens: list[str]
    features: dict[str, list[str]] = field(default_factory=dict)


def _rows_of(batch: Mapping, keep: torch.Tensor) -> dict:
    """The batch restricted to the rows where ``keep`` is True."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, Mapping):
            out[key] = {name: tensor[keep] for name, tensor in value.items()}
        elif isinstance(value, torch.Tensor) and value.dim() >= 1 and len(value) == len(keep):
            out[key] = value[keep]
        else:
            out[key] = value
    return out


class BatchExplainer:
    """Attributions and attention of one model over batches (see the module docstring).

    model: a ``NeuroOmicsModule`` (or anything with ``encoder`` and ``heads``).
    targets: the heads to explain (default: all).
    methods: ``integrated_gradients`` and/or ``occlusion``.
    names: modality -> :class:`TokenNames`; a modality without feature names gets no feature-level rows.
    subject_ids: cohort row -> subject ID (for the per-subject table).
    n_steps: Integrated Gradients' path points.
    attention: record cross-modal attention too.
    """

    def __init__(
        self,
        model,
        *,
        targets: Sequence[str] | None,
        methods: Sequence[str] = METHODS,
        names: Mapping[str, TokenNames],
        subject_ids: np.ndarray,
        n_steps: int = 32,
        attention: bool = True,
        per_subject: Callable[[pd.DataFrame], None] | None = None,
    ) -> None:
        self.model = model
        self.explainable = explainable(model)
        heads = list(model.heads)
        unknown = sorted(set(targets or ()) - set(heads))
        if unknown:
            raise ValueError(f"--targets {unknown} are not heads of the checkpoint's model (it has {heads})")
        self.targets = list(targets) if targets else heads
        bad = sorted(set(methods) - set(METHODS))
        if bad or not methods:
            raise ValueError(f"--methods {list(methods)}: choose from {list(METHODS)}")
        self.methods = list(dict.fromkeys(methods))
        if n_steps < 2:
            raise ValueError(f"--n_steps {n_steps}: Integrated Gradients needs at least 2 path points")
        self.n_steps = int(n_steps)
        self.names = dict(names)
        self.subject_ids = np.asarray(subject_ids, dtype=object)
        self.attention = attention
        self.per_subject = per_subject
        self.summary = AttributionSummary()
        self.attention_summary = AttentionSummary()
        self.n_subjects = 0
        self.max_ig_gap = 0.0  # largest |completeness gap| / (tolerance * |output - baseline output| + floor)

    # ------------------------------------------------------------------ per batch
    def add(self, batch: Mapping, keep: torch.Tensor | None = None) -> int:
        """Explain the batch's rows (those where ``keep`` is True); returns how many were explained."""
        if keep is not None:
            if not bool(keep.any()):
                return 0
            batch = _rows_of(batch, keep)
        rows = batch["row"].detach().cpu().numpy()
        subjects = self.subject_ids[rows]
        for target in self.targets:
            for method in self.methods:
                with torch.enable_grad():  # Lightning's predict loop runs under no_grad
                    result = self._attribute(method, batch, target, subjects)
                self._fold_in(result, batch)
        if self.attention:
            self._attend(batch)
        self.n_subjects += len(rows)
        return len(rows)

    def _attribute(self, method: str, batch: Mapping, target: str, subjects: np.ndarray) -> Attributions:
        rows_per_forward = max(1, TOKENS_PER_FORWARD // self.model.encoder.layout.seq_len)
        if method == IG:
            result = integrated_gradients(
                self.explainable,
                batch,
                target,
                n_steps=self.n_steps,
                subjects=subjects,
                internal_batch_size=rows_per_forward,
            )
            allowed = IG_RELATIVE_TOLERANCE * (result.output - result.baseline_output).abs() + IG_ABSOLUTE_FLOOR
            self.max_ig_gap = max(self.max_ig_gap, float((result.delta.abs() / allowed).max()))
            return result
        return occlusion(self.explainable, batch, target, subjects=subjects, max_rows=rows_per_forward)

    def _fold_in(self, result: Attributions, batch: Mapping) -> None:
        for modality, values in result.tokens.items():
            names = self.names.get(modality) or TokenNames([str(i) for i in range(values.shape[1])])
            present = result.present[modality]
            self.summary.add(
                modality, result.target, result.method, names.tokens, values.cpu().numpy(), present.cpu().numpy()
            )
            total = result.modalities[modality][:, None]
            # a subject with no present token the method scores (IG: only categorical ones) has no total
            # (IG's would be a 0 that is no measurement)
            scored = (present & ~torch.isnan(values)).any(1, keepdim=True)
            self.summary.add(
                modality,
                result.target,
                result.method,
                [ALL_TOKENS],
                total.cpu().numpy(),
                scored.cpu().numpy(),
                level="modality",
            )
            if result.method == IG and names.features and values.shape[1]:
                self._fold_in_features(modality, names, result, batch)
        if self.per_subject is not None:
            token_names = {m: n.tokens for m, n in self.names.items() if m in result.tokens}
            table = attribution_table(result, token_names)
            self.per_subject(table.assign(feature=WHOLE_TOKEN))

    def _fold_in_features(self, modality: str, names: TokenNames, result: Attributions, batch: Mapping) -> None:
        """IG per feature slot (e.g. per variant of a chromosome token): observed slots of present tokens."""
        spec = self.explainable.specs[modality]
        per_slot = result.features[modality]  # [B, T, F]
        missing = batch.get("missing", {}).get(modality)
        observed = torch.ones_like(per_slot, dtype=torch.bool) if missing is None else ~missing.bool()
        real = spec.numeric_slots().to(per_slot.device)[None] & observed & result.present[modality][..., None]
        slots = spec.numeric_slots().cpu().numpy()  # [T, F]: categorical tokens and padding have no feature rows
        token_index, slot_index = np.nonzero(slots)
        tokens = [names.tokens[t] for t in token_index]
        features = []
        for t, f in zip(token_index, slot_index, strict=True):
            listed = names.features.get(names.tokens[t]) or []
            features.append(listed[f] if f < len(listed) else str(f))
        values = per_slot[:, token_index, slot_index].cpu().numpy()
        keep = real[:, token_index, slot_index].cpu().numpy()
        self.summary.add(
            modality, result.target, result.method, tokens, values, keep, features=features, level="feature"
        )

    def _attend(self, batch: Mapping) -> None:
        encoder = self.model.encoder
        layout = encoder.layout
        cfg = encoder.backbone.cfg
        # [B, heads, S, S] float32 per layer: slice the batch so that all layers of a slice fit ATTENTION_BYTES
        per_row = cfg.n_layers * cfg.n_heads * layout.seq_len**2 * 4
        step = max(1, ATTENTION_BYTES // per_row)
        n = len(batch["row"])
        with self.explainable.evaluating(), torch.no_grad():
            for start in range(0, n, step):
                part = _slice(batch, start, start + step)
                with record_attention(encoder.backbone) as record:
                    present = encoder(part).present  # [B, S], summary tokens included
                shares = modality_attention(record.probs, layout, present).values  # [L, H, M, M]
                rollout = attention_rollout(record.probs, present=present)
                rolled = modality_attention(rollout, layout, present).values  # [M, M]
                # no preference: every query spreads its attention evenly over the present keys, in every layer;
                # rolled out like the model's, so that the two compare cell by cell
                even = present[:, None, :].float().expand(-1, present.shape[1], -1)
                even = (even / even.sum(-1, keepdim=True))[:, None]
                even_rollout = attention_rollout([even] * len(record.probs), present=present)
                uniform = modality_attention(even_rollout, layout, present).values  # [M, M]
                ids = layout.modality_ids(device=present.device)
                groups = ids[None, :] == torch.arange(len(layout.names), device=present.device)[:, None]  # [M, S]
                counts = (present[:, None, :] & groups[None]).sum(dim=(0, 2))
                self.attention_summary.add(
                    shares.cpu().numpy(),
                    rolled.cpu().numpy(),
                    counts.cpu().numpy(),
                    layout.names,
                    uniform=uniform.cpu().numpy(),
                )


def _slice(batch: Mapping, start: int, stop: int) -> dict:
    """Rows ``start:stop`` of a batch."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, Mapping):
            out[key] = {name: tensor[start:stop] for name, tensor in value.items()}
        elif isinstance(value, torch.Tensor) and value.dim() >= 1:
            out[key] = value[start:stop]
        else:
            out[key] = value
    return out
