"""Command line: filter, pair, scaling, batch, kernels, sweep (batch runs on the process pool, or
on Dask with ``--scheduler``, which needs the Dask extras). The benchmark suite lives beside the
package: ``benchmarks/bench_engine.py``.

Exit status: 0 on success, 2 on a usage or input error (one line on stderr, no traceback),
1 on any other failure (also one line), 130 on Ctrl-C (after cancelling the job cleanly). A reader
that closes the output pipe early (``python -m engine kernels | head -5``) is a normal end: exit 0,
nothing on stderr.

Outputs (images, ``--csv``, ``--figure``) are checked before the input is decoded: their folder
exists and is writable, none is a folder, the input file or read-only, and no two are the same
file (each an input error, exit 2). Each is written to a temporary file in its folder and renamed
over the old one when complete: a failed run leaves an existing output as it was.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import select
import stat
import sys
import warnings

from ._errors import UsageError

USAGE_ERROR, FAILURE = 2, 1


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise UsageError(f"{self.prog}: {message}")


def _kernel(text: str):
    from . import KERNELS, parse_kernel

    if text in KERNELS:
        return KERNELS[text]
    try:
        return parse_kernel(text)
    except ValueError as e:
        if any(ch.isdigit() for ch in text):
            raise
        raise ValueError(
            f"--kernel {text!r} is neither a known kernel ({', '.join(KERNELS)}) nor kernel text ({e})"
        ) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def _build() -> argparse.ArgumentParser:
    from . import BORDERS, IMPLEMENTATIONS, MAX_PIXELS, OUTPUTS

    p = _Parser(prog="python -m engine", description="Parallel Filter Lab engine: filter images on worker processes.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def options(sp):
        sp.add_argument("--border", default="replicate", choices=list(BORDERS), help="what lies past the edge")
        sp.add_argument("--output", default="clip", choices=list(OUTPUTS), help="float -> integer mapping")
        sp.add_argument("--implementation", default="opencv", choices=list(IMPLEMENTATIONS))
        sp.add_argument("--max-pixels", type=_positive_int, default=None,
                        help=f"refuse images with more pixels (default: {MAX_PIXELS:,}, the engine's limit)")

    f = sub.add_parser("filter", help="filter one image")
    f.add_argument("input")
    f.add_argument("output_path", metavar="output")
    f.add_argument("--kernel", required=True, help="a name (see `kernels`) or weights like '1 2 1; 2 4 2; 1 2 1'")
    f.add_argument("--processes", type=_positive_int, default=None)
    options(f)

    pr = sub.add_parser("pair", help="run two filters at the same time")
    pr.add_argument("input")
    pr.add_argument("output_a")
    pr.add_argument("output_b")
    pr.add_argument("--kernels", nargs=2, required=True, metavar=("A", "B"))
    pr.add_argument("--processes", nargs=2, type=_positive_int, default=None, metavar=("N", "M"))
    pr.add_argument("--figure", default=None, metavar="PATH",
                    help="also write the results and the band timeline as one figure (.png, .svg or .pdf)")
    options(pr)

    sc = sub.add_parser("scaling", help="time one filter at several process counts: speedup, efficiency, Amdahl")
    sc.add_argument("input")
    sc.add_argument("--kernel", required=True, help="a name (see `kernels`) or weights like '1 2 1; 2 4 2; 1 2 1'")
    sc.add_argument("--processes", nargs="+", type=_positive_int, default=None, metavar="N",
                    help="process counts to time (default 1 up to twice the CPUs)")
    sc.add_argument("--repeats", type=_positive_int, default=3, help="runs per process count (the median is kept)")
    sc.add_argument("--csv", default=None, metavar="PATH", help="write every run as CSV")
    sc.add_argument("--figure", default=None, metavar="PATH",
                    help="write time, speedup and efficiency as a figure (.png, .svg or .pdf)")
    options(sc)

    bt = sub.add_parser("batch", help="filter every image in a folder (resumable; on Dask with --scheduler)")
    bt.add_argument("input_dir")
    bt.add_argument("output_dir")
    bt.add_argument("--kernel", required=True, help="a name (see `kernels`) or weights like '1 2 1; 2 4 2; 1 2 1'")
    bt.add_argument("--scheduler", default=None,
                    help="run on Dask: 'local' (a LocalCluster) or a scheduler address tcp://host:8786")
    bt.add_argument("--processes", type=_positive_int, default=None, help="without --scheduler: worker processes")
    bt.add_argument("--overwrite", action="store_true", help="redo images whose output already exists")
    options(bt)

    sub.add_parser("kernels", help="list the kernel registry with weights")
    sub.add_parser("sweep", help="remove shared-memory segments left by killed engine processes")
    return p


#: The image outputs of the commands: argparse dest -> the name the messages give it.
_IMAGE_OUTPUTS = {"output_path": "output", "output_a": "output_a", "output_b": "output_b"}
#: Every file output (images, CSV, figure): argparse dest -> the name the messages give it.
_OUTPUTS = {**_IMAGE_OUTPUTS, "csv": "--csv", "figure": "--figure"}


def _check_outputs(args) -> None:
    """Refuse, before the input is decoded, every output that cannot be written or whose
    writing would lose a file: see ``_check_output``; and two outputs that are the same file."""
    seen: dict = {}
    for dest, label in _OUTPUTS.items():
        path = getattr(args, dest, None)
        if not path:
            continue
        _check_output(label, path, args.input)
        key = _file_key(path)
        if key in seen:
            raise UsageError(f"{seen[key]} and {label} are the same file {path!r}: give each output its own name "
                             "(the second would overwrite the first)")
        seen[key] = label


def _check_output(label: str, path: str, source: str) -> None:
    """One output: its folder exists and may be written in, it is no folder, it is not the
    input file, and if it exists it is not read-only."""
    folder = os.path.dirname(os.path.realpath(path))  # a symlink's target is what gets written
    if not os.path.isdir(folder):
        raise UsageError(f"output folder {folder!r} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{label} {path!r} is a folder, not a file")
    if os.path.exists(source) and _file_key(path) == _file_key(source):  # the same inode
        raise UsageError(f"{label} {path!r} is the input file: write to another file (the input would be lost)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"output folder {folder!r} is not writable (permission denied)")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UsageError(f"{label} {path!r} is read-only (permission denied)")


def _file_key(path: str):
    """What identifies the file ``path`` names: its inode when it exists (hard links too), else
    its resolved path."""
    try:
        st = os.stat(path)
        return st.st_dev, st.st_ino
    except (OSError, ValueError):
        return os.path.realpath(path)


def _write_file(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that it is never left half-written (``_batch.write_atomic``:
    what was there stays until the new file is complete). A symlink is followed; an existing
    file keeps its permissions."""
    from ._batch import write_atomic

    target = os.path.realpath(path)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = None
    write_atomic(target, data, mode)


