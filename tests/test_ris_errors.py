"""The referring outcome breakdown and the proposal oracle, on hand-made instances."""

import numpy as np
import pytest

from textseg.eval.ris_errors import OUTCOMES, classify_outcome, proposal_oracle, summarize_outcomes


def box(y0, y1, x0, x1, shape=(20, 30)):
    m = np.zeros(shape, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


# target: dog 1 (category 18); another dog 2 (18); a bus 3 (6)
DOG1, DOG2, BUS = box(2, 10, 2, 10), box(2, 10, 12, 20), box(12, 20, 0, 30)
INSTANCES = [(1, 18, DOG1), (2, 18, DOG2), (3, 6, BUS)]


@pytest.mark.parametrize("pred, want", [
    (DOG1, "hit"),
    (box(2, 6, 2, 10), "hit"),             # IoU 0.5 exactly is a hit
    (box(2, 5, 2, 10), "poor_mask"),       # 3 of 8 rows of the target
    (box(0, 14, 0, 11), "poor_mask"),      # target in a larger box (IoU 64/154), touching the bus a little
    (DOG2, "wrong_instance"),
    (box(2, 10, 13, 20), "wrong_instance"),
    (BUS, "wrong_kind"),
    (box(0, 2, 0, 30), "wrong_kind"),      # background only
    (None, "no_mask"),
])
def test_classify_outcome(pred, want):
    assert classify_outcome(pred, 1, INSTANCES) == want


def test_a_tie_between_target_and_another_instance_counts_as_poor_mask():
    both = DOG1 | DOG2
    both[0, :] = True  # IoU 64/158 with either dog
    assert classify_outcome(both, 1, INSTANCES) == "poor_mask"


def test_classify_outcome_needs_the_target_among_the_instances():
    with pytest.raises(ValueError, match="target annotation 9"):
        classify_outcome(DOG1, 9, INSTANCES)


def test_proposal_oracle():
    props = np.stack([DOG2, box(2, 6, 2, 10), BUS])
    assert proposal_oracle(props, DOG1) == pytest.approx(0.5)
    assert proposal_oracle(np.zeros((0, 20, 30), bool), DOG1) == 0.0


def test_summarize_outcomes():
    rows = [{"outcome": "hit", "oracle": 1.0, "n_proposals": 10}, {"outcome": "wrong_kind", "oracle": 0.5,
                                                                   "n_proposals": 20},
            {"outcome": "hit"}, {"no_mask": True}]
    out = summarize_outcomes(rows)
    assert out["outcomes"]["n"] == 3
    assert out["outcomes"]["hit"] == pytest.approx(200 / 3) and out["outcomes"]["wrong_kind"] == pytest.approx(100 / 3)
    assert sum(out["outcomes"][k] for k in OUTCOMES) == pytest.approx(100)
    assert out["proposal_oracle"] == pytest.approx(75.0) and out["proposals_per_sentence"] == pytest.approx(15.0)
    assert summarize_outcomes([{"I": 1}]) == {}
