"""``lossviz`` command line.

``lossviz demo`` trains a small network on the digits data bundled with scikit-learn and
writes an HTML report of its Hessian spectrum.

Every argument is checked before any work starts; a bad one, or a lossviz input error
during the run, is one line on stderr (``lossviz: error: ...``) and exit status 2. Ctrl-C
is one line and exit status 130, and leaves no report behind (the report is written to a
temporary file in the same directory and renamed). ``--quiet`` prints nothing at all.
``python -m lossviz`` is the same command.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from . import validate
from .errors import ArgumentTypeError, LossvizError

PROG = "lossviz"
#: the PCA plane of the training path needs 3 checkpoints: the start, one on the way, the end
MIN_STEPS = 2
EXIT_USAGE = 2  # a bad argument or a lossviz input error (argparse's convention)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


def _section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"


def _one_line(text: str) -> str:
    return "; ".join(s.strip() for s in str(text).splitlines() if s.strip())


def _as_int(value, name: str, *, low: int, high: int | None = None) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ArgumentTypeError(f"{name} must be an integer, got {value!r}") from None
    return validate.integer(value, name, low=low, high=high)


def _check_device(value, name: str, cli: bool) -> torch.device:
    if isinstance(value, str):
        value = value.strip()
    if cli:
        try:
            torch.device(value)
        except (RuntimeError, TypeError, ValueError):
            raise LossvizError(
                f"{name} {value!r} is not a device; use cpu, cuda, cuda:N or mps"
            ) from None
    try:
        dev = validate.device(value, name)
    except LossvizError as e:
        if not cli:
            raise
        raise type(e)(str(e).replace("use device='cpu'", "use --device cpu")) from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise LossvizError(f"{name} {str(dev)!r}: the demo runs on cpu, cuda or mps")
    return dev


def _check_out(out, name: str) -> Path:
    """The report's path, once its directory is known to exist and take a new file."""
    if not isinstance(out, (str, os.PathLike)) or not str(out).strip():
        raise ArgumentTypeError(f"{name} must be a file name such as 'lossviz-report.html'")
    path = Path(out).expanduser()
    if path.is_dir():
        raise LossvizError(f"{name} {str(out)!r} is a directory; give a file name in it")
    parent = path.parent.resolve()
    if not parent.exists():
        raise LossvizError(f"{name} {str(out)!r}: the directory {str(parent)!r} does not exist")
    if not parent.is_dir():
        raise LossvizError(f"{name} {str(out)!r}: {str(parent)!r} is not a directory")
    if path.exists() and not os.access(path, os.W_OK):
        raise LossvizError(f"{name} {str(out)!r} exists and is not writable")
    try:  # the real test (os.access says yes to root on a read-only file system)
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise LossvizError(
            f"{name} {str(out)!r}: cannot write in {str(parent)!r} ({e.strerror})"
        ) from None
    return path


def check_demo_args(out, steps, device, seed, *, cli: bool = False):
    """Check the arguments of :func:`demo` before any work.

    Args:
        out: the report's file name (its directory must exist and take a new file).
        steps: SGD steps, an integer (or a string of one) >= ``MIN_STEPS`` (2).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` (a str or
            ``torch.device``), available on this machine.
        seed: an integer (or a string of one) in ``[0, 2**64 - 1]``.
        cli: name the arguments as command-line options (``--steps``) in the errors,
            and refer to ``--device cpu``.

    Returns:
        ``(out, steps, device, seed)`` normalized: a ``Path``, an int, a
        ``torch.device`` and an int.

    Raises:
        ArgumentTypeError: ``steps`` / ``seed`` is not an integer, or ``out`` is not a
            non-empty str / path.
        LossvizError: ``steps < 2``, ``seed`` out of range, a device that is not one or
            is not available, or ``out`` a directory, in a missing or unwritable
            directory, or an existing unwritable file.

    >>> out = os.path.join(tempfile.gettempdir(), "report.html")
    >>> check_demo_args(out, "300", "cpu", 0)[1:]
    (300, device(type='cpu'), 0)
    """
    name = (lambda n: f"--{n}") if cli else (lambda n: n)
    steps = _as_int(steps, name("steps"), low=MIN_STEPS)
    seed = _as_int(seed, name("seed"), low=0, high=2**64 - 1)  # torch.manual_seed's range
    dev = _check_device(device, name("device"), cli)
    path = _check_out(out, name("out"))
    return path, steps, dev, seed


