"""Filter every image in a folder: resumable, bad files reported and skipped (the logic behind
``python -m engine batch IN_DIR OUT_DIR --kernel K [--scheduler tcp://...|local]``; the CLI only
parses the command line and prints the ``Outcome``s). Flow::

    caller                                          where each image is filtered
    ------                                          ----------------------------
    check folders, scheduler, processes (exit 2)
    list IN_DIR (extensions Pillow opens, sorted)
    sweep OUT_DIR's stale temp files (dead pids)
    skip images whose output is complete ------->   (nothing: reported "already done")
    without --scheduler: one process-pool Engine    load_image, eng.submit + _pool._wait (the
                                                    one filter's bands on its workers), save:
                                                    one image at a time, in this process
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

import itertools
import os
import re
import secrets
import time
from dataclasses import dataclass

from ._bands import plan_bands, take_rows
from ._errors import ImageError, WorkerError
from ._image import load_image, save_image
from ._request import FilterRequest
from ._validate import check_processes

__all__ = ["Batch", "Outcome", "prepare_batch", "list_images", "output_names", "is_complete", "process_file",
           "sweep_temps"]

_TMP = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]+$")
_KEEP_EXT = (".png", ".tif", ".tiff")


@dataclass(frozen=True)
class Outcome:
    """What became of one input image: ``done`` (``detail``: size and seconds), ``already``
    (a complete output exists), ``bad`` (``detail``: why it is not an image we can read) or
    ``failed`` (``detail``: the error)."""

    name: str
    status: str
    detail: str = ""


def _image_extensions() -> set[str]:
    """Extensions of the formats Pillow can open: not the save-only ones (``.pdf``, ``.palm``);
    ``.mpo`` is opened by the JPEG plugin, which has no extension of its own for it."""
    from PIL import Image

    formats = Image.registered_extensions()  # also loads every plugin, which fills Image.OPEN
    return {ext.lower() for ext, fmt in formats.items() if fmt in Image.OPEN or fmt == "MPO"}


def list_images(folder: str) -> tuple[list[str], int]:
    """Image files in ``folder`` (by extension, hidden files and folders excluded), sorted; and
    how many other files were ignored. A broken link or a special file with an image's name is
    listed, so that the run reports it as bad rather than leaving it out without a word."""
    exts = _image_extensions()
    images, ignored = [], 0
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or entry.is_dir():
            continue
        if os.path.splitext(entry.name)[1].lower() in exts:
            images.append(entry.name)
        else:
            ignored += 1
    return images, ignored


def output_names(names) -> dict[str, str]:
    """Input name -> output name, no two the same (letter case ignored). PNG and TIFF keep their
    name (the first of names that differ in letter case only: the others are named as below);
    other formats become PNG (lossless, 16-bit, alpha): ``a.jpg`` -> ``a.png``, or
    ``a.jpg.png`` when that is taken, or ``a.jpg-2.png``, ``a.jpg-3.png``... when that is taken
    too. Names are handed out in the order given (``list_images``: sorted), so a rerun on the
    same folder gets the same names.

    >>> output_names(["a.png", "a.jpg", "b.jpg", "c.TIF"])
    {'a.png': 'a.png', 'c.TIF': 'c.TIF', 'a.jpg': 'a.jpg.png', 'b.jpg': 'b.png'}
    >>> output_names(["a.gif", "a.jpg", "a.jpg.png"])
    {'a.jpg.png': 'a.jpg.png', 'a.gif': 'a.png', 'a.jpg': 'a.jpg-2.png'}
    """
    out, taken = {}, set()
    for n in names:
        if os.path.splitext(n)[1].lower() in _KEEP_EXT and n.lower() not in taken:
            out[n] = n
            taken.add(n.lower())
    for n in names:
        if n in out:
            continue
        candidates = itertools.chain([os.path.splitext(n)[0] + ".png", n + ".png"],
                                     (f"{n}-{i}.png" for i in itertools.count(2)))
        out[n] = next(c for c in candidates if c.lower() not in taken)
        taken.add(out[n].lower())
    return out


def is_complete(out_path: str, in_path: str) -> bool:
    """An output counts as done when it decodes as an image of the size ``load_image`` gives
    the input: its header's, sides swapped by an EXIF orientation of 5-8 (Pillow reads the
    headers and, for PNG, checks every chunk's CRC without decompressing the pixels). Only
    regular files (or links to them) are opened: anything else there is not done."""
    from PIL import Image

    from ._image import _loaded_size

    if not (os.path.isfile(out_path) and os.path.isfile(in_path)):  # opening a FIFO would wait for a writer
        return False
    try:
        with Image.open(out_path) as out:
            size = out.size
            out.verify()
        return _loaded_size(in_path) == size
    except Exception:  # noqa: BLE001 - anything unreadable is not done
        return False


def _tmp_path(out_path: str) -> str:
    folder, name = os.path.split(out_path)
    return os.path.join(folder, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def write_atomic(path: str, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` so that it is never left half-written: into a temporary file
    in the same folder (``_tmp_path``: ``sweep_temps`` finds those of a killed run), synced,
    given ``mode`` if one is named, and renamed over ``path`` once complete."""
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_atomic(image, out_path: str) -> None:
    write_atomic(out_path, save_image(image, None, format="TIFF" if out_path.lower().endswith((".tif", ".tiff")) else "PNG"))


