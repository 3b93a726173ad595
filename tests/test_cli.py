"""The ``lossviz`` command line: ``report`` on a model given by import paths (its numbers
checked against a dense Hessian of the checkpoint's weights), ``demo``, ``lab`` and
``playground``. Every bad argument is one line on stderr and exit status 2 before any work
starts, ``--quiet`` prints nothing, Ctrl-C is one line and exit status 130 with no report
left behind, every option has its help, and ``python -m lossviz`` works."""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import lossviz as lossviz_pkg
import lossviz.cli as cli
from lossviz import LossvizError
from tests.reference import dense_hessian

ROOT = Path(__file__).resolve().parent.parent


def _env(**extra):
    env = dict(os.environ)
    env.pop("LOSSVIZ_PROGRESS", None)  # the bars are on unless the CLI turns them off
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(extra)
    return env


def lossviz(*args, cwd, timeout=600, **env):
    return subprocess.run(
        [sys.executable, "-m", "lossviz", *args],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def summary_of(text: str) -> dict:
    m = re.search(
        r"<script type='application/json' id='lossviz-summary'>(.*?)</script>", text, re.S
    )
    return json.loads(m.group(1))


# a user's project: a model factory, data factories, checkpoints -----------------------------
USER_MODULE = textwrap.dedent(
    """
    import torch
    from torch import nn

    CONST = 3

    def make_net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()

    def make_data():
        g = torch.Generator().manual_seed(1)
        x = torch.randn(30, 4, generator=g, dtype=torch.float64)
        return x, torch.randint(0, 3, (30,), generator=g)

    def make_loader():
        x, y = make_data()
        ds = torch.utils.data.TensorDataset(x, y)
        return torch.utils.data.DataLoader(ds, batch_size=7)

    def returns_int():
        return 5

    def numpy_data():
        x, y = make_data()
        return x.numpy(), y.numpy()
    """
)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A folder with ``usermod.py``, ``broken.py`` and checkpoints of ``make_net``."""
    d = tmp_path_factory.mktemp("project")
    (d / "usermod.py").write_text(USER_MODULE)
    (d / "broken.py").write_text("import torch\nraise RuntimeError('a bug in the user code')\n")
    sys.path.insert(0, str(d))
    try:
        import usermod
    finally:
        sys.path.remove(str(d))
    net = usermod.make_net()
    states = []
    for i in range(3):
        torch.manual_seed(10 + i)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.3 * torch.randn_like(p))
        states.append({k: v.clone() for k, v in net.state_dict().items()})
    for i, st in enumerate(states):
        torch.save(st, d / f"ck{i}.pt")
    from safetensors.torch import save_file

    save_file(states[0], str(d / "ck0.safetensors"))
    torch.save({"state_dict": states[1]}, d / "wrapped.pt")
    bad = dict(states[0])
    bad["2.weight"] = torch.zeros(2, 6, dtype=torch.float64)
    torch.save(bad, d / "shapes.pt")
    missing = {k: v for k, v in states[0].items() if k != "0.bias"}
    torch.save(missing, d / "missing.pt")
    (d / "garbage.pt").write_bytes(b"not a checkpoint at all")
    torch.save({"net": usermod.make_net()}, d / "pickled.pt")  # a module: refused
    return d, usermod, states


REPORT = ["report", "--model", "usermod:make_net", "--data", "usermod:make_data"]
FAST = ["--grid", "5", "--k", "2"]


def test_report_end_to_end_quiet(project, tmp_path):
    """A real run in a fresh process: nothing printed, one file, and λ1 / λP of the
    checkpoint's weights as a dense Hessian gives them."""
    d, usermod, states = project
    out = tmp_path / "r.html"
    r = lossviz(*REPORT, "--checkpoint", "ck1.pt", "--out", str(out), *FAST, "--quiet", cwd=d)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout == "" and r.stderr == ""
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]
    s = summary_of(out.read_text(encoding="utf-8"))
    net = usermod.make_net()
    net.load_state_dict(states[1])
    H = dense_hessian(net, nn.functional.cross_entropy, usermod.make_data())
    lam = torch.linalg.eigvalsh(H).numpy()
    assert s["eigenvalues"]["values"][0] == pytest.approx(lam[-1], rel=1e-6)
    assert s["eigenvalues"]["values"][-1] == pytest.approx(lam[0], rel=1e-5, abs=1e-8)
    assert s["sections"] == [
        "eigenvalues",
        "density",
        "trace",
        "ggn",
        "layers",
        "flatness",
        "surface",
        "topology",
    ]
    assert s["flatness"]["rho"] == 0.05 and s["flatness"]["stability"] is None


