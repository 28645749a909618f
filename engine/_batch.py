"""``python -m engine batch IN_DIR OUT_DIR --kernel K [--scheduler tcp://...|local]``.

Filters every image in a folder; resumable; bad files are reported and skipped. Flow::

    caller                                          where each image is filtered
    ------                                          ----------------------------
    list IN_DIR (image extensions, sorted)
    sweep OUT_DIR's stale temp files (dead pids)
    skip images whose output is complete ------->   (nothing: reported "already done")
    without --scheduler: one process-pool Engine    load -> engine.filter_image -> save
                                                    in this process, bands on its workers
    with --scheduler: one task per image, at most   on a Dask worker: load_image, the band
      2 per worker thread in flight ------------->  kernel on the one-band plan, save
    print one line per image as it finishes
    summary line; exit 0 / 1 (bad or failed) / 2

Every output is written as ``OUT_DIR/.NAME.tmp-PID-XXXX``, flushed to disk and renamed onto
its final name, so a final name always holds a complete image: a killed run leaves at most
temp files (swept by the next run), and the next run redoes only what has no final output.
With a Dask cluster the workers read IN_DIR and write OUT_DIR themselves: on a real cluster
both must be on storage every worker sees under the same paths.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from dataclasses import dataclass

__all__ = ["run_batch_cli", "list_images", "output_names", "is_complete", "process_file", "sweep_temps"]

_TMP = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]+$")
_KEEP_EXT = (".png", ".tif", ".tiff")


@dataclass
class _Outcome:
    name: str
    status: str  # "done", "already", "bad", "failed"
    detail: str = ""


def _image_extensions() -> set[str]:
    from PIL import Image

    return {ext.lower() for ext in Image.registered_extensions()}


def list_images(folder: str) -> tuple[list[str], int]:
    """Image files in ``folder`` (by extension, hidden files excluded), sorted; and how many
    other files were ignored."""
    exts = _image_extensions()
    images, ignored = [], 0
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if os.path.splitext(entry.name)[1].lower() in exts:
            images.append(entry.name)
        else:
            ignored += 1
    return images, ignored


def output_names(names) -> dict[str, str]:
    """Input name -> output name. PNG and TIFF keep their name; other formats become PNG
    (lossless, 16-bit, alpha): ``a.jpg`` -> ``a.png``, or ``a.jpg.png`` when that is taken.

    >>> output_names(["a.png", "a.jpg", "b.jpg", "c.TIF"])
    {'a.png': 'a.png', 'c.TIF': 'c.TIF', 'a.jpg': 'a.jpg.png', 'b.jpg': 'b.png'}
    """
    out = {n: n for n in names if os.path.splitext(n)[1].lower() in _KEEP_EXT}
    taken = {n.lower() for n in out}
    for n in names:
        if n in out:
            continue
        cand = os.path.splitext(n)[0] + ".png"
        if cand.lower() in taken:
            cand = n + ".png"
        out[n] = cand
        taken.add(cand.lower())
    return out


def is_complete(out_path: str, in_path: str) -> bool:
    """An output counts as done when it decodes as an image of the input's size (Pillow reads
    the headers and, for PNG, checks every chunk's CRC without decompressing the pixels)."""
    from PIL import Image

    try:
        with Image.open(out_path) as out:
            size = out.size
            out.verify()
        with Image.open(in_path) as src:
            return src.size == size
    except Exception:  # noqa: BLE001 - anything unreadable is not done
        return False


