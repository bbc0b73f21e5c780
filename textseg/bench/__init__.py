"""Speed and memory benchmarks, run on demand (never as timed tests): ``textseg bench segment|train|memory|refer``.

One job per module: :mod:`~textseg.bench.timing` (machine, versions, peak memory, device synchronisation,
:class:`StageTimeline`, FLOP counting), :mod:`~textseg.bench.segment` (:meth:`Segmenter.predict_batch
<textseg.Segmenter.predict_batch>` per stage, the text cache cold and warm), :mod:`~textseg.bench.train` (the
training step against a plain open_clip step; :func:`training_step_seconds`), :mod:`~textseg.bench.memory` (peak
memory of ``textseg segment``), :mod:`~textseg.bench.refer` (referring segmentation over N proposals) and
:mod:`~textseg.bench.report` (Markdown tables, :func:`write_report`).
"""

from textseg.bench.memory import bench_segment_memory, parse_memory_case, synthetic_photo
from textseg.bench.refer import bench_refer
from textseg.bench.report import (memory_markdown, refer_markdown, segment_markdown, train_markdown,
                                  write_report)
from textseg.bench.segment import (SEGMENT_FRAMES, SEGMENT_GAPS, STAGE_HELP, STAGES, bench_segment,
                                   bench_segment_cold_warm, bench_segment_stages, crops_per_image, instrument)
from textseg.bench.timing import (AMP_CHOICES, StageTimeline, count_flops, machine_info, peak_rss_mb,
                                  resolve_amp, versions)
from textseg.bench.train import bench_train, synthetic_captions, training_step_seconds

__all__ = ["AMP_CHOICES", "SEGMENT_FRAMES", "SEGMENT_GAPS", "STAGES", "STAGE_HELP", "StageTimeline", "bench_refer",
           "bench_segment", "bench_segment_cold_warm", "bench_segment_memory", "bench_segment_stages", "bench_train",
           "count_flops", "crops_per_image", "instrument", "machine_info", "memory_markdown", "parse_memory_case",
           "peak_rss_mb", "refer_markdown", "resolve_amp", "segment_markdown", "synthetic_captions",
           "synthetic_photo", "train_markdown", "training_step_seconds", "versions", "write_report"]
