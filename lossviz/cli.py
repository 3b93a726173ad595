"""``lossviz`` command line.

- ``lossviz report --model pkg.module:factory --data pkg.module:make_data [--checkpoint
  ck.pt] [--out r.html] ...``: the report of :func:`lossviz.reporting.report` for your model
  (import paths as uvicorn's: ``module:attribute``; the current directory is importable).
- ``lossviz demo``: train a small network on the digits data bundled with scikit-learn and
  write its report.
- ``lossviz lab [DIR]``: JupyterLab on the notebooks folder, the jupytext ``.py`` notebooks
  opening as notebooks.
- ``lossviz playground``: the optimization playground notebook served by Voila.

Every argument is checked before any work starts; a bad one, or a lossviz input error
during the run, is one line on stderr (``lossviz: error: ...``) and exit status 2. Ctrl-C
is one line and exit status 130, and leaves no report behind (the report is written to a
temporary file in the same directory and renamed). ``--quiet`` prints nothing at all.
``python -m lossviz`` is the same command.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from . import validate
from .errors import ArgumentTypeError, DataError, LossvizError
from .reporting import check_out, write_atomic

PROG = "lossviz"
#: the PCA plane of the training path needs 3 checkpoints: the start, one on the way, the end
MIN_STEPS = 2
EXIT_USAGE = 2  # a bad argument or a lossviz input error (argparse's convention)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
#: ``--loss`` names: functions of ``torch.nn.functional``
LOSSES = ("cross_entropy", "mse_loss", "nll_loss", "binary_cross_entropy_with_logits", "l1_loss")
NOTEBOOKS_EXTRA = "pip install 'lossviz[notebooks]'"

_write_atomic = write_atomic  # the name the demo used (kept for the tests and callers)


def _one_line(text: str) -> str:
    return "; ".join(s.strip() for s in str(text).splitlines() if s.strip())


def _as_int(value, name: str, *, low: int, high: int | None = None) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ArgumentTypeError(f"{name} must be an integer, got {value!r}") from None
    return validate.integer(value, name, low=low, high=high)


def _as_float(value, name: str, **kw) -> float:
    """A finite number from the command line (``kw``: the bounds of ``validate.number``)."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ArgumentTypeError(f"{name} must be a number, got {value!r}") from None
    value = validate.number(value, name, **kw)
    if not math.isfinite(value):
        raise LossvizError(f"{name} must be a finite number, got {value}")
    return value


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
        raise LossvizError(f"{name} {str(dev)!r}: lossviz runs on cpu, cuda or mps")
    return dev


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
    path = check_out(out, name("out"))
    return path, steps, dev, seed


