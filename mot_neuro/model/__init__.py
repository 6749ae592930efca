"""Pure-PyTorch model code: no Lightning, pandas or MLflow here, so it grafts into any stack."""

from .accounting import count_parameters, training_flops
from .encoder import SUMMARY, EncoderConfig, EncoderOutput, NeuroOmicsEncoder, dense_twin_config, masked_mean
from .layout import PAD_ID, ModalityLayout, group_tokens, masks_to_ids
from .mot import PARTS, SHARED, MoESwiGLU, MoTBackbone, MoTBlock, MoTConfig, RouterStats, SwiGLU
from .tokenizers import ModalityDecoder, ModalitySpec, ModalityTokenizer

__all__ = [
    "PAD_ID",
    "PARTS",
    "SHARED",
    "ModalityLayout",
    "MoTBackbone",
    "MoTBlock",
    "MoTConfig",
    "SwiGLU",
    "count_parameters",
    "group_tokens",
    "masks_to_ids",
    "training_flops",
    "SUMMARY",
    "EncoderConfig",
    "EncoderOutput",
    "ModalityDecoder",
    "ModalitySpec",
    "ModalityTokenizer",
    "NeuroOmicsEncoder",
    "dense_twin_config",
    "masked_mean",
    "MoESwiGLU",
    "RouterStats",
]
