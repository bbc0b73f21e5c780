"""Referring image segmentation: mask proposals, Global-Local CLIP scoring, the best-group baseline and point
prompting; every method returns a :class:`ReferResult`."""

from textseg.ris.best_group import BestGroupReferrer
from textseg.ris.boxes import freesolo_boxes
from textseg.ris.global_local import GlobalLocalCLIP, GlobalLocalScores
from textseg.ris.hierarchy import MultiScaleProposer, merge_hierarchy
from textseg.ris.mask_files import load_mask_proposals
from textseg.ris.points import CentrePointOracle, PointGenerator, PointReferResult, PointReferrer
from textseg.ris.promptable import PromptableSegmenter, load_sam
from textseg.ris.proposals import GroupingProposer, Proposals, SamProposer, deduplicate, grouping_proposals
from textseg.ris.referrer import METHODS, Referrer
from textseg.ris.result import ReferResult

__all__ = ["BestGroupReferrer", "CentrePointOracle", "GlobalLocalCLIP", "GlobalLocalScores", "GroupingProposer",
           "METHODS", "MultiScaleProposer", "PointGenerator", "PointReferResult", "PointReferrer",
           "PromptableSegmenter", "Proposals", "ReferResult", "Referrer", "SamProposer", "deduplicate",
           "freesolo_boxes", "grouping_proposals", "load_mask_proposals", "load_sam", "merge_hierarchy"]
