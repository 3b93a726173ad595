"""The ``lossviz`` command line: every bad argument is one line on stderr and exit status 2
before any work starts, ``--quiet`` prints nothing, Ctrl-C is one line and exit status 130
with no report left behind, and ``python -m lossviz`` works."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lossviz.cli as cli
from lossviz import LossvizError

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
def test_bad_argument_is_one_line_and_status_2(args, name, tmp_path):
    r = lossviz("demo", *args, cwd=tmp_path, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("lossviz: error: ") and name in lines[0], lines
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written


def test_help_and_missing_command(tmp_path):
    r = lossviz("--help", cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and "demo" in r.stdout and r.stderr == ""
    r = lossviz("demo", "--help", cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and "--quiet" in r.stdout and "--steps" in r.stdout
    r = lossviz(cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr


def test_quiet_run_prints_nothing_and_writes_the_report(tmp_path):
    """A real run: no output at all, with the progress bars on by default. (The default
    300 steps: a barely trained network makes the trace and block estimates run to their
    budgets, which costs more than the training saved.)"""
    r = lossviz("demo", "--quiet", "--out", "r.html", "--device", "cpu", cwd=tmp_path, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout == "" and r.stderr == ""
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # no temporary file left
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>") and text.rstrip().endswith("</html>")
    assert "trained 300 SGD steps" in text


def test_ctrl_c_is_one_line_status_130_and_no_report(tmp_path):
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


# in-process: the paths the subprocess runs above cannot reach cheaply


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


def test_partial_result_stops_the_demo():
    class Partial:
        complete = False

    with pytest.raises(KeyboardInterrupt):
        cli._whole(Partial())
    assert cli._whole(3) == 3


def test_report_is_written_whole_or_not_at_all(monkeypatch, tmp_path):
    path = tmp_path / "r.html"
    path.write_text("old")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cli._write_atomic(path, "new")
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"] and path.read_text() == "old"
    monkeypatch.undo()
    cli._write_atomic(path, "new")
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"] and path.read_text() == "new"
    assert path.stat().st_mode & 0o044  # an ordinary file, not mkstemp's private 0600


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
