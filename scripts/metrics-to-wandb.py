#!/usr/bin/env python3
"""Forward an `align` run directory's metrics and sample grids to W&B or TensorBoard.

    python3 scripts/metrics-to-wandb.py --run runs/quickstart --backend wandb \\
        [--project align] [--name quickstart] [--follow] [--poll 5]
    python3 scripts/metrics-to-wandb.py --run runs/quickstart --backend tensorboard \\
        --logdir runs/tb [--follow]
    python3 scripts/metrics-to-wandb.py --run runs/quickstart --backend print

What it reads from the run directory (`--run DIR`, written by `align train` / `align pref-train`):

- `metrics.jsonl`: one JSON object per finished iteration. Every numeric field is logged
  (nested objects are flattened to `a/b`; strings, booleans, lists and nulls — serde writes
  NaN as null — are skipped). The step is the row's `iteration` (or `step`); a row with
  neither gets the previous step + 1. Only complete lines (ending in a newline) are read, so a
  row being written is picked up on the next poll. If the file shrinks (a resumed run keeps
  its first N rows and rewrites the rest), it is re-read and rows at steps already logged are
  skipped.
- the sample grids: `grid-before.png` (step 0), `grid-iteration-NNNNNN.png` (step NNNNNN),
  `grid-after.png` (the last metrics step seen). An image is logged once it is complete
  (ends in a PNG IEND chunk).

Modes: without `--follow`, one pass over what is there, then exit. With `--follow`, poll every
`--poll` seconds (default 5) until Ctrl-C / SIGTERM or until `report.json` appears in the run directory
(then one last pass and exit); the run directory need not exist yet. Within one process nothing
is logged twice (lines by file offset / step, images by file name); a new process starts over,
so for W&B start a new run name (or delete the old run) rather than re-forwarding into one.

Backends:

- `wandb`: `wandb.init(project=--project, name=--name)`; honours `WANDB_MODE=offline` (and the
  other WANDB_* variables). Metrics are logged with `iteration` as the x-axis
  (`wandb.define_metric`), so grids arriving after later rows still land at their iteration.
  Grids are logged as `grid` (before / iterations) and `grid_after`.
- `tensorboard`: `torch.utils.tensorboard.SummaryWriter` (needs the `tensorboard` package) or,
  failing that, `tensorboardX`, writing to `--logdir` (default: DIR/tensorboard). Scalars under
  their field names; images (needs Pillow + numpy) as `grid` and `grid_after`.
- `print`: one JSON object per line on stdout (`{"kind": "metrics", "step": ..., ...}` /
  `{"kind": "image", ...}`), needs nothing.

A missing backend library prints the `pip install` line to run and exits with status 2; a bad
argument or unreadable run directory exits with status 1.
"""
import argparse
import json
import math
import os
import re
import signal
import sys
import time

PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
GRID_RE = re.compile(r"^grid-iteration-(\d+)\.png$")
PROG = "metrics-to-wandb"


def die(message, code=1):
    print(f"{PROG}: {message}", file=sys.stderr)
    sys.exit(code)


def warn(message):
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def numeric_fields(obj, prefix=""):
    """Every int/float field of a JSON object (nested objects flattened with `/`)."""
    out = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            out[name] = float(value)
        elif isinstance(value, dict):
            out.update(numeric_fields(value, name + "/"))
    return out


# ---------------------------------------------------------------- backends


class PrintBackend:
    def log_metrics(self, step, values):
        print(json.dumps({"kind": "metrics", "step": step, **values}, allow_nan=True), flush=True)

    def log_image(self, tag, path, step):
        print(json.dumps({"kind": "image", "tag": tag, "step": step, "path": path}), flush=True)

    def close(self):
        pass


class WandbBackend:
    def __init__(self, project, name, run_dir):
        try:
            import wandb
        except ImportError:
            die("the wandb backend needs wandb: pip install wandb", 2)
        self.wandb = wandb
        self.run = wandb.init(project=project, name=name, config={"run_dir": os.path.abspath(run_dir)})
        wandb.define_metric("iteration")
        wandb.define_metric("*", step_metric="iteration")

    def log_metrics(self, step, values):
        self.wandb.log({**values, "iteration": step})

    def log_image(self, tag, path, step):
        image = self.wandb.Image(path, caption=os.path.basename(path))
        self.wandb.log({tag: image, "iteration": step})

    def close(self):
        self.run.finish()


class TensorBoardBackend:
    def __init__(self, logdir):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                die("the tensorboard backend needs tensorboard (with torch) or tensorboardX: "
                    "pip install tensorboard", 2)
        self.writer = SummaryWriter(log_dir=logdir)
        self.image_warned = False

    def log_metrics(self, step, values):
        for key, value in values.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def log_image(self, tag, path, step):
        try:
            import numpy as np
            from PIL import Image
        except ImportError:
            if not self.image_warned:
                warn("images skipped: the tensorboard backend needs Pillow and numpy for them "
                     "(pip install pillow numpy)")
                self.image_warned = True
            return
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
        self.writer.add_image(tag, array, global_step=step, dataformats="HWC")
        self.writer.flush()

    def close(self):
        self.writer.close()