def sweep_temps(folder: str) -> list[str]:
    """Remove temp files of batch runs whose process is gone (a killed run)."""
    from ._shm import sweep_dead_owners

    def owner(name):
        m = _TMP.match(name)
        return int(m.group(1)) if m else None

    return sweep_dead_owners(folder, os.listdir(folder), owner)


def process_file(in_path, out_path, request, max_pixels=None) -> tuple:
    """One image, start to finish, in one process (a Dask worker): load, filter with the band
    kernel on the one-band plan (bit-identical to the process-pool engine), save atomically.
    Returns ``(shape, seconds)``; raises ``ImageError`` for a bad input."""
    import numpy as np

    from ._dask_worker import block_range, filter_block
    from ._options import BORDER

    t0 = time.perf_counter()
    image = request.check_image(load_image(in_path, max_pixels=max_pixels))
    (kernel,) = request.kernels
    border, output, impl = request.border, request.output, request.implementation
    h = image.shape[0]
    (band,) = plan_bands(h, kernel.shape[0], 1, wrap=BORDER[border].wraps)
    block = take_rows(image, band, h)
    vr = block_range(block, band, kernel, border, impl) if output == "normalize" else None
    result = np.ascontiguousarray(filter_block(block, band, kernel, border, output, impl, vr))
    _write_atomic(result, out_path)
    return image.shape, time.perf_counter() - t0


def _process_task(*args) -> tuple:
    """``process_file`` on a worker, with a bad image as a result rather than a failed task
    (which the worker would log as an error)."""
    try:
        return ("done",) + process_file(*args)
    except ImageError as e:
        return ("bad", str(e))


def _check_scheduler(scheduler):
    if scheduler is None:
        return None
    if not isinstance(scheduler, str) or (scheduler != "local" and "://" not in scheduler):
        raise ValueError(f"scheduler must be 'local' or a Dask scheduler address like tcp://host:8786, got {scheduler!r}")
    from ._dask import _dask

    try:
        _dask()
    except ImportError as e:
        raise ValueError(f"scheduler {scheduler}: {e}") from None
    return scheduler