def test_report_in_process_variants(project, tmp_path, capsys, monkeypatch):
    """A file path, a DataLoader, safetensors, a wrapped state dict, a trajectory and a
    pair, --sections; the console shows the same outlier count as the page."""
    d, usermod, states = project
    monkeypatch.chdir(d)
    monkeypatch.setenv("LOSSVIZ_PROGRESS", "0")
    out = tmp_path / "r.html"
    args = [
        "report",
        "--model",
        str(d / "usermod.py") + ":make_net",
        "--data",
        "usermod:make_loader",
        "--checkpoint",
        "ck0.safetensors",
        "--trajectory",
        "ck0.pt",
        "ck1.pt",
        "ck2.pt",
        "--pair",
        "wrapped.pt",
        "ck2.pt",
        "--sections",
        "density",
        "trajectory",
        "connectivity",
        "--out",
        str(out),
        *FAST,
    ]
    assert cli.main(args) == 0
    console = capsys.readouterr().out
    s = summary_of(out.read_text(encoding="utf-8"))
    assert s["sections"] == ["density", "trajectory", "connectivity"]
    text = out.read_text(encoding="utf-8")
    assert "PCA of a trajectory of 3 checkpoints" in text
    assert s["connectivity"]["barrier"] == pytest.approx(
        lossviz_pkg.barrier(
            lossviz_pkg.Objective(
                usermod.make_net(), nn.functional.cross_entropy, usermod.make_data()
            ),
            states[1],
            states[2],
            n=5,
            progress=False,
        ),
        rel=1e-9,
    )
    n = int(re.search(r"(\d+) outlier\(s\)", console).group(1))
    assert n == s["density"]["n_outliers"]
    assert "report written to" in console


BAD_REPORT = [
    (["--model", "nosuchmodule:make"], "--model 'nosuchmodule:make': cannot import module"),
    (["--model", "usermod"], "not an import path"),
    (["--model", "usermod:nothere"], "has no attribute 'nothere'"),
    (["--model", "usermod:CONST"], "is a int, not an nn.Module"),
    (["--model", "usermod:returns_int"], "returned a int"),
    (["--model", "nofile.py:make"], "no file"),
    (["--checkpoint", "absent.pt"], "--checkpoint: checkpoint not found"),
    (["--checkpoint", "garbage.pt"], "weights_only=True"),
    (["--checkpoint", "pickled.pt"], "weights_only=True"),
    (["--checkpoint", "shapes.pt"], "2.weight: model (3, 6) vs given (2, 6)"),
    (["--checkpoint", "missing.pt"], "missing 1 parameter(s): ['0.bias']"),
    (["--data", "usermod:numpy_data"], "data"),
    (["--loss", "bogus"], "--loss 'bogus' is not a known loss"),
    (["--sections", "bogus"], "--sections: unknown ['bogus']; the sections are eigenvalues"),
    (["--sections", "trajectory"], "'trajectory' needs --trajectory (3 checkpoints or more)"),
    (["--sections", "connectivity"], "'connectivity' needs --pair A B"),
    (["--sections", "curve"], "'curve' needs --pair A B"),
    (["--rho", "0"], "--rho"),
    (["--rho", "abc"], "--rho must be a number, got 'abc'"),
    (["--rho", "inf"], "--rho must be a finite number"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-0.1"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--momentum", "1"], "--momentum"),
    (["--curve-steps", "0"], "--curve-steps"),
    (["--grid", "2"], "--grid"),
    (["--k", "x"], "--k"),
    (["--seed", "-3"], "--seed"),
    (["--device", "nonsense"], "--device"),
    pytest.param(
        ["--device", "cuda"],
        "--device",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available"),
    ),
    (["--out", "/nonexistent/dir/r.html"], "--out"),
    (["--trajectory", "ck0.pt", "absent.pt"], "--trajectory: checkpoint not found"),
    (["--pair", "ck0.pt"], "--pair"),
    (["--bogus"], "--bogus"),
]


