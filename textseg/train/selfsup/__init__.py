"""Self-supervised grouping backbone: DINO self-distillation of a small timm ViT on images alone.

No captions and no masks: a student ViT and its teacher, an exponential moving average (EMA) of the student, see
multi-crop views of the same images (2 global and N local crops, made on the training device from a whole batch
at once). The teacher's output on each global view, centred and sharpened, is the target of the student's output on
every other view (the DINO cross-entropy). iBOT's masked-patch loss can be added (``ibot.enabled``): the student
sees the global views with some patches replaced by a learned mask token and predicts the teacher's output on
those patches.

The teacher's backbone is saved as a grouping-backbone file (``out/final.pt``,
:func:`textseg.artifacts.save_backbone_weights`) that :func:`textseg.create_model` loads as a model's
grouping backbone (``backbone.weights`` in the model config, or ``backbone_pretrained=``): its last-block keys,
grouped by k-means, are the model's regions (model ``learned-small-workbench``).

Entry points: :func:`load_selfsup_config` and :func:`pretrain_grouping` (``textseg pretrain-grouping``); the
pieces (:func:`dino_loss`, :func:`update_center`, :func:`ema_update`, :class:`MultiCrop`, :class:`DINOHead`,
:class:`SelfDistillation`, :class:`SelfSupTrainer`) are public for tests and reuse.

Modules: :mod:`.config` (the typed config), :mod:`.augment` (multi-crop, iBOT masks), :mod:`.loss` (losses, centring,
EMA), :mod:`.model` (head, ViT, student and teacher), :mod:`.trainer` (the optimizer step) and :mod:`.loop` (image
shards, resume, :func:`pretrain_grouping`).
"""

from textseg.train.selfsup.augment import MultiCrop, random_patch_masks
from textseg.train.selfsup.config import (DEFAULT_CONFIG, CropConfig, DinoLossConfig, HeadConfig, IBotConfig,
                                          SelfSupConfig, SelfSupData, SelfSupLoop, SelfSupOptim, ViTArch,
                                          load_selfsup_config)
from textseg.train.selfsup.loop import image_batches, pretrain_grouping, resolve_shards
from textseg.train.selfsup.loss import dino_loss, ema_update, masked_patch_loss, teacher_temperature, update_center
from textseg.train.selfsup.model import DINOHead, SelfDistillation, build_vit
from textseg.train.selfsup.trainer import SelfSupTrainer, no_weight_decay

__all__ = ["DEFAULT_CONFIG", "CropConfig", "DINOHead", "DinoLossConfig", "HeadConfig", "IBotConfig", "MultiCrop",
           "SelfDistillation", "SelfSupConfig", "SelfSupData", "SelfSupLoop", "SelfSupOptim", "SelfSupTrainer",
           "ViTArch", "build_vit", "dino_loss", "ema_update", "image_batches", "load_selfsup_config",
           "masked_patch_loss", "no_weight_decay", "pretrain_grouping", "random_patch_masks", "resolve_shards",
           "teacher_temperature", "update_center"]