def _tmp_path(out_path: str) -> str:
    folder, name = os.path.split(out_path)
    return os.path.join(folder, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def _write_atomic(image, out_path: str) -> None:
    from . import save_image

    tmp = _tmp_path(out_path)
    try:
        data = save_image(image, None, format="TIFF" if out_path.lower().endswith((".tif", ".tiff")) else "PNG")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def sweep_temps(folder: str) -> list[str]:
    """Remove temp files of batch runs whose process is gone (a killed run)."""
    from ._shm import sweep_dead_owners

    def owner(name):
        m = _TMP.match(name)
        return int(m.group(1)) if m else None

    return sweep_dead_owners(folder, os.listdir(folder), owner)


def process_file(in_path, out_path, kernel, border, output, implementation, max_pixels=None) -> tuple:
    """One image, start to finish, in one process (a Dask worker): load, filter with the band
    kernel on the one-band plan (bit-identical to the process-pool engine), save atomically.
    Returns ``(shape, seconds)``; raises ``ImageError`` for a bad input."""
    import numpy as np

    from . import load_image
    from ._bands import plan_bands
    from ._dask import block_range, filter_block, take_rows
    from ._validate import check_python_size

    t0 = time.perf_counter()
    image = load_image(in_path, max_pixels=max_pixels)
    check_python_size(image, implementation)
    h = image.shape[0]
    (band,) = plan_bands(h, kernel.shape[0], 1, wrap=border == "wrap")
    block = take_rows(image, band, h)
    vr = block_range(block, band, kernel, border, implementation) if output == "normalize" else None
    result = np.ascontiguousarray(filter_block(block, band, kernel, border, output, implementation, vr))
    _write_atomic(result, out_path)
    return image.shape, time.perf_counter() - t0


def _process_task(*args) -> tuple:
    """``process_file`` on a worker, with a bad image as a result rather than a failed task
    (which the worker would log as an error)."""
    from . import ImageError

    try:
        return ("done",) + process_file(*args)
    except ImageError as e:
        return ("bad", str(e))


def _check_scheduler_arg(scheduler):
    if scheduler is None:
        return None
    if scheduler != "local" and "://" not in scheduler:
        raise ValueError(f"--scheduler must be 'local' or a Dask scheduler address like tcp://host:8786, got {scheduler!r}")
    from ._dask import _dask

    try:
        _dask()
    except ImportError as e:
        raise ValueError(f"--scheduler {scheduler}: {e}") from None
    return scheduler


def run_batch_cli(args) -> int:
    """The ``batch`` command; returns the exit status (0 all good, 1 some skipped or failed)."""
    from ._cli import UsageError, _kernel
    from ._validate import check_choice
    from . import BORDERS, IMPLEMENTATIONS, OUTPUTS

    in_dir, out_dir = os.path.abspath(args.input_dir), os.path.abspath(args.output_dir)
    if not os.path.isdir(in_dir):
        raise UsageError(f"input folder {args.input_dir!r} does not exist")
    if os.path.realpath(in_dir) == os.path.realpath(out_dir):
        raise UsageError("output folder must differ from the input folder (outputs would overwrite inputs)")
    kernel = _kernel(args.kernel)
    check_choice(args.border, "--border", BORDERS)
    check_choice(args.output, "--output", OUTPUTS)
    check_choice(args.implementation, "--implementation", IMPLEMENTATIONS)
    scheduler = _check_scheduler_arg(args.scheduler)
    if scheduler is not None and args.processes is not None:
        raise UsageError("--processes is for the process-pool engine; with --scheduler the cluster's workers run the images")
    os.makedirs(out_dir, exist_ok=True)
    sweep_temps(out_dir)

    names, ignored = list_images(in_dir)
    targets = output_names(names)
    total = len(names)
    outcomes: list[_Outcome] = []
    width = len(str(total))

    def report(o: _Outcome):
        outcomes.append(o)
        tag = f"[{len(outcomes):>{width}}/{total}]"
        line = {
            "done": f"{tag} {o.name} -> {os.path.join(args.output_dir, targets[o.name])} ({o.detail})",
            "already": f"{tag} {o.name}: already done",
            "bad": f"{tag} {o.name}: skipped, bad image: {o.detail}",
            "failed": f"{tag} {o.name}: failed: {o.detail}",
        }[o.status]
        print(line, flush=True)

    todo = []
    for n in names:
        if not args.overwrite and os.path.exists(os.path.join(out_dir, targets[n])) and \
                is_complete(os.path.join(out_dir, targets[n]), os.path.join(in_dir, n)):
            report(_Outcome(n, "already"))
        else:
            todo.append(n)
    opts = dict(border=args.border, output=args.output, implementation=args.implementation)
    t0 = time.perf_counter()
    if todo:
        if scheduler is None:
            _run_pool(in_dir, out_dir, todo, targets, kernel, opts, args, report)
        else:
            _run_dask(in_dir, out_dir, todo, targets, kernel, opts, args, scheduler, report)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "already", "bad", "failed")}
    parts = [f"{counts['done']} filtered", f"{counts['already']} already done"]
    if counts["bad"]:
        parts.append(f"{counts['bad']} skipped as bad ({', '.join(o.name for o in outcomes if o.status == 'bad')})")
    if counts["failed"]:
        parts.append(f"{counts['failed']} failed ({', '.join(o.name for o in outcomes if o.status == 'failed')})")
    extra = f"; {ignored} non-image file(s) ignored" if ignored else ""
    print(f"batch: {total} image(s) in {args.input_dir}: {', '.join(parts)}{extra} "
          f"[{time.perf_counter() - t0:.1f} s]", flush=True)
    return 1 if counts["bad"] or counts["failed"] else 0