def demo(
    out: str = "lossviz-report.html",
    *,
    steps: int = 300,
    device: str = "cpu",
    seed: int = 0,
    quiet: bool = False,
) -> Path:
    """Train an MLP on digits and write its report (:func:`lossviz.reporting.report`).

    The model is a tanh MLP 64-64-64-10 trained with SGD (momentum 0.9), checkpointed
    ten times; the report holds its extreme Hessian eigenvalues, the spectral density, the
    trace, Hessian vs Gauss-Newton, per-layer curvature, a random-direction surface, the
    PCA plane of the training path and the roughness index along it. Every argument is
    checked first (:func:`check_demo_args`). A report is written completely or not at all.

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
    from lossviz.reporting import report

    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    (xtr, ytr), (xte, yte) = digits(split=0.2, seed=seed)
    model = mlp((64, 64, 64, 10), nn.Tanh, seed=seed)
    every = max(1, steps // 10)
    snaps = train(model, (xtr, ytr), steps=steps, lr=0.1, momentum=0.9, seed=seed, every=every)
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
    steps_at = [min(i * every, steps) for i in range(len(snaps) - 1)] + [steps]
    return report(
        obj,
        checkpoints=dict(zip(steps_at, snaps)),
        out=path,
        k=10,
        grid=31,
        n_probes=6,
        steps=80,
        title="lossviz demo: an MLP on digits",
        description=(
            f"MLP 64-64-64-10 (tanh), {obj.n_params:,} parameters, trained {steps} SGD steps "
            f"(learning rate 0.1, momentum 0.9, batch 128) on scikit-learn's digits "
            f"({len(ytr)} training images). Train loss {loss:.4f}, test accuracy {acc:.3f}. "
            f"Checkpoints every {every} steps."
        ),
        seed=seed,
        verbose=not quiet,
        progress=False if quiet else None,
    )


# lossviz report ------------------------------------------------------------------------------
def load_object(spec: str, option: str):
    """The object an import path ``"pkg.module:attribute"`` names (uvicorn's convention).

    The module part may also be a ``.py`` file (``path/to/file.py:attribute``); the
    attribute may be dotted (``module:Class.factory``). The current directory is
    importable, as for ``python -m``. An error in the user's module itself (a syntax
    error, an exception at import) propagates with its traceback.

    Args:
        spec: the import path.
        option: the command-line option it came from (named in the errors).

    Returns:
        The object.

    Raises:
        LossvizError: a path without ``:``, a module that does not exist, or an attribute
            the module lacks.
    """
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise LossvizError(
            f"{option} {spec!r} is not an import path; use 'package.module:attribute'"
        )
    mod_name, attr = spec.split(":")
    if mod_name.endswith(".py"):
        file = Path(mod_name).expanduser()
        if not file.is_file():
            raise LossvizError(f"{option} {spec!r}: no file {mod_name!r}")
        name = f"_lossviz_user_{abs(hash(str(file.resolve())))}"
        loader_spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        loader_spec.loader.exec_module(module)
    else:
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            # only a missing module that the path itself names is a bad argument; a missing
            # import inside the user's module is their error (with its traceback)
            if e.name is None or not (mod_name == e.name or mod_name.startswith(e.name + ".")):
                raise
            raise LossvizError(
                f"{option} {spec!r}: cannot import module {mod_name!r} (no module named "
                f"{e.name!r}; the current directory is {os.getcwd()!r})"
            ) from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise LossvizError(f"{option} {spec!r}: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def load_model(spec: str, checkpoint=None, *, option: str = "--model") -> nn.Module:
    """The model an import path names, with a checkpoint's weights loaded.

    Args:
        spec: ``"pkg.module:factory"``: a function (or class) called without arguments
            that returns an ``nn.Module``, or an ``nn.Module`` itself.
        checkpoint: a ``.pt`` / ``.pth`` file (``torch.load(weights_only=True)``; a dict
            wrapping the state dict under ``state_dict`` / ``model_state_dict`` / ``model``
            is unwrapped) or a ``.safetensors`` file; None keeps the factory's weights.
        option: the command-line option ``spec`` came from.

    Returns:
        The model (its parameters and buffers replaced by the checkpoint's).

    Raises:
        LossvizError: a bad import path, or the factory returns no ``nn.Module``.
        CheckpointError: the checkpoint is missing or unreadable, or its keys or shapes
            do not match the model (naming them).
    """
    from .errors import CheckpointError
    from .weights import check_matches, load_checkpoint

    obj = load_object(spec, option)
    model = obj if isinstance(obj, nn.Module) else None
    if model is None:
        if not callable(obj):
            raise LossvizError(
                f"{option} {spec!r} is a {type(obj).__name__}, not an nn.Module or a "
                "function returning one"
            )
        model = obj()
        if not isinstance(model, nn.Module):
            raise LossvizError(
                f"{option} {spec!r} returned a {type(model).__name__}, not an nn.Module"
            )
    if checkpoint is not None:
        try:
            state = load_checkpoint(checkpoint)
        except CheckpointError as e:
            raise CheckpointError(f"--checkpoint: {e}") from None
        own = model.state_dict()
        check_matches(
            state,
            {k: v.shape for k, v in own.items()},
            list(own),
            what=f"--checkpoint {str(checkpoint)!r}",
        )
        model.load_state_dict(state)
    return model


def load_data(spec: str, *, option: str = "--data"):
    """The data an import path names: ``(inputs, targets)`` tensors or a DataLoader.

    Args:
        spec: ``"pkg.module:make_data"``: a function called without arguments that
            returns one batch ``(x, y)`` of tensors or any iterable of such batches (a
            ``DataLoader``, a list), or such an object itself.
        option: the command-line option ``spec`` came from.

    Returns:
        What :class:`~lossviz.Objective` takes as ``data``.

    Raises:
        LossvizError: a bad import path, or a result that is not tensors or batches.
    """
    obj = load_object(spec, option)
    data = obj() if callable(obj) and not isinstance(obj, (nn.Module, torch.Tensor)) else obj
    if isinstance(data, (str, bytes)) or not (
        isinstance(data, (tuple, list, dict, torch.Tensor)) or hasattr(data, "__iter__")
    ):
        raise LossvizError(
            f"{option} {spec!r} gave a {type(data).__name__}; expected (inputs, targets) "
            "tensors or an iterable of batches such as a DataLoader"
        )
    return data


def load_loss(name: str):
    """``--loss``: a name in :data:`LOSSES` (``torch.nn.functional``) or an import path.

    Args:
        name: ``"cross_entropy"``, ``"mse"`` (``mse_loss``), ... or ``"pkg.module:fn"``.

    Returns:
        The loss function ``loss(outputs, targets) -> scalar``.

    Raises:
        LossvizError: an unknown name, or a bad import path.
    """
    short = {"mse": "mse_loss", "nll": "nll_loss", "l1": "l1_loss", "bce": LOSSES[3]}
    n = short.get(name, name)
    if n in LOSSES:
        return getattr(nn.functional, n)
    if ":" in name:
        fn = load_object(name, "--loss")
        if not callable(fn):
            raise LossvizError(f"--loss {name!r} is a {type(fn).__name__}, not a function")
        return fn
    raise LossvizError(
        f"--loss {name!r} is not a known loss ({', '.join(LOSSES)}, or mse / nll / l1 / bce) "
        "nor an import path 'package.module:function'"
    )


def _report_cli(args, say) -> Path:
    """``lossviz report``: everything is checked (and loaded) before the report starts."""
    import lossviz as lv
    from lossviz.reporting import report, resolve_sections

    out = check_out(args.out, "--out")
    device = _check_device(args.device, "--device", True) if args.device else None
    grid = _as_int(args.grid, "--grid", low=3)
    k = _as_int(args.k, "--k", low=1)
    seed = _as_int(args.seed, "--seed", low=0, high=2**63 - 1)
    rho = _as_float(args.rho, "--rho", low=0, low_open=True)
    lr = None if args.lr is None else _as_float(args.lr, "--lr", low=0, low_open=True)
    momentum = _as_float(args.momentum, "--momentum", low=0, high=1, high_open=True)
    curve_steps = _as_int(args.curve_steps, "--curve-steps", low=1)
    try:
        resolve_sections(args.sections, checkpoints=bool(args.trajectory), pair=bool(args.pair))
    except LossvizError as e:
        msg = str(e).replace("sections", "--sections", 1)
        msg = msg.replace("checkpoints= (3 or more)", "--trajectory (3 checkpoints or more)")
        raise type(e)(msg.replace("pair=(a, b)", "--pair A B")) from None
    for opt, paths in (("--trajectory", args.trajectory or []), ("--pair", args.pair or [])):
        for p in paths:
            if not Path(p).is_file():
                raise LossvizError(f"{opt}: checkpoint not found: {p}")
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise LossvizError(f"--checkpoint: checkpoint not found: {args.checkpoint}")
    loss_fn = load_loss(args.loss)
    model = load_model(args.model, args.checkpoint)
    data = load_data(args.data)
    try:
        obj = lv.Objective(model, loss_fn, data, device=device)
    except DataError as e:
        raise DataError(f"--data {args.data!r}: {e}") from None
    say(f"{args.model}: {type(model).__name__}, {obj.n_params:,} parameters; loss {obj.loss():.6g}")
    trajectory = args.trajectory or None
    if trajectory and len({Path(p).stem for p in trajectory}) == len(trajectory):
        trajectory = {Path(p).stem: p for p in trajectory}  # labelled by file name
    return report(
        obj,
        checkpoints=trajectory,
        pair=tuple(args.pair) if args.pair else None,
        out=out,
        sections=args.sections,
        k=k,
        grid=grid,
        rho=rho,
        lr=lr,
        momentum=momentum,
        curve_steps=curve_steps,
        seed=seed,
        title=args.title or f"lossviz report: {args.model}",
        description=(
            f"Model {args.model}"
            + (f" with weights from {args.checkpoint}" if args.checkpoint else "")
            + f", data {args.data}, loss {args.loss}."
        ),
        verbose=not args.quiet,
        progress=False if args.quiet else None,
    )


# lossviz lab / playground -------------------------------------------------------------------
#: what ``lossviz lab`` adds to JupyterLab's default settings: ``.py`` files (the jupytext
#: notebooks) open as notebooks on a double click (what ``jupytext-config
#: set-default-viewer python`` writes, but only for this server: the user's settings win)
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension:plugin": {"defaultViewers": {"python": "Jupytext Notebook"}}
}


def notebooks_dir() -> Path | None:
    """The notebooks folder: the checkout's ``notebooks/``, or an installed copy.

    Returns:
        The folder, or None when neither exists.
    """
    here = Path(__file__).resolve().parent.parent / "notebooks"
    if here.is_dir():
        return here
    installed = Path(sys.prefix) / "share" / "lossviz" / "notebooks"
    return installed if installed.is_dir() else None


def _need(modules: tuple[str, ...], what: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise LossvizError(
            f"{what} needs {' and '.join(missing)}, not installed here: {NOTEBOOKS_EXTRA}"
        )


def lab_command(
    directory, *, port=None, browser: bool = True, config_dir, extra=()
) -> tuple[list, dict]:
    """The command ``lossviz lab`` runs, and the environment variables it adds.

    Args:
        directory: the folder JupyterLab opens (its root).
        port: the server's port (None: JupyterLab's default).
        browser: open a browser.
        config_dir: a folder for the settings that make ``.py`` notebooks open as
            notebooks (``labconfig/default_setting_overrides.json``; put first on
            ``JUPYTER_CONFIG_PATH``).
        extra: more command-line arguments for JupyterLab (e.g. ``--allow-root``).

    Returns:
        ``(argv, env)``: the command line and the variables to set.
    """
    argv = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={directory}"]
    if port is not None:
        argv.append(f"--ServerApp.port={port}")
    if not browser:
        argv.append("--no-browser")
    argv += list(extra)
    path = [str(config_dir)] + [p for p in [os.environ.get("JUPYTER_CONFIG_PATH")] if p]
    return argv, {"JUPYTER_CONFIG_PATH": os.pathsep.join(path)}


def _pythonpath() -> str:
    """PYTHONPATH with this lossviz's folder first (a checkout that is not installed)."""
    root = str(Path(__file__).resolve().parent.parent)
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join([root] + [p for p in rest if p != root])


