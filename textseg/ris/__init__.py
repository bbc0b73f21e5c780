"""Referring image segmentation: mask proposals, Global-Local CLIP scoring, and point prompting."""

from textseg.ris.global_local import GlobalLocalCLIP, GlobalLocalScores, freesolo_boxes
from textseg.ris.points import CentrePointOracle, PointGenerator, PointReferResult, PointReferrer
from textseg.ris.promptable import PromptableSegmenter, load_sam
from textseg.ris.proposals import (GroupingProposer, Proposals, SamProposer, deduplicate, grouping_proposals,
                                   load_mask_proposals)
from textseg.ris.referrer import METHODS, Referrer, ReferResult

__all__ = ["CentrePointOracle", "GlobalLocalCLIP", "GlobalLocalScores", "GroupingProposer", "METHODS",
           "PointGenerator", "PointReferResult", "PointReferrer", "PromptableSegmenter", "Proposals", "ReferResult",
           "Referrer", "SamProposer", "deduplicate", "freesolo_boxes", "grouping_proposals", "load_mask_proposals",
           "load_sam"]