def _whole(result):
    """``result``, unless it is partial (a lossviz call that kept what it had at Ctrl-C).

    A report must not show an interrupted computation as a final one.
    """
    if getattr(result, "complete", True) is False:
        raise KeyboardInterrupt
    return result


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, then rename it.

    An interrupt or a full disk never leaves a half-written report (nor the temporary
    file).
    """
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise LossvizError(
            f"cannot write the report in {str(path.parent)!r}: {e.strerror}"
        ) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a report is an ordinary file
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise LossvizError(
                f"cannot write the report {str(path)!r}: {e.strerror or e}"
            ) from None
        raise


def demo(
    out: str = "lossviz-report.html",
    *,
    steps: int = 300,
    device: str = "cpu",
    seed: int = 0,
    quiet: bool = False,
) -> Path:
    """Train an MLP on digits, measure its curvature, write a self-contained HTML report.

    The model is a tanh MLP 64-64-64-10 trained with SGD (momentum 0.9); the report holds
    its extreme Hessian and Gauss-Newton eigenvalues, the spectral density, the trace,
    per-layer curvature, loss surfaces (PCA plane of the training path, filter-normalized
    random plane), the loss along the top eigenvector and the roughness index. Every
    argument is checked first (:func:`check_demo_args`). A report is written completely
    or not at all.

    Args:
        out: the report's file name (in an existing writable directory).
        steps: SGD steps (at least 2).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
        seed: the random seed (data split, initialization, probes), >= 0.
        quiet: print nothing: no results, no progress bars, no warnings.

    Returns:
        The path of the report.

    Raises:
        ArgumentTypeError: an argument of the wrong type (``quiet`` not a bool, ...).
        LossvizError: a bad argument (as for :func:`check_demo_args`), or the report
            cannot be written.
        KeyboardInterrupt: Ctrl-C, or a computation that came back incomplete; no
            report is written.
    """
    path, steps, dev, seed = check_demo_args(out, steps, device, seed)
    validate.boolean(quiet, "quiet")
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore")
        return _demo(path, steps, dev, seed, quiet)


def _demo(path: Path, steps: int, device: torch.device, seed: int, quiet: bool) -> Path:
    import lossviz as lv
    from lossviz.data import digits, mlp, train

    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    progress = False if quiet else None  # None: the LOSSVIZ_PROGRESS default (bars on)
    t0 = time.perf_counter()
    (xtr, ytr), (xte, yte) = digits(split=0.2, seed=seed)
    model = mlp((64, 64, 64, 10), nn.Tanh, seed=seed)
    snaps = train(
        model, (xtr, ytr), steps=steps, lr=0.1, momentum=0.9, seed=seed, every=max(1, steps // 10)
    )
    model = model.to(device)
    xtr, ytr, xte, yte = (t.to(device) for t in (xtr, ytr, xte, yte))
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean().item()
    obj = lv.Objective(model, nn.functional.cross_entropy, (xtr, ytr))
    loss = obj.loss()
    say(
        f"trained MLP 64-64-64-10 (tanh) on digits for {steps} SGD steps: "
        f"train loss {loss:.4f}, test accuracy {acc:.3f}"
    )
    say(obj)
    eig = _whole(lv.hessian_eigs(obj, k=10, which="both", tol=1e-4, progress=progress))
    say(eig)
    dens = _whole(lv.hessian_density(obj, n_probes=8, steps=60, seed=seed, progress=progress))
    say(dens)
    tr = _whole(lv.hessian_trace(obj, rtol=0.02, max_hvp=2000, seed=seed, progress=progress))
    say(tr)
    layers = _whole(
        lv.hessian_blocks(obj, "module", k=1, rtol=0.05, max_hvp=1000, progress=progress)
    )
    say(layers)
    ggn = _whole(lv.hessian_eigs(obj, k=10, curvature="ggn", tol=1e-4, progress=progress))
    say(ggn)
    pca = lv.pca_directions(snaps, 2)
    plane = _whole(
        lv.surface(obj, None, pca, n=(41, 41), metrics=("loss", "accuracy"), progress=progress)
    )
    say(f"loss surface on the PCA plane of the training path: {plane}")
    rnd = _whole(
        lv.surface(
            obj, None, lv.random_directions(obj, 2, seed=seed), n=(41, 41), progress=progress
        )
    )
    top_dir = _whole(lv.line(obj, None, eig.vectors[-1], span=(-3, 3), n=61, progress=progress))
    rough = _whole(lv.roughness_index(obj, n_directions=40, seed=seed, progress=progress))
    say(rough)

    figs = [
        ("Spectral density (stochastic Lanczos quadrature)", dens.plot(log=True)),
        ("Extreme eigenvalues of the Hessian", eig.plot()),
        ("Top eigenvalues of the Gauss-Newton matrix", ggn.plot()),
        ("Trace estimate", tr.plot()),
        ("Curvature per layer", layers.plot("λ1")),
        (
            "Loss on the PCA plane of the training trajectory (Li et al. 2018)",
            plane.plot("contour", log=True),
        ),
        (
            "Loss around the trained model, filter-normalized random directions",
            rnd.plot("contour", log=True),
        ),
        ("Loss along the top Hessian eigenvector", top_dir.plot()),
        ("Roughness index (Wu et al. 2021): the 40 normalized slices", rough.plot()),
    ]
    parts = [
        "<h1>lossviz report</h1>",
        f"<p>MLP 64-64-64-10 (tanh), {obj.n_params:,} parameters, trained {steps} SGD steps "
        f"on scikit-learn's digits ({len(ytr)} training images). Train loss "
        f"{loss:.4f}, test accuracy {acc:.3f}. Computed on {device} in "
        f"{time.perf_counter() - t0:.1f} s.</p>",
        _section(
            "Summary",
            eig._repr_html_()
            + tr._repr_html_()
            + dens._repr_html_()
            + layers._repr_html_()
            + ggn._repr_html_(),
        ),
    ]
    for i, (title, fig) in enumerate(figs):
        parts.append(
            _section(
                title, fig.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False)
            )
        )
    style = (
        "<style>body{font-family:system-ui,sans-serif;max-width:1000px;margin:auto;"
        "padding:1em}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid"
        " #ccc;padding:2px 8px;text-align:right}caption{text-align:left;color:#555}</style>"
    )
    _write_atomic(
        path,
        "<!doctype html><html><head><meta charset='utf-8'><title>lossviz report"
        f"</title>{style}</head><body>{''.join(parts)}</body></html>",
    )
    say(f"report written to {path.resolve()}")
    return path


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage itself is in ``--help``)."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def _warning_line(message, category, filename, lineno, file=None, line=None):
    """A warning during the demo as one line on stderr, without the source location."""
    print(f"{PROG}: warning: {_one_line(message)}", file=sys.stderr, flush=True)


def _fail(message: str, status: int) -> int:
    sys.stdout.flush()
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)
    return status


def main(argv=None) -> int:
    """Run the ``lossviz`` command line (``lossviz demo [--out ...] [--steps ...] ...``).

    A bad argument or a lossviz input error is one line on stderr and exit status 2;
    Ctrl-C is one line and exit status 130 (no report written).

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0, 2 (``EXIT_USAGE``) or 130 (``EXIT_INTERRUPTED``).

    Raises:
        SystemExit: from argparse for ``--help`` and ``--version`` (status 0) and for a
            usage error such as an unknown option (status 2, one line on stderr).
    """
    from . import __version__
    from .interrupt import inner

    ap = _Parser(prog=PROG, description="lossviz: loss landscapes and Hessian spectra.")
    ap.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="{demo}")
    d = sub.add_parser(
        "demo",
        help="train on bundled digits data and write an HTML report",
        description="Train a tanh MLP on scikit-learn's digits, measure its Hessian "
        "spectrum, trace, per-layer curvature and loss landscape, and write a "
        "self-contained HTML report.",
    )
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    d.add_argument(
        "--out", default="lossviz-report.html", help="report file (default: %(default)s)"
    )
    d.add_argument(
        "--steps", default="300", help=f"SGD steps, >= {MIN_STEPS} (default: %(default)s)"
    )
    d.add_argument(
        "--device", default=default_device, help="cpu, cuda, cuda:N or mps (default: %(default)s)"
    )
    d.add_argument("--seed", default="0", help="random seed, >= 0 (default: %(default)s)")
    d.add_argument(
        "--quiet", action="store_true", help="print nothing: no results, progress bars, warnings"
    )
    args = ap.parse_args(argv)
    if args.cmd != "demo":  # pragma: no cover - argparse refuses other commands
        return _fail(f"error: unknown command {args.cmd!r}", EXIT_USAGE)
    try:
        out, steps, device, seed = check_demo_args(
            args.out, args.steps, args.device, args.seed, cli=True
        )
    except LossvizError as e:
        return _fail(f"error: {_one_line(e)}", EXIT_USAGE)
    try:
        # inside ``inner`` every lossviz call lets Ctrl-C through instead of returning what
        # it had: the whole demo stops
        with warnings.catch_warnings(), inner():
            if args.quiet:
                warnings.simplefilter("ignore")
            else:
                warnings.showwarning = _warning_line
            _demo(out, steps, device, seed, args.quiet)
    except KeyboardInterrupt:
        return _fail("interrupted; no report written", EXIT_INTERRUPTED)
    except LossvizError as e:
        return _fail(f"error: {_one_line(e)}", EXIT_USAGE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