def _run(argv, env) -> int:
    """Run a server in the foreground; Ctrl-C goes to it (it asks before stopping)."""
    p = subprocess.Popen(argv, env={**os.environ, **env})
    while True:
        try:
            return p.wait()
        except KeyboardInterrupt:
            continue


def _check_port(value):
    return None if value is None else _as_int(value, "--port", low=1, high=65535)


def _lab_cli(args, say) -> int:
    directory = Path(args.dir).expanduser() if args.dir else notebooks_dir()
    if directory is None:
        raise LossvizError(
            "no notebooks folder found (lossviz's own notebooks/ is not installed): give "
            "one, lossviz lab PATH"
        )
    if not directory.is_dir():
        raise LossvizError(f"DIR {str(directory)!r} is not a directory")
    port = _check_port(args.port)
    if not args.dry_run:
        _need(("jupyterlab", "jupytext"), "lossviz lab")
    with tempfile.TemporaryDirectory(prefix="lossviz-lab-") as cfg:
        (Path(cfg) / "labconfig").mkdir()
        (Path(cfg) / "labconfig" / "default_setting_overrides.json").write_text(
            json.dumps(LAB_SETTINGS), encoding="utf-8"
        )
        argv, env = lab_command(
            directory.resolve(),
            port=port,
            browser=not args.no_browser,
            config_dir=cfg,
            extra=args.extra,
        )
        env["PYTHONPATH"] = _pythonpath()
        if args.dry_run:
            print(" ".join(f"{k}={v}" for k, v in env.items()), *argv)
            return 0
        return _run(argv, env)