# ---------------------------------------------------------------- tailing


class RunTailer:
    """Reads new complete metrics lines and new finished grids of one run directory."""

    def __init__(self, run_dir, backend):
        self.run_dir = run_dir
        self.backend = backend
        self.offset = 0  # bytes of metrics.jsonl already consumed (complete lines only)
        self.inode = None
        self.last_step = None  # highest step logged so far
        self.skip_until = None  # after a shrink: skip rows with step <= this
        self.images = set()  # file names already logged
        self.line_no = 0

    def poll(self):
        self._metrics()
        self._images()

    def _metrics(self):
        path = os.path.join(self.run_dir, "metrics.jsonl")
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return
        if st.st_size < self.offset or (self.inode is not None and st.st_ino != self.inode):
            warn("metrics.jsonl shrank or was replaced (resumed run?); re-reading it, "
                 "skipping steps already logged")
            self.offset, self.line_no, self.skip_until = 0, 0, self.last_step
        self.inode = st.st_ino
        with open(path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n")
        if end < 0:
            return  # no complete new line yet
        self.offset += end + 1
        for raw in data[: end + 1].splitlines():
            self.line_no += 1
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
                if not isinstance(row, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                warn(f"metrics.jsonl line {self.line_no} skipped ({e})")
                continue
            self._row(row)

    def _row(self, row):
        values = numeric_fields(row)
        step = None
        for key in ("iteration", "step"):
            if key in values and math.isfinite(values[key]):
                step = int(values.pop(key))
                break
        if step is None:
            step = 0 if self.last_step is None else self.last_step + 1
        if self.skip_until is not None and step <= self.skip_until:
            return
        self.skip_until = None
        if values:
            self.backend.log_metrics(step, values)
        self.last_step = step if self.last_step is None else max(self.last_step, step)

    def _images(self):
        try:
            names = os.listdir(self.run_dir)
        except FileNotFoundError:
            return
        found = []
        for name in names:
            if name in self.images:
                continue
            m = GRID_RE.match(name)
            if m:
                found.append((int(m.group(1)), 1, name, "grid"))
            elif name == "grid-before.png":
                found.append((0, 0, name, "grid"))
            elif name == "grid-after.png":
                found.append((self.last_step or 0, 2, name, "grid_after"))
        for step, _, name, tag in sorted(found):
            path = os.path.join(self.run_dir, name)
            if not complete_png(path):
                continue  # still being written; next poll
            self.backend.log_image(tag, path, step)
            self.images.add(name)


def complete_png(path):
    try:
        with open(path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                return False
            f.seek(0, os.SEEK_END)
            if f.tell() < len(PNG_END) + 8:
                return False
            f.seek(-len(PNG_END), os.SEEK_END)
            return f.read() == PNG_END
    except OSError:
        return False


def main():
    parser = argparse.ArgumentParser(
        description="Forward an align run's metrics.jsonl and sample grids to W&B or TensorBoard.")
    parser.add_argument("--run", required=True, metavar="DIR", help="the run directory")
    parser.add_argument("--backend", choices=["wandb", "tensorboard", "print"], default="wandb")
    parser.add_argument("--project", default="align", help="W&B project (default: align)")
    parser.add_argument("--name", default=None, help="W&B run name (default: the run directory's name)")
    parser.add_argument("--logdir", default=None, help="TensorBoard log directory (default: DIR/tensorboard)")
    parser.add_argument("--follow", action="store_true",
                        help="keep tailing until Ctrl-C or until report.json appears")
    parser.add_argument("--poll", type=float, default=5.0, help="seconds between polls with --follow (default 5)")
    args = parser.parse_args()
    if not args.poll > 0:
        die(f"--poll must be positive, got {args.poll}")
    run_dir = args.run
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        die(f"--run {run_dir} is not a directory")
    if not args.follow and not os.path.isdir(run_dir):
        die(f"run directory {run_dir} does not exist (use --follow to wait for it)")

    if args.backend == "print":
        backend = PrintBackend()
    elif args.backend == "wandb":
        name = args.name or os.path.basename(os.path.normpath(os.path.abspath(run_dir)))
        backend = WandbBackend(args.project, name, run_dir)
    else:
        backend = TensorBoardBackend(args.logdir or os.path.join(run_dir, "tensorboard"))

    tailer = RunTailer(run_dir, backend)
    # SIGTERM stops like Ctrl-C, so the backend is closed (W&B run finished, events flushed).
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        if args.follow and not os.path.isdir(run_dir):
            print(f"{PROG}: waiting for {run_dir} to appear", file=sys.stderr)
        while True:
            done = os.path.isfile(os.path.join(run_dir, "report.json"))
            tailer.poll()  # after the check: a report means every row and grid is written
            if not args.follow or done:
                break
            time.sleep(args.poll)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
    finally:
        backend.close()
    if tailer.last_step is None and not tailer.images:
        warn(f"nothing logged: no complete metrics rows or grids in {run_dir}")


if __name__ == "__main__":
    main()
