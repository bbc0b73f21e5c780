"""Training-free dense CLIP: the last block of a CLIP ViT recomputed so that its patch tokens can be read as
per-patch embeddings (SCLIP's correlative attention, NACLIP's neighbourhood attention, ProxyCLIP's proxy attention),
PAMR refinement, and the per-pixel labelling of these methods (:class:`~textseg.dense.predict.DensePredictor`)."""

from textseg.dense.attention import (DENSE_MODES, correlative_attention, dense_patch_embeddings, dino_pos_embed,
                                     neighbourhood_bias, proxy_attention)
from textseg.dense.pamr import pamr

__all__ = ["DENSE_MODES", "correlative_attention", "dense_patch_embeddings", "dino_pos_embed", "neighbourhood_bias",
           "pamr", "proxy_attention"]