def playground_command(notebook, *, port=None, browser: bool = True, extra=()) -> list:
    """The Voila command ``lossviz playground`` runs on a notebook file.

    Args:
        notebook: the ``.ipynb`` file.
        port: the server's port (None: Voila's default, 8866).
        browser: open a browser.
        extra: more command-line arguments for Voila.

    Returns:
        The command line.
    """
    argv = [sys.executable, "-m", "voila", str(notebook)]
    if port is not None:
        argv.append(f"--port={port}")
    if not browser:
        argv.append("--no-browser")
    return argv + list(extra)


def _playground_cli(args, say) -> int:
    src = Path(args.notebook).expanduser() if args.notebook else None
    if src is None:
        nb = notebooks_dir()
        src = None if nb is None else nb / "playground.py"
    if src is None or not src.is_file():
        raise LossvizError(
            f"no playground notebook at {str(src) if src else 'notebooks/playground.py'!r}; "
            "give one: lossviz playground --notebook FILE.py"
        )
    port = _check_port(args.port)
    _need(("voila", "jupytext"), "lossviz playground")
    import jupytext

    # Voila runs a .py file as one code cell; the jupytext notebook becomes a real
    # notebook (markdown cells and all) in a temporary folder, never next to the source
    nb = jupytext.read(src)
    with tempfile.TemporaryDirectory(prefix="lossviz-playground-") as tmp:
        target = Path(tmp) / (src.stem + ".ipynb")
        jupytext.write(nb, target)
        argv = playground_command(target, port=port, browser=not args.no_browser, extra=args.extra)
        env = {"PYTHONPATH": _pythonpath()}
        if args.dry_run:
            print(*argv)
            return 0
        return _run(argv, env)


