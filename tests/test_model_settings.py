"""Each model setting declared once: backbone options reach the encoder, the CLI, configs and checkpoints by
themselves; the data -> model contract is a typed object; checkpoints of the flat-settings versions still load."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
import torch
import yaml
from helpers import CONFIGS, DEBUG_TRAINER, EXPERIMENT, NO_LOGGER, run_main

from mot_neuro.lit_module import NeuroOmicsModule, checkpoint_settings
from mot_neuro.model import ModalityLayout, MoTBackbone, MoTConfig
from mot_neuro.model.config import MoTOptions, option_fields
from mot_neuro.model.encoder import EncoderConfig, EncoderOptions
from mot_neuro.model.inputs import DataSpec, TargetSpec
from mot_neuro.optim import OptimizerOptions

SPEC = {
    "modalities": [
        {"name": "gene", "n_tokens": 3, "n_features": 2, "feature_mask": [[True, False]] * 3, "categorical": {}},
        {"name": "brain", "n_tokens": 4, "n_features": 1, "feature_mask": [], "categorical": {}},
    ],
    "targets": {"y": {"kind": "regression", "n_classes": None, "scale": {"mean": 2.0, "sd": 3.0}}},
    "fingerprint": "abc",
}


def test_every_backbone_option_reaches_the_encoder_the_cli_and_the_checkpoint():
    """An option added to MoTOptions needs no other edit: the encoder's options extend it, the backbone config is
    built from its fields, and the module's hyperparameters and the CLI's model.encoder group list it."""
    backbone_options = option_fields(MoTOptions)
    assert set(backbone_options) <= set(option_fields(EncoderOptions))
    module = NeuroOmicsModule(data_spec=SPEC, encoder={"dim": 16, "n_heads": 2, "qk_norm": True, "dropout": 0.1})
    built = module.encoder.backbone.cfg
    for name in backbone_options:
        given = getattr(module.encoder_config, name)
        if name != "towers" and given is not None:  # the backbone completes towers (summary) and None defaults
            assert getattr(built, name) == given, name
    assert built.qk_norm and built.dim == 16 and built.dropout == 0.1
    assert set(module.hparams.encoder) == set(option_fields(EncoderOptions))


def test_print_config_lists_every_encoder_and_optimizer_option(capfd):
    status, out, err = run_main(capfd, "fit", "--config", str(EXPERIMENT), "--print_config")
    assert status == 0, err
    model = yaml.safe_load(out)["model"]
    assert list(model["encoder"]) == option_fields(EncoderOptions)
    assert model["optimizer"] == {f.name: f.default for f in fields(OptimizerOptions)}


def test_model_configs_are_deltas_of_the_defaults(capfd):
    """mot.yaml states MoT; dense.yaml and masked.yaml change one thing each, on top of any model."""
    for name in ("mot", "dense", "masked"):
        config = yaml.safe_load((CONFIGS / "model" / f"{name}.yaml").read_text())
        assert len(json.dumps(config)) < 80, name  # a choice or two, never the whole model again
    status, out, err = run_main(
        capfd, "fit", "--config", str(EXPERIMENT), "--model", str(CONFIGS / "model" / "dense.yaml"), "--print_config"
    )
    assert status == 0, err
    model = yaml.safe_load(out)["model"]
    defaults = EncoderOptions()
    assert model["encoder"]["untie"] == [] and model["encoder"]["dim"] == defaults.dim
    assert model["encoder"]["dropout"] == defaults.dropout and model["objective"] == "supervised"


def test_lightnings_own_optimizer_option_is_not_offered(capfd):
    """--optimizer would replace the module's AdamW, its no-decay groups and its schedule without a word."""
    status, _, err = run_main(capfd, "fit", "--config", str(EXPERIMENT), "--optimizer", "Adam", "--print_config")
    assert status != 0 and "--optimizer" in err


