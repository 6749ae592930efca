"""Fine-tuning controls of the LightningModule, by tower: which parameters a tower owns (to freeze it), fresh
weights for one tower, and a warm start from another checkpoint (typically the dense twin)."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from mot_neuro.model import MoTBackbone
from mot_neuro.module_settings import checkpoint_settings


class TowerControls:
    """Mixed into :class:`mot_neuro.lit_module.NeuroOmicsModule` (it reads ``self.encoder``)."""

    def _towers(self) -> dict[str, list[str]]:
        """Tower name -> the modalities it serves (``summary`` included)."""
        towers: dict[str, list[str]] = {}
        for modality, tower in self.encoder.backbone.cfg.towers.items():
            towers.setdefault(tower, []).append(modality)
        return towers

    def _tower_parameters(self, tower: str) -> list[nn.Parameter]:
        """The backbone's parameters of ``tower`` and the tokenizers of its modalities."""
        towers = self._towers()
        if tower not in towers:
            raise ValueError(f"unknown tower {tower!r}; this model's towers are {sorted(towers)}")
        if not self.encoder.backbone.cfg.untie:
            raise ValueError("the dense model has one shared set: there is no tower to freeze or re-initialise")
        found = []
        for name, parameter in self.encoder.backbone.named_parameters():
            parts = name.split(".")
            # blocks.<i>.<part>.<tower>.* and final_norm.<tower>.*: the tower is a fixed position in the name
            position = 3 if parts[0] == "blocks" else 1
            if len(parts) > position and parts[position] == tower:
                found.append(parameter)
        for modality in towers[tower]:
            if modality in self.encoder.tokenizers:
                found += list(self.encoder.tokenizers[modality].parameters())
        return found

    def _reinit_tower(self, tower: str) -> None:
        """Fresh weights for one tower, drawn by the backbone's own initialisation (depth-scaled)."""
        fresh = MoTBackbone(self.encoder.backbone.cfg)
        targets = {id(p) for p in self._tower_parameters(tower)}
        with torch.no_grad():
            for parameter, new in zip(self.encoder.backbone.parameters(), fresh.parameters(), strict=True):
                if id(parameter) in targets:
                    parameter.copy_(new)
        for modality in self._towers()[tower]:
            if modality in self.encoder.tokenizers:
                self.encoder.tokenizers[modality].reset_parameters()

    def _warm_start(self, path: str) -> None:
        """Start from a trained model (typically the dense twin): every tower gets a copy of its parameter set,
        so at step 0 this model computes what the source computes. Tokenizers, heads and decoders are copied."""
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        source_hparams = checkpoint_settings(checkpoint.get("hyper_parameters") or {})
        if "data_spec" not in source_hparams:
            raise ValueError(f"{path}: not a mot-neuro checkpoint (no data_spec in its hyper_parameters)")
        self.on_load_checkpoint({"hyper_parameters": source_hparams})  # same token layout, or a clear error
        accepted = set(inspect.signature(type(self).__init__).parameters) - {"self"}
        kwargs = {k: v for k, v in source_hparams.items() if k in accepted}  # drops LightningCLI's own entries
        kwargs.update(warm_start_from=None, freeze_towers=(), reinit_towers=(), compile=False)
        source = type(self)(**kwargs)
        source.load_state_dict(checkpoint["state_dict"])
        self.encoder.backbone.load_towers_from(source.encoder.backbone)
        own = self.state_dict()
        copied = {
            key: value
            for key, value in source.state_dict().items()
            if not key.startswith("encoder.backbone.") and key in own and own[key].shape == value.shape
        }
        self.load_state_dict(copied, strict=False)
