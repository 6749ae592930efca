"""What the data gives the model: :class:`DataSpec`, the typed contract between a DataModule and the model.

The DataModule builds one (``model_inputs``), the CLI links it to the model (``model.data_spec``), and the model
stores its plain form (:meth:`DataSpec.to_dict`) in checkpoints, so a checkpoint says which token layout and
targets it was trained on. Plain data only: no torch tensors, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .tokenizers import ModalitySpec

TARGET_KINDS = ("binary", "multiclass", "regression")


@dataclass(frozen=True)
class TargetSpec:
    """One prediction target.

    kind: ``binary``, ``multiclass`` or ``regression``.
    n_classes: number of classes (multiclass; 2 for binary; ``None`` for regression).
    mean, sd: the training fold's mean and standard deviation of a regression target (the model learns the
        standardized target and reports metrics in the target's units); 0 and 1 otherwise.
    coding: the raw labels of classes 0 and 1 of a binary target when they were not 0/1 (e.g. PLINK's 1/2).
    """

    kind: str
    n_classes: int | None = None
    mean: float = 0.0
    sd: float = 1.0
    coding: tuple | None = None

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise ValueError(f"target kind must be one of {list(TARGET_KINDS)}, got {self.kind!r}")
        if self.kind == "multiclass" and (self.n_classes is None or int(self.n_classes) < 2):
            raise ValueError(f"a multiclass target needs n_classes >= 2, got {self.n_classes!r}")
        if self.n_classes is not None:
            object.__setattr__(self, "n_classes", int(self.n_classes))
        object.__setattr__(self, "mean", float(self.mean))
        object.__setattr__(self, "sd", float(self.sd))
        if self.coding is not None:
            object.__setattr__(self, "coding", tuple(self.coding))

    @property
    def width(self) -> int:
        """Outputs of the target's head: one logit per class for multiclass, one value otherwise."""
        return self.n_classes if self.kind == "multiclass" else 1

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "n_classes": self.n_classes, "scale": {"mean": self.mean, "sd": self.sd}}
        if self.coding is not None:
            d["coding"] = list(self.coding)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> TargetSpec:
        unknown = sorted(set(d) - {"kind", "n_classes", "scale", "coding"})
        if unknown:
            raise ValueError(f"unknown target field(s) {unknown}")
        scale = d.get("scale") or {}
        return cls(
            kind=d["kind"],
            n_classes=d.get("n_classes"),
            mean=scale.get("mean", 0.0),
            sd=scale.get("sd", 1.0),
            coding=d.get("coding"),
        )


@dataclass(frozen=True)
class DataSpec:
    """The model's inputs and targets.

    modalities: every modality of the data config in layout order; one left out of an ablation has 0 tokens.
    targets: target name -> :class:`TargetSpec`, in the data config's order.
    fingerprint: the data's fingerprint (which cohort and preprocessing), recorded with runs and embeddings.
    """

    modalities: tuple[ModalitySpec, ...]
    targets: Mapping[str, TargetSpec] = field(default_factory=dict)
    fingerprint: str = ""

    def __post_init__(self) -> None:
        modalities = tuple(m if isinstance(m, ModalitySpec) else ModalitySpec.from_dict(m) for m in self.modalities)
        object.__setattr__(self, "modalities", modalities)
        targets = {
            str(name): t if isinstance(t, TargetSpec) else TargetSpec.from_dict(t)
            for name, t in dict(self.targets).items()
        }
        object.__setattr__(self, "targets", targets)

    @property
    def active(self) -> tuple[str, ...]:
        """Modalities with tokens (not left out)."""
        return tuple(m.name for m in self.modalities if m.n_tokens > 0)

    def token_shapes(self) -> dict[str, tuple[int, int]]:
        """Modality -> (tokens, features): what a checkpoint's weights are shaped by."""
        return {m.name: (m.n_tokens, m.n_features) for m in self.modalities}

    def to_dict(self) -> dict:
        """Plain lists, dicts, numbers and strings (checkpoint hyperparameters, JSON)."""
        return {
            "modalities": [m.to_dict() for m in self.modalities],
            "targets": {name: t.to_dict() for name, t in self.targets.items()},
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> DataSpec:
        unknown = sorted(set(d) - {"modalities", "targets", "fingerprint"})
        if unknown:
            raise ValueError(f"unknown data_spec field(s) {unknown}")
        return cls(modalities=d["modalities"], targets=d.get("targets") or {}, fingerprint=d.get("fingerprint") or "")

    @classmethod
    def of(cls, value: DataSpec | Mapping) -> DataSpec:
        """``value`` itself, or the spec its plain form (a checkpoint's ``data_spec``) describes."""
        return value if isinstance(value, DataSpec) else cls.from_dict(value)