@dataclass(frozen=True)
class Batch:
    """A validated batch: ``images`` (input names, sorted), ``targets`` (input -> output name),
    ``ignored`` (non-image files). ``run()`` filters them and yields an ``Outcome`` per image as
    it finishes."""

    in_dir: str
    out_dir: str
    request: FilterRequest
    images: tuple
    targets: dict
    ignored: int
    scheduler: object = None
    processes: int | None = None
    overwrite: bool = False
    max_pixels: int | None = None

    def run(self):
        todo = []
        for n in self.images:
            out = os.path.join(self.out_dir, self.targets[n])
            if not self.overwrite and os.path.exists(out) and is_complete(out, os.path.join(self.in_dir, n)):
                yield Outcome(n, "already")
            else:
                todo.append(n)
        if todo:
            yield from (self._on_pool(todo) if self.scheduler is None else self._on_dask(todo))

    def _paths(self, n):
        return os.path.join(self.in_dir, n), os.path.join(self.out_dir, self.targets[n])

    def _on_pool(self, todo):
        """Without a scheduler: the process-pool engine, one image at a time, bands in parallel."""
        from ._pool import Engine

        with Engine() as eng:
            for n in todo:
                src, dst = self._paths(n)
                t = time.perf_counter()
                try:
                    image = load_image(src, max_pixels=self.max_pixels)
                    result = _wait_one(eng, image, self.request, self.processes)
                    _write_atomic(result, dst)
                except ImageError as e:
                    yield Outcome(n, "bad", str(e))
                except (OSError, ValueError, WorkerError) as e:  # the engine replaces a dead worker: go on
                    yield Outcome(n, "failed", f"{type(e).__name__}: {e}")
                else:
                    yield Outcome(n, "done", f"{image.shape[1]}x{image.shape[0]}, {time.perf_counter() - t:.2f} s")

    def _on_dask(self, todo):
        """With a scheduler: one task per image on the workers, a bounded number in flight."""
        from distributed import as_completed

        from ._dask import _cluster_threads, _session

        with _session(self.scheduler) as client:
            window = 2 * _cluster_threads(client)
            queue = list(todo)
            names, inflight = {}, {}
            running = as_completed(loop=client.loop, with_results=False)

            def submit():
                n = queue.pop(0)
                fut = client.submit(_process_task, *self._paths(n), self.request, self.max_pixels, pure=False,
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
                    if exc is not None:
                        yield Outcome(n, "failed", f"{type(exc).__name__}: {exc}")
                    else:
                        res = fut.result()
                        if res[0] == "bad":
                            yield Outcome(n, "bad", res[1])
                        else:
                            shape, secs = res[1:]
                            yield Outcome(n, "done", f"{shape[1]}x{shape[0]}, {secs:.2f} s")
                    fut.release()
                    if queue:
                        submit()
            except BaseException:  # Ctrl-C included: stop the cluster's work on our images
                running.clear()
                if inflight:
                    client.cancel(list(inflight.values()))
                raise


def _wait_one(eng, image, request, processes):
    from ._pool import _wait

    return _wait(eng.submit(image, request, processes=processes)).outputs[0]


def prepare_batch(in_dir, out_dir, request: FilterRequest, *, scheduler=None, processes=None, overwrite=False,
                  max_pixels=None) -> Batch:
    """Check a batch before any work: the folders, the scheduler, ``processes``; create
    ``out_dir``, sweep the temp files of killed runs from it, and list the images.

    Raises
    ------
    FileNotFoundError, ValueError, TypeError
        The input folder is missing, the output folder is the input folder, ``scheduler`` is not
        'local' or an address (or Dask is missing), or ``processes`` was given with a scheduler
        or is not an integer from 1 to the engine's ``max_workers`` (twice the CPUs).
    """
    in_abs, out_abs = os.path.abspath(in_dir), os.path.abspath(out_dir)
    if not os.path.isdir(in_abs):
        raise FileNotFoundError(f"input folder {os.fspath(in_dir)!r} does not exist")
    if os.path.realpath(in_abs) == os.path.realpath(out_abs):
        raise ValueError("output folder must differ from the input folder (outputs would overwrite inputs)")
    if len(request.kernels) != 1:
        raise ValueError(f"a batch runs one kernel, got {len(request.kernels)}")
    scheduler = _check_scheduler(scheduler)
    if scheduler is not None and processes is not None:
        raise ValueError("processes is for the process-pool engine; with a scheduler the cluster's workers run the images")
    if processes is not None:
        from ._pool import default_max_workers

        (processes,) = check_processes(processes, 1, default_max_workers(), (1,))
    os.makedirs(out_abs, exist_ok=True)
    sweep_temps(out_abs)
    names, ignored = list_images(in_abs)
    return Batch(in_abs, out_abs, request, tuple(names), output_names(names), ignored, scheduler, processes,
                 overwrite, max_pixels)
