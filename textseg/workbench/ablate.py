"""`textseg ablate`: stage-2 variants, each trained (from random weights, as the quickstart, or from one stage-1
checkpoint) and scored the same way.

Each variant is a YAML file of fields merged over the ``stage2_region`` training preset (presets: the
``ablations`` configs shipped with textseg). Finished variants (with a ``results.json``) are not recomputed, so an
interrupted run resumes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from textseg.errors import UserError


def ablate(variants: Sequence[str | Path], init: str | Path | None, data: str | Path, out: str | Path, steps: int,
           overrides: Sequence[str] = (), progress: bool = True, eval_limit: int | None = None,
           seed: int = 0) -> list[dict[str, Any]]:
    """Train and evaluate every variant (a preset name or a YAML file); returns one row per variant (also written
    to ``out/ablation.{json,md}``). ``init``: a stage-1 checkpoint every variant continues, or None to train each
    from random weights (the quickstart's recipe). Data loading is the quickstart's too (:func:`data_workers`), so
    the minutes compare."""
    from textseg.config import config_path, list_configs
    from textseg.factory import create_model
    from textseg.io import atomic_write_text
    from textseg.workbench.quickstart import (build_dev_set, data_workers, evaluate_workbench, run_stage,
                                              workbench_shards)

    data, out = Path(data), Path(out)
    if init is not None and not Path(init).is_file():
        raise UserError(f"stage-1 checkpoint {init} does not exist (train stage 1, or leave --init out to train "
                        "every variant from random weights)")
    paths = [config_path("ablations", v) for v in (variants or list_configs("ablations"))]
    dev = build_dev_set(data, seed=0, progress=progress)
    rows = []
    for path in paths:
        name = path.stem
        run = out / name
        if not (run / "eval" / "results.json").is_file():
            run_stage("stage2_region", {"out": str(run), "init": str(init) if init is not None else None,
                                        "data": {"train": workbench_shards(data), "workers": data_workers()},
                                        "seed": seed, "train": {"steps": steps}},
                      progress, variants=[path], overrides=overrides)
            model = create_model("labxy-small-workbench", checkpoint=run / "final.pt")
            evaluate_workbench(model, data, run / "eval", overlays=4, limit=eval_limit, progress=progress,
                               meta={"variant": name, "variant_file": str(path), "overrides": list(overrides)}, dev=dev)
        res = json.loads((run / "eval" / "results.json").read_text())["metrics"]
        summary = json.loads((run / "summary_rank0.json").read_text())
        rows.append({"variant": name, "mIoU": res["mIoU"], "aAcc": res["aAcc"], "mAcc": res["mAcc"],
                     "steps": summary["steps"], "minutes": summary["minutes"]})
    table = ["| variant | mIoU | aAcc | mAcc | steps | train min |", "|---|---:|---:|---:|---:|---:|"]
    table += [f"| {r['variant']} | {r['mIoU']:.2f} | {r['aAcc']:.2f} | {r['mAcc']:.2f} | {r['steps']} | {r['minutes']} |"
              for r in rows]
    atomic_write_text(out / "ablation.json", json.dumps(rows, indent=2))
    atomic_write_text(out / "ablation.md", "\n".join(table) + "\n")
    print("\n".join(table))
    return rows