# the parser ----------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage itself is in ``--help``)."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def _warning_line(message, category, filename, lineno, file=None, line=None):
    """A warning during the run as one line on stderr, without the source location."""
    print(f"{PROG}: warning: {_one_line(message)}", file=sys.stderr, flush=True)


def _fail(message: str, status: int) -> int:
    sys.stdout.flush()
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)
    return status


def parser() -> argparse.ArgumentParser:
    """The ``lossviz`` argument parser (every option has its help text).

    Returns:
        The parser.
    """
    from . import __version__
    from .reporting import SECTIONS

    ap = _Parser(
        prog=PROG,
        description="lossviz: loss landscapes and Hessian spectra of neural networks.",
        epilog="Each command has its own --help, e.g. 'lossviz report --help'.",
    )
    ap.add_argument(
        "--version", action="version", version=f"{PROG} {__version__}", help="print the version"
    )
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="{report,demo,lab,playground}")
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    quiet = "print nothing: no results, progress bars or warnings"

    r = sub.add_parser(
        "report",
        help="write an HTML report of your model's Hessian spectrum and loss landscape",
        description="Write one self-contained HTML report (it opens offline) of a model's "
        "curvature and loss landscape: extreme Hessian eigenvalues, spectral density with "
        "outliers, trace, Hessian vs Gauss-Newton, per-layer curvature, sharpness at --rho "
        "(and the stability of gradient descent at --lr), a random-direction surface and "
        "its topology (basins, saddles, SMAD); with --trajectory the PCA plane of the "
        "checkpoints and the roughness index along them; with --pair the linear path, "
        "barrier and layer-wise barriers (and, with --sections curve, a trained Bezier "
        "curve). "
        "Import paths follow uvicorn: 'package.module:attribute' (or 'file.py:attribute'), "
        "the current directory importable.",
        epilog="example: lossviz report --model mypkg.models:make_net --checkpoint net.pt "
        "--data mypkg.data:make_data --out net-report.html",
    )
    r.add_argument(
        "--model",
        required=True,
        metavar="MODULE:FACTORY",
        help="a function (or class) called without arguments that returns the nn.Module, "
        "or the module itself, e.g. mypkg.models:make_net",
    )
    r.add_argument(
        "--data",
        required=True,
        metavar="MODULE:FACTORY",
        help="a function called without arguments that returns (inputs, targets) tensors "
        "or an iterable of such batches (a DataLoader), e.g. mypkg.data:make_data",
    )
    r.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="weights to load into the model: a state dict saved with torch.save (loaded "
        "with weights_only=True) or a .safetensors file (default: the factory's weights)",
    )
    r.add_argument(
        "--loss",
        default="cross_entropy",
        help="the loss: cross_entropy, mse, nll, l1, bce (with logits) or an import path "
        "MODULE:FUNCTION taking (outputs, targets) (default: %(default)s)",
    )
    r.add_argument(
        "--out", default="lossviz-report.html", help="the report file (default: %(default)s)"
    )
    r.add_argument(
        "--trajectory",
        nargs="+",
        metavar="FILE",
        help="checkpoints of the training run, in order (3 or more): adds the PCA plane "
        "of the trajectory and the roughness index along it",
    )
    r.add_argument(
        "--pair",
        nargs=2,
        metavar=("A", "B"),
        help="two checkpoints: adds the linear path between them, its barrier and the "
        "layer-wise barriers",
    )
    r.add_argument(
        "--sections",
        nargs="+",
        metavar="NAME",
        help="the sections to draw (default: all that apply, except curve, which trains): "
        + ", ".join(SECTIONS),
    )
    r.add_argument(
        "--rho",
        default="0.05",
        help="radius of the sharpness ball (flatness section; default: %(default)s)",
    )
    r.add_argument(
        "--lr",
        default=None,
        help="learning rate whose gradient-descent / heavy-ball stability the flatness "
        "section checks (default: not checked)",
    )
    r.add_argument(
        "--momentum",
        default="0",
        help="heavy-ball momentum in [0, 1) of that check (default: %(default)s, gradient descent)",
    )
    r.add_argument(
        "--curve-steps",
        default="500",
        help="training steps of the mode-connecting curve (curve section; default: %(default)s)",
    )
    r.add_argument(
        "--grid", default="21", help="grid points per axis of the surfaces (default: %(default)s)"
    )
    r.add_argument(
        "--k",
        default="5",
        help="eigenvalues at each end of the spectrum (default: %(default)s)",
    )
    r.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:N or mps (default: where the model's parameters are)",
    )
    r.add_argument(
        "--seed", default="0", help="seed of the random directions and probes (default: 0)"
    )
    r.add_argument("--title", default=None, help="the report's title")
    r.add_argument("--quiet", action="store_true", help=quiet)

    d = sub.add_parser(
        "demo",
        help="train on bundled digits data and write an HTML report",
        description="Train a tanh MLP on scikit-learn's digits and write its report "
        "(lossviz report's sections, with the training checkpoints).",
    )
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
    d.add_argument("--quiet", action="store_true", help=quiet)

    lab = sub.add_parser(
        "lab",
        help="open the notebooks in JupyterLab (jupytext .py files open as notebooks)",
        description="Start JupyterLab on a folder of notebooks (default: lossviz's own "
        "notebooks/). The jupytext .py notebooks open as notebooks on a double click; your "
        f"own JupyterLab settings are not changed. Needs: {NOTEBOOKS_EXTRA}.",
    )
    lab.add_argument(
        "dir", nargs="?", metavar="DIR", help="the folder to open (default: notebooks/)"
    )
    lab.add_argument("--port", default=None, help="the server's port (default: JupyterLab's)")
    lab.add_argument("--no-browser", action="store_true", help="do not open a browser")
    lab.add_argument(
        "--dry-run", action="store_true", help="print the command instead of running it"
    )

    pg = sub.add_parser(
        "playground",
        help="serve the optimization playground notebook with Voila",
        description="Serve notebooks/playground.py as a web page with Voila (converted to a "
        f"notebook in a temporary folder first). Needs: {NOTEBOOKS_EXTRA}.",
    )
    pg.add_argument(
        "--notebook",
        default=None,
        metavar="FILE",
        help="a jupytext .py notebook to serve (default: notebooks/playground.py)",
    )
    pg.add_argument("--port", default=None, help="the server's port (default: Voila's, 8866)")
    pg.add_argument("--no-browser", action="store_true", help="do not open a browser")
    pg.add_argument(
        "--dry-run", action="store_true", help="print the command instead of running it"
    )
    return ap