# ---------------------------------------------------------------------- the data -> model contract
def test_data_spec_round_trips_and_reads_the_plain_form_of_checkpoints():
    spec = DataSpec.from_dict(SPEC)
    assert spec.active == ("gene", "brain") and spec.token_shapes() == {"gene": (3, 2), "brain": (4, 1)}
    assert spec.targets["y"] == TargetSpec(kind="regression", mean=2.0, sd=3.0)
    assert DataSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    dropped = DataSpec.from_dict({**SPEC, "modalities": [{**SPEC["modalities"][0], "n_tokens": 0, "feature_mask": []}]})
    assert dropped.active == ()
    with pytest.raises(ValueError, match="unknown data_spec field"):
        DataSpec.from_dict({**SPEC, "subjects": []})
    with pytest.raises(ValueError, match="multiclass target needs n_classes"):
        TargetSpec(kind="multiclass")


def test_the_module_keeps_plain_settings_and_the_typed_spec():
    module = NeuroOmicsModule(data_spec=DataSpec.from_dict(SPEC), optimizer=OptimizerOptions(lr=0.01))
    assert module.data_spec == DataSpec.from_dict(SPEC) and module.targets["y"].sd == 3.0
    assert module.hparams.data_spec == DataSpec.from_dict(SPEC).to_dict()
    assert module.hparams.optimizer["lr"] == 0.01 and module.optimizer_options.lr == 0.01
    for value in module.hparams.values():  # what torch.load(weights_only=True) can read back
        assert isinstance(value, (dict, list, str, int, float, bool, type(None))), value


# ---------------------------------------------------------------------- checkpoints of older versions
# hyper_parameters as mot-neuro wrote them before the nested settings (the keys of a real checkpoint of that version)
FLAT_ENCODER = ["dim", "n_layers", "n_heads", "untie", "towers", "norm_placement", "qk_norm", "dropout"]
FLAT_ENCODER += ["projection", "n_summary_tokens", "pooling", "ffn_hidden_dims", "moe"]
FLAT_OPTIMIZER = ["lr", "weight_decay", "warmup_steps", "min_lr_ratio"]


def _flat(hparams: dict) -> dict:
    old = {key: value for key, value in hparams.items() if key not in ("encoder", "optimizer")}
    old.update({key: hparams["encoder"][key] for key in FLAT_ENCODER})
    old.update({key: hparams["optimizer"][key] for key in FLAT_OPTIMIZER})
    old["_instantiator"] = "lightning.pytorch.cli.instantiate_module"
    return old


def test_checkpoint_settings_nests_the_flat_settings_of_older_versions():
    module = NeuroOmicsModule(data_spec=SPEC, encoder={"dim": 16, "n_heads": 2}, optimizer={"lr": 0.02})
    upgraded = checkpoint_settings(_flat(dict(module.hparams)))
    # options added since take their defaults, except attention_dropout: those versions dropped attention
    # probabilities at the residual rate, which None keeps
    assert upgraded["encoder"] == {key: module.hparams.encoder[key] for key in FLAT_ENCODER} | {
        "attention_dropout": None
    }
    assert upgraded["optimizer"] == module.hparams.optimizer
    assert checkpoint_settings(dict(module.hparams)) == dict(module.hparams)  # today's form: unchanged


def test_a_checkpoint_with_flat_settings_loads_in_python_and_through_the_cli(demo_checkpoint, case):
    saved = torch.load(demo_checkpoint, weights_only=True)
    legacy = case.path("flat.ckpt")
    torch.save(dict(saved, hyper_parameters=_flat(saved["hyper_parameters"])), legacy)
    current = NeuroOmicsModule.load_from_checkpoint(demo_checkpoint).eval()
    loaded = NeuroOmicsModule.load_from_checkpoint(legacy).eval()
    assert loaded.hparams.encoder == current.hparams.encoder | {"attention_dropout": None}
    assert loaded.encoder.backbone.cfg.attention_dropout == current.hparams.encoder["dropout"] > 0
    assert loaded.hparams.optimizer == current.hparams.optimizer
    for key, value in current.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    # mot-neuro test --ckpt_path builds the model from the checkpoint's settings: the same numbers from both files
    tested = {}
    for name, path in (("current", demo_checkpoint), ("flat", legacy)):
        status, out, err = run_main(
            case.capfd,
            *("test", "--config", EXPERIMENT, "--trainer", DEBUG_TRAINER, *NO_LOGGER),
            *("--data", case.data_config(), "--ckpt_path", path),
        )
        assert status == 0, err[-3000:]
        tested[name] = [line for line in out.splitlines() if "test/target" in line]
    assert tested["flat"] == tested["current"] and tested["current"]


