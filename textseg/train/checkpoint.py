"""Deprecated alias of :mod:`textseg.artifacts` (kept for one release)."""

from textseg.artifacts import (  # noqa: F401
    BACKBONE_FORMAT, FORMAT, STEP_GLOB, VERSION, ResumeState, check_same_architecture, check_same_model,
    latest_resume_state, load_model_weights, load_state_strict, load_weights_only, mismatch_detail,
    prune_step_checkpoints, read_artifact, read_backbone_weights, read_checkpoint, rng_state, save_backbone_weights,
    save_checkpoint, set_rng_state, step_checkpoint_path, step_checkpoints, weights_checksum, write_artifact)