@pytest.mark.parametrize(
    "args,text", BAD_REPORT, ids=lambda a: " ".join(a) if isinstance(a, list) else ""
)
def test_report_bad_argument_is_one_line_and_status_2(
    project, tmp_path, monkeypatch, capsys, args, text
):
    d, _, _ = project
    monkeypatch.chdir(d)
    out = ["--out", str(tmp_path / "r.html")] if "--out" not in args else []
    argv = REPORT + out + FAST + args
    try:
        status = cli.main(argv)
    except SystemExit as e:  # argparse's usage errors
        status = e.code
    cap = capsys.readouterr()
    assert status == 2, cap.err
    lines = cap.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lossviz: error: "), cap.err
    assert text in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_report_bad_checkpoint_in_a_process(project, tmp_path):
    d, _, _ = project
    r = lossviz(*REPORT, "--checkpoint", "shapes.pt", "--out", str(tmp_path / "r.html"), cwd=d)
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("lossviz: error: --checkpoint 'shapes.pt' does not match")
    assert "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_report_missing_option(project, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["report", "--data", "usermod:make_data"])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "lossviz: error: the following arguments are required: --model "
        "(see 'lossviz report --help')"
    ]


def test_an_error_in_the_users_module_keeps_its_traceback(project, monkeypatch):
    d, _, _ = project
    monkeypatch.chdir(d)
    with pytest.raises(RuntimeError, match="a bug in the user code"):
        cli.main(["report", "--model", "broken:make", "--data", "usermod:make_data"])