# ---------------------------------------------------------------------- inner layers
@pytest.mark.parametrize("placement", ["pre", "output"])
def test_backbone_stops_after_n_blocks(placement):
    """``n_blocks=k``: the output of block k (as a hook records it), absent tokens equal to their input; ``None``:
    every block and the final norm."""
    torch.manual_seed(0)
    layout = ModalityLayout.from_counts({"a": 3, "b": 5})
    model = MoTBackbone(MoTConfig(layout.names, dim=16, n_layers=3, n_heads=2, norm_placement=placement)).eval()
    x = torch.randn(2, 8, 16)
    present = torch.ones(2, 8, dtype=torch.bool)
    present[1, 6:] = False
    recorded = {}
    handles = [
        block.register_forward_hook(lambda module, args, out, i=i: recorded.__setitem__(i, out))
        for i, block in enumerate(model.blocks)
    ]
    full = model(x, layout, present)
    for handle in handles:
        handle.remove()
    token_major = model._fixed_runs(layout).dim == 0  # MoT's stream with tower ops is [S, B, D] inside the blocks
    for k in (1, 2, 3):
        inner = model(x, layout, present, n_blocks=k)
        block_out = recorded[k - 1].transpose(0, 1) if token_major else recorded[k - 1]
        expected = torch.where(present[..., None], block_out, x)
        torch.testing.assert_close(inner, expected)
    if placement == "pre":  # the final norm comes only with the full output
        assert not torch.allclose(model(x, layout, present, n_blocks=3), full)
    else:
        torch.testing.assert_close(model(x, layout, present, n_blocks=3), full)
    for bad in (0, 4, True, 1.5):
        with pytest.raises(ValueError, match="n_blocks must be None or an integer in"):
            model(x, layout, present, n_blocks=bad)


def test_encoder_config_builds_the_backbone_from_the_shared_fields():
    cfg = EncoderConfig(modalities=SPEC["modalities"], dim=16, n_heads=2, towers={"gene": "g", "brain": "g"})
    backbone = cfg.backbone_config()
    assert backbone.towers == {"summary": "summary", "gene": "g", "brain": "g"}
    assert backbone.modalities == ("summary", "gene", "brain") and backbone.dim == 16


def test_attention_dropout_an_option_added_in_the_backbone_config_alone(capfd):
    """attention_dropout was added by declaring it in model/config.py and using it in model/mot.py: the CLI, the
    encoder and the checkpoint have it with no other edit. Off by default; None keeps it equal to dropout."""
    status, out, err = run_main(
        capfd, "fit", "--config", EXPERIMENT, "--model.encoder.attention_dropout", "0.0", "--print_config"
    )
    assert status == 0, err
    assert yaml.safe_load(out)["model"]["encoder"]["attention_dropout"] == 0.0
    module = NeuroOmicsModule(data_spec=SPEC, encoder={"dim": 16, "n_heads": 2, "attention_dropout": 0.5})
    assert module.encoder.backbone.cfg.attention_dropout == 0.5 and module.hparams.encoder["attention_dropout"] == 0.5
    assert NeuroOmicsModule(data_spec=SPEC).encoder.backbone.cfg.attention_dropout == 0.0
    same = NeuroOmicsModule(data_spec=SPEC, encoder={"dropout": 0.3, "attention_dropout": None})
    assert same.encoder.backbone.cfg.attention_dropout == 0.3
    layout = ModalityLayout.from_counts({"a": 4, "b": 4})
    x = torch.randn(2, 8, 16)
    for attention_dropout, differs in ((0.0, False), (0.5, True)):
        torch.manual_seed(0)
        cfg = MoTConfig(layout.names, dim=16, n_heads=2, dropout=0.0, attention_dropout=attention_dropout)
        model = MoTBackbone(cfg).train()
        assert (not torch.equal(model(x, layout), model(x, layout))) is differs
    with pytest.raises(ValueError, match=r"attention_dropout=1.0: expected a number in \[0, 1\)"):
        MoTConfig(layout.names, attention_dropout=1.0)