def _save(array, path):
    from ._image import _save_format, save_image

    _write_file(path, save_image(array, format=_save_format(path).name))


def _run(args) -> int:
    import engine

    from ._image import _save_format, check_save

    if args.command == "kernels":
        for k in engine.KERNELS.values():
            kind = "separable" if k.separable else "2-D"
            print(f"{k.name}  {k.shape[0]}x{k.shape[1]}  {kind}  {k.description}")
            for row in k.weights:
                print("    " + " ".join(f"{v:g}" for v in row))
        return 0
    if args.command == "sweep":
        from ._shm import sweep_stale

        removed = sweep_stale()
        print(f"removed {len(removed)} stale segment(s) of dead processes" + (f": {', '.join(removed)}" if removed else ""))
        return 0
    if args.command == "batch":
        return _batch(args)

    _check_outputs(args)
    images = {_IMAGE_OUTPUTS[n]: getattr(args, n) for n in _IMAGE_OUTPUTS if getattr(args, n, None)}
    for name, path in images.items():
        _save_format(path, name=name)  # a known extension, before the image is decoded
    if getattr(args, "figure", None):
        _figure_format(args.figure)
    with _quiet_fd2():
        image = engine.load_image(args.input, max_pixels=args.max_pixels)
    for name, path in images.items():  # the format holds the result (same C and dtype), before filtering
        check_save(path, image.shape[2], image.dtype, name=name)
    common = dict(border=args.border, output=args.output, implementation=args.implementation)
    if args.command == "scaling":
        return _scaling(image, args, common)
    with engine.Engine() as eng:
        if args.command == "filter":
            result = eng.filter_image(image, _kernel(args.kernel), processes=args.processes, **common)
            _save(result, args.output_path)
        else:
            ka, kb = (_kernel(k) for k in args.kernels)
            res = eng.filter_pair(image, ka, kb, processes=tuple(args.processes) if args.processes else None, **common)
            _save(res.outputs[0], args.output_a)
            _save(res.outputs[1], args.output_b)
            print(
                f"wall {res.phases.wall * 1e3:.1f} ms (copy-in {res.phases.copy_in * 1e3:.1f}, compute "
                f"{res.phases.compute * 1e3:.1f}, copy-out {res.phases.copy_out * 1e3:.1f}), "
                f"{len(res.timeline)} bands"
            )
            if args.figure:
                _write_figure(engine.plot.pair(image, res), args.figure)
    return 0