def test_report_ctrl_c_is_one_line_status_130_and_no_report(project, tmp_path):
    d, _, _ = project
    p = subprocess.Popen(
        [sys.executable, "-m", "lossviz", *REPORT, "--out", str(tmp_path / "r.html")]
        + ["--grid", "400", "--sections", "surface"],
        cwd=d,
        env=_env(LOSSVIZ_PROGRESS="0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = p.stdout.readline()  # the model is loaded, the report starts
        assert first.startswith("usermod:make_net: Sequential"), first + p.stderr.read()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, (p.returncode, err)
    assert err.splitlines() == ["lossviz: interrupted; no report written"], err
    assert list(tmp_path.iterdir()) == []


# help, version ------------------------------------------------------------------------------
def test_every_option_has_help():
    ap = cli.parser()
    subs = [a for a in ap._actions if isinstance(a, argparse._SubParsersAction)][0]
    assert set(subs.choices) == {"report", "demo", "lab", "playground"}
    for name, sp in [("lossviz", ap), *subs.choices.items()]:
        for a in sp._actions:
            if isinstance(a, argparse._SubParsersAction):
                continue
            assert a.help and a.help != argparse.SUPPRESS and len(a.help) > 8, (name, a.dest)


def test_version_in_a_process(tmp_path):
    r = lossviz("--version", cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"lossviz {lossviz_pkg.__version__}"
    assert r.stderr == ""


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["report", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--model", "--data", "--checkpoint", "--trajectory", "--pair", "--sections"):
        assert opt in out
    with pytest.raises(SystemExit) as e:
        cli.main([])
    assert e.value.code == 2 and len(capsys.readouterr().err.splitlines()) == 1


# demo ---------------------------------------------------------------------------------------
BAD = [
    (["--steps", "0"], "--steps"),
    (["--steps", "-1"], "--steps"),
    (["--steps", "abc"], "--steps"),
    (["--steps", "1"], "--steps"),  # the PCA plane of the path needs 3 checkpoints
    pytest.param(
        ["--device", "cuda"],
        "--device",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available"),
    ),
    (["--device", "nonsense"], "--device"),
    (["--device", "meta"], "--device"),
    (["--seed", "-1"], "--seed"),
    (["--seed", "1.5"], "--seed"),
    (["--out", "/nonexistent/dir/r.html"], "--out"),
    (["--out", "."], "--out"),  # a directory
    (["--bogus"], "--bogus"),
]


@pytest.mark.parametrize("args,name", BAD, ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_demo_bad_argument_is_one_line_and_status_2(args, name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    try:
        status = cli.main(["demo", *args])
    except SystemExit as e:
        status = e.code
    cap = capsys.readouterr()
    assert status == 2, cap.err
    lines = cap.err.splitlines()
    assert len(lines) == 1, cap.err
    assert lines[0].startswith("lossviz: error: ") and name in lines[0], lines
    assert "Traceback" not in cap.err and cap.out == ""
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written


def test_demo_quiet_run_prints_nothing_and_writes_the_report(tmp_path):
    """A real run of the demo (a thin call to lv.report): no output at all, with the
    progress bars on by default."""
    r = lossviz("demo", "--quiet", "--out", "r.html", "--device", "cpu", cwd=tmp_path, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout == "" and r.stderr == ""
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # no temporary file left
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>") and text.rstrip().endswith("</html>")
    assert "trained 300 SGD steps" in text
    s = summary_of(text)
    assert s["sections"][-3:] == ["trajectory", "topology", "roughness"]
    assert s["trajectory"]["minimum_inside"]
    assert list(s["layers"]) == ["0 (Linear 64→64)", "2 (Linear 64→64)", "4 (Linear 64→10)"]


def test_demo_ctrl_c_is_one_line_status_130_and_no_report(tmp_path):
    p = subprocess.Popen(
        [sys.executable, "-m", "lossviz", "demo", "--steps", "2", "--out", "r.html"],
        cwd=tmp_path,
        env=_env(LOSSVIZ_PROGRESS="0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = p.stdout.readline()  # training is over, the curvature computations start
        assert first.startswith("trained MLP"), first + p.stderr.read()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, (p.returncode, err)
    assert err.splitlines() == ["lossviz: interrupted; no report written"], err
    assert list(tmp_path.iterdir()) == []


def test_demo_function_checks_its_arguments(tmp_path):
    for kw, name in [
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"seed": -1}, "seed"),
        ({"device": "nonsense"}, "device"),
        ({"quiet": "yes"}, "quiet"),
    ]:
        with pytest.raises(LossvizError, match=name):
            cli.demo(str(tmp_path / "r.html"), **kw)
    with pytest.raises(LossvizError, match="out"):
        cli.demo(str(tmp_path / "missing" / "r.html"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "exc,status,line",
    [
        (
            LossvizError("data is empty\nsecond line"),
            2,
            "lossviz: error: data is empty; second line",
        ),
        (KeyboardInterrupt(), 130, "lossviz: interrupted; no report written"),
    ],
)
def test_errors_during_the_run(monkeypatch, capsys, tmp_path, exc, status, line):
    def fail(*a, **k):
        raise exc

    monkeypatch.setattr(cli, "_demo", fail)
    assert cli.main(["demo", "--out", str(tmp_path / "r.html"), "--device", "cpu"]) == status
    err = capsys.readouterr().err
    assert err.splitlines() == [line]


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    def bug(*a, **k):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "_demo", bug)
    with pytest.raises(ZeroDivisionError):
        cli.main(["demo", "--out", str(tmp_path / "r.html"), "--device", "cpu"])


@pytest.mark.parametrize("quiet", [False, True])
def test_warnings_are_one_line_or_silenced(monkeypatch, capsys, tmp_path, quiet):
    import warnings

    def warn(*a, **k):
        warnings.warn("the loss is not finite\nat this point", stacklevel=1)

    monkeypatch.setattr(cli, "_demo", warn)
    args = ["demo", "--out", str(tmp_path / "r.html"), "--device", "cpu"]
    assert cli.main(args + ["--quiet"] * quiet) == 0
    err = capsys.readouterr().err
    assert err == ("" if quiet else "lossviz: warning: the loss is not finite; at this point\n")


# lab, playground ----------------------------------------------------------------------------
def test_lab_command_opens_py_notebooks_as_notebooks(monkeypatch, tmp_path):
    """The JupyterLab command, and the default-viewer setting it adds for this server only
    (read back through jupyterlab_server, as the running server reads it)."""
    pytest.importorskip("jupyterlab_server")
    pytest.importorskip("jupytext")
    seen = {}

    def run(argv, env):
        from jupyterlab_server.settings_utils import _get_overrides

        seen["argv"], seen["env"] = argv, env
        monkeypatch.setenv("JUPYTER_CONFIG_PATH", env["JUPYTER_CONFIG_PATH"])
        seen["overrides"] = _get_overrides(str(tmp_path / "no-app-settings"))[0]
        return 0

    monkeypatch.setattr(cli, "_run", run)
    assert cli.main(["lab", str(tmp_path), "--port", "8890", "--no-browser", "--allow-root"]) == 0
    argv = seen["argv"]
    assert argv[:3] == [sys.executable, "-m", "jupyterlab"]
    assert f"--ServerApp.root_dir={tmp_path.resolve()}" in argv
    assert "--ServerApp.port=8890" in argv and "--no-browser" in argv and "--allow-root" in argv
    viewers = seen["overrides"]["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]
    assert viewers["python"] == "Jupytext Notebook"
    assert not Path(seen["env"]["JUPYTER_CONFIG_PATH"].split(os.pathsep)[0]).exists()  # removed


def test_lab_defaults_to_the_notebooks_folder(capsys):
    assert cli.main(["lab", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"--ServerApp.root_dir={ROOT / 'notebooks'}" in out and "JUPYTER_CONFIG_PATH=" in out


@pytest.mark.parametrize(
    "args,missing,text",
    [
        (["lab"], "jupyterlab", "needs jupyterlab"),
        (["lab"], "jupyterlab", "not installed here: pip install 'lossviz[notebooks]'"),
        (["lab"], "jupytext", "needs jupytext"),
        (["playground"], "voila", "needs voila"),
        (["lab", "/nonexistent/folder"], None, "is not a directory"),
        (["lab", "--port", "0"], None, "--port"),
        (["playground", "--notebook", "/nonexistent.py"], None, "no playground notebook"),
    ],
)
def test_lab_and_playground_errors(monkeypatch, capsys, args, missing, text):
    real = cli.importlib.util.find_spec
    monkeypatch.setattr(
        cli.importlib.util, "find_spec", lambda name: None if name == missing else real(name)
    )
    monkeypatch.setattr(cli, "_run", lambda argv, env: pytest.fail("must not start a server"))
    assert cli.main(args) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lossviz: error: ") and text in lines[0]


def test_playground_serves_the_jupytext_notebook_with_voila(monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    pytest.importorskip("voila")
    seen = {}

    def run(argv, env):
        nb = Path(argv[3])
        seen["argv"], seen["cells"] = argv, [c.cell_type for c in jupytext.read(nb).cells]
        seen["nb"] = nb
        return 0

    monkeypatch.setattr(cli, "_run", run)
    assert cli.main(["playground", "--no-browser", "--port", "8877"]) == 0
    argv = seen["argv"]
    assert argv[:3] == [sys.executable, "-m", "voila"] and argv[3].endswith("playground.ipynb")
    assert "--port=8877" in argv and "--no-browser" in argv
    src = jupytext.read(ROOT / "notebooks" / "playground.py")
    assert seen["cells"] == [c.cell_type for c in src.cells] and "markdown" in seen["cells"]
    assert not seen["nb"].exists()  # a temporary copy, never next to the source


def test_report_flatness_topology_and_curve_options(project, tmp_path, monkeypatch):
    """--lr / --momentum / --rho reach the flatness section, --curve-steps the curve; the
    numbers are those of the kernels called directly on the same model."""
    d, usermod, states = project
    monkeypatch.chdir(d)
    monkeypatch.setenv("LOSSVIZ_PROGRESS", "0")
    out = tmp_path / "r.html"
    args = [
        *REPORT,
        "--checkpoint",
        "ck1.pt",
        "--pair",
        "ck1.pt",
        "ck2.pt",
        "--sections",
        "flatness",
        "topology",
        "curve",
        "--rho",
        "0.02",
        "--lr",
        "0.5",
        "--momentum",
        "0.9",
        "--curve-steps",
        "20",
        "--out",
        str(out),
        "--quiet",
        *FAST,
    ]
    assert cli.main(args) == 0
    s = summary_of(out.read_text(encoding="utf-8"))
    assert s["sections"] == ["flatness", "topology", "curve"]
    net = usermod.make_net()
    net.load_state_dict(states[1])
    obj = lossviz_pkg.Objective(net, nn.functional.cross_entropy, usermod.make_data())
    f = s["flatness"]
    assert f["rho"] == 0.02
    st = f["stability"]
    assert st["lr"] == 0.5 and st["momentum"] == 0.9
    H = dense_hessian(net, nn.functional.cross_entropy, usermod.make_data())
    lam = float(torch.linalg.eigvalsh(H)[-1])
    assert st["lambda_max"] == pytest.approx(lam, rel=1e-5)
    assert st["threshold"] == pytest.approx(3.8 / 0.5)
    assert st["stable"] == (lam < 3.8 / 0.5)
    assert s["curve"]["steps"] == 20
    c = lossviz_pkg.connect(obj, states[1], states[2], steps=20, n=5, progress=False)
    assert s["curve"]["barrier"] == pytest.approx(c.barrier("loss"), rel=1e-9)
    assert s["topology"]["random"]["n_basins"] >= 1