def _run_pool(in_dir, out_dir, todo, targets, kernel, opts, args, report):
    """Without a scheduler: the process-pool engine, one image at a time, bands in parallel."""
    from . import Engine, ImageError, WorkerError, load_image

    with Engine() as eng:
        for n in todo:
            t = time.perf_counter()
            try:
                image = load_image(os.path.join(in_dir, n), max_pixels=args.max_pixels)
                result = eng.filter_image(image, kernel, processes=args.processes, **opts)
                _write_atomic(result, os.path.join(out_dir, targets[n]))
            except ImageError as e:
                report(_Outcome(n, "bad", str(e)))
            except (OSError, ValueError, WorkerError) as e:  # the engine replaces a dead worker: go on
                report(_Outcome(n, "failed", f"{type(e).__name__}: {e}"))
            else:
                report(_Outcome(n, "done", f"{image.shape[1]}x{image.shape[0]}, {time.perf_counter() - t:.2f} s"))


def _run_dask(in_dir, out_dir, todo, targets, kernel, opts, args, scheduler, report):
    """With a scheduler: one task per image on the workers, a bounded number in flight."""
    from distributed import as_completed

    from ._dask import _cluster_threads, _session

    with _session(scheduler) as client:
        window = 2 * _cluster_threads(client)
        queue = list(todo)
        names, inflight = {}, {}
        running = as_completed(loop=client.loop, with_results=False)

        def submit():
            n = queue.pop(0)
            fut = client.submit(_process_task, os.path.join(in_dir, n), os.path.join(out_dir, targets[n]), kernel,
                                opts["border"], opts["output"], opts["implementation"], args.max_pixels, pure=False,
                                key=f"pfl-batch-{n}-{secrets.token_hex(4)}")
            names[fut.key] = n
            inflight[fut.key] = fut
            running.add(fut)

        try:
            for _ in range(min(window, len(queue))):
                submit()
            for fut in running:
                n = names.pop(fut.key)
                inflight.pop(fut.key, None)
                exc = fut.exception()
                if exc is None:
                    res = fut.result()
                    if res[0] == "bad":
                        report(_Outcome(n, "bad", res[1]))
                    else:
                        shape, secs = res[1:]
                        report(_Outcome(n, "done", f"{shape[1]}x{shape[0]}, {secs:.2f} s"))
                else:
                    report(_Outcome(n, "failed", f"{type(exc).__name__}: {exc}"))
                fut.release()
                if queue:
                    submit()
        except BaseException:  # Ctrl-C included: stop the cluster's work on our images
            running.clear()
            if inflight:
                client.cancel(list(inflight.values()))
            raise