def _batch(args) -> int:
    """The ``batch`` command: one line per image as it finishes, then a summary; exit 0 when
    every image was filtered (or already done), 1 when some were bad or failed."""
    import time

    from ._batch import prepare_batch
    from ._request import FilterRequest

    request = FilterRequest([_kernel(args.kernel)], border=args.border, output=args.output,
                            implementation=args.implementation)
    batch = prepare_batch(args.input_dir, args.output_dir, request, scheduler=args.scheduler,
                          processes=args.processes, overwrite=args.overwrite, max_pixels=args.max_pixels)
    total, width = len(batch.images), len(str(len(batch.images)))
    seen: dict = {"done": [], "already": [], "bad": [], "failed": []}
    t0 = time.perf_counter()
    for o in batch.run():
        seen[o.status].append(o.name)
        tag = f"[{sum(len(v) for v in seen.values()):>{width}}/{total}]"
        print({
            "done": f"{tag} {o.name} -> {os.path.join(args.output_dir, batch.targets[o.name])} ({o.detail})",
            "already": f"{tag} {o.name}: already done",
            "bad": f"{tag} {o.name}: skipped, bad image: {o.detail}",
            "failed": f"{tag} {o.name}: failed: {o.detail}",
        }[o.status], flush=True)
    parts = [f"{len(seen['done'])} filtered", f"{len(seen['already'])} already done"]
    if seen["bad"]:
        parts.append(f"{len(seen['bad'])} skipped as bad ({', '.join(seen['bad'])})")
    if seen["failed"]:
        parts.append(f"{len(seen['failed'])} failed ({', '.join(seen['failed'])})")
    extra = f"; {batch.ignored} non-image file(s) ignored" if batch.ignored else ""
    print(f"batch: {total} image(s) in {args.input_dir}: {', '.join(parts)}{extra} "
          f"[{time.perf_counter() - t0:.1f} s]", flush=True)
    return 1 if seen["bad"] or seen["failed"] else 0


def _figure_format(path: str) -> str:
    from . import plot

    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in plot.FORMATS:
        *most, last = ("." + f for f in plot.FORMATS)
        raise UsageError(f"--figure must end in {', '.join(most)} or {last}, got {path!r}")
    return ext


def _write_figure(fig, path: str) -> None:
    from . import plot

    _write_file(path, plot.render(fig, _figure_format(path)))  # rendered first: a failure keeps the old figure
    print(f"figure written to {path}")


def _scaling(image, args, common) -> int:
    """The scaling sweep: the table on stdout, the runs as CSV and the figure on request."""
    import csv
    import dataclasses

    import engine

    with engine.Engine() as eng:
        sc = engine.measure_scaling(image, _kernel(args.kernel), processes=args.processes, repeats=args.repeats,
                                    engine=eng, **common)
    h, w = image.shape[:2]
    print(f"{sc.kernel} on {w}x{h}, {args.implementation}, median of {args.repeats} run(s) per count, "
          f"{sc.cpus} CPUs")
    print(sc)
    if args.csv:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=[fl.name for fl in dataclasses.fields(engine.ScalingRun)])
        writer.writeheader()
        writer.writerows(dataclasses.asdict(r) for r in sc.runs)
        _write_file(args.csv, text.getvalue().encode())
        print(f"runs written to {args.csv}")
    if args.figure:
        _write_figure(engine.plot.scaling(sc), args.figure)
    return 0


@contextlib.contextmanager
def _quiet_fd2():
    """Point file descriptor 2 at /dev/null: the C libraries behind the decoders (libpng and
    libtiff inside OpenCV) and Pillow's logger print their own notes on a damaged file there,
    which the one error line already covers."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def main(argv=None) -> int:
    # stderr carries one line: decoders' own notes on a damaged file (Pillow's "Corrupt EXIF
    # data", libtiff's via OpenCV) would add lines that the error message already covers.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")  # read when cv2 is first imported
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _main(argv)


def _stdout_closed() -> bool:
    """True when stdout is a pipe whose reader has gone (poll reports an error on its write end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def _main(argv) -> int:
    try:
        args = _build().parse_args(argv)
        code = _run(args)
        sys.stdout.flush()  # here, not at exit: a closed pipe must reach the handler below
        return code
    except BrokenPipeError as e:
        if not _stdout_closed():
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
            return FAILURE
        # The reader (head, less) has what it wanted. Point stdout at /dev/null so that the flush
        # at exit does not fail again (Python's documented recipe), and end normally.
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), sys.stdout.fileno())
        return 0
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_ERROR
    except (ValueError, TypeError) as e:  # validation and ImageError (a ValueError)
        print(f"error: {e}", file=sys.stderr)
        return USAGE_ERROR
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("interrupted: the job was cancelled and its workers stopped", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line, never a traceback
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return FAILURE