def main(argv=None) -> int:
    """Run the ``lossviz`` command line (``lossviz report|demo|lab|playground ...``).

    A bad argument or a lossviz input error is one line on stderr and exit status 2;
    Ctrl-C is one line and exit status 130 (no report written).

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0, 2 (``EXIT_USAGE``), 130 (``EXIT_INTERRUPTED``), or the
        server's for ``lab`` / ``playground``.

    Raises:
        SystemExit: from argparse for ``--help`` and ``--version`` (status 0) and for a
            usage error such as an unknown option (status 2, one line on stderr).
    """
    from .interrupt import inner

    ap = parser()
    args, extra = ap.parse_known_args(argv)
    if extra and args.cmd not in ("lab", "playground"):
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra  # lab / playground: passed on to the server (e.g. --allow-root)
    quiet = getattr(args, "quiet", False)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    try:
        if args.cmd == "lab":
            return _lab_cli(args, say)
        if args.cmd == "playground":
            return _playground_cli(args, say)
        if args.cmd == "demo":
            checked = check_demo_args(args.out, args.steps, args.device, args.seed, cli=True)
    except LossvizError as e:
        return _fail(f"error: {_one_line(e)}", EXIT_USAGE)
    try:
        # inside ``inner`` every lossviz call lets Ctrl-C through instead of returning what
        # it had: the whole run stops
        with warnings.catch_warnings(), inner():
            if quiet:
                warnings.simplefilter("ignore")
            else:
                warnings.showwarning = _warning_line
            if args.cmd == "demo":
                _demo(*checked, quiet)
            else:
                _report_cli(args, say)
    except KeyboardInterrupt:
        return _fail("interrupted; no report written", EXIT_INTERRUPTED)
    except LossvizError as e:
        return _fail(f"error: {_one_line(e)}", EXIT_USAGE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
