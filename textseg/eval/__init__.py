"""Benchmark evaluation: one resumable runner for semantic and referring segmentation, predictor adapters,
background-score calibration and the written report.

Modules: :mod:`~textseg.eval.runner` (sample store, runner, ``evaluate_semseg``/``evaluate_ris``),
:mod:`~textseg.eval.predictors` (predictor types, Segmenter adapters), :mod:`~textseg.eval.calibration`,
:mod:`~textseg.eval.report` (results.json/results.md), :mod:`~textseg.eval.datasets` (a benchmark by name),
:mod:`~textseg.eval.diagnose` (the error decomposition: grouping and recognition ceilings, fg/bg confusion).
Protocols are :class:`textseg.config.Protocol` (re-exported here).
"""

from textseg.config import Protocol, load_protocol
from textseg.eval.datasets import run_ris_benchmark, run_semseg_benchmark
from textseg.eval.calibration import calibrate_bg_score, choose_no_target_threshold, referring_best_scores
from textseg.eval.diagnose import Diagnosis, SegmenterDiagnoser
from textseg.eval.predictors import (RISOutput, RISPredictor, SegmenterRISPredictor, SegmenterSemsegPredictor,
                                     SemsegPredictor)
from textseg.eval.report import diagnosis_markdown, fmt, summary_line
from textseg.eval.runner import SAMPLES_FILE, evaluate_ris, evaluate_semseg

__all__ = [
    "Diagnosis",
    "Protocol",
    "RISOutput",
    "RISPredictor",
    "SAMPLES_FILE",
    "SegmenterRISPredictor",
    "SegmenterDiagnoser",
    "SegmenterSemsegPredictor",
    "SemsegPredictor",
    "calibrate_bg_score",
    "diagnosis_markdown",
    "evaluate_ris",
    "evaluate_semseg",
    "fmt",
    "load_protocol",
    "run_ris_benchmark",
    "run_semseg_benchmark",
    "summary_line",
]
