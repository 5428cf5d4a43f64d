"""One worker of a distributed training run, in a process of its own
(``python -m lab_utils.training.distributed_child SPEC``).

:func:`lab_utils.training.distributed.run_worker` starts it from a barrier task with
``TF_CONFIG`` in the environment. It unpickles the training function and its context, runs
it, and writes the worker's result (losses, the weights' checksum, its speed) as JSON; rank 0
also saves the trained model in the lab's saved-model format. A fresh process per run is the
point: TensorFlow configures its collective ops once per process.
"""

from __future__ import annotations

import pickle
import sys
import time
from pathlib import Path

from lab_utils.common.saved_model import save_model
from lab_utils.training.distributed import WorkerResult, weights_checksum, write_json


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = pickle.loads(Path(argv[0]).read_bytes())  # noqa: S301 - written by our parent
    ctx = spec["ctx"]
    started = time.perf_counter()
    out = spec["train_fn"](ctx)
    model, losses = out["model"], [float(v) for v in out["losses"]]
    seconds = float(out.get("seconds", time.perf_counter() - started))
    start_step = int(out.get("start_step", 0))
    saved = ""
    if ctx.rank == 0 and spec["model_dir"]:
        meta = {"name": model.name, "workers": ctx.workers, "steps": start_step + len(losses),
                **spec["model_meta"]}
        saved = str(save_model(model, meta, spec["model_dir"]))
    steps = len(losses)
    timed = int(out.get("timed_steps", steps))  # steps inside ``seconds``
    result = WorkerResult(rank=ctx.rank, workers=ctx.workers, attempt=ctx.attempt,
                          start_step=start_step, steps=steps, losses=losses,
                          checksum=weights_checksum([w.numpy() for w in model.weights]),
                          seconds=0.0, train_seconds=round(seconds, 3),
                          steps_per_s=round(timed / seconds, 3) if seconds > 0 else 0.0,
                          saved=saved, extra=dict(out.get("extra") or {}))
    write_json(spec["out"], result.__dict__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
