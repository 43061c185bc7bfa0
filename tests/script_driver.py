"""Run several Python scripts (or ``-c`` code) one after another in this one process, each as
``python SCRIPT ARGS...`` (``python -c CODE ARGS...``) would run it in a process of its own,
and write what each did (exit status, stdout, stderr) as JSON.

For tests that would otherwise start one process per script, each paying 3-4 s of importing
torch, detectron2 and cat_seg before doing anything: here the imports are paid once.

    python script_driver.py SPEC.json OUT.json

SPEC: ``{"preload": CODE, "runs": [RUN, ...]}``; a RUN is ``{"id": ..., "script": PATH}`` or
``{"id": ..., "code": CODE}``, with optional ``"argv"`` (the arguments after the script) and
``"cwd"`` (default: this process's). OUT: ``{"runs": {id: {"returncode", "stdout", "stderr"}}}``.

Each run gets what a process of its own would: ``sys.argv``, ``sys.path[0]`` (the script's
folder; ``""`` for code), the working directory, ``__main__``, a fresh copy of the environment
variables, and its exit status as Python computes it from ``SystemExit`` or an uncaught
exception. Output is captured at the file-descriptor level (so that C code, loggers holding
``sys.stdout`` and child processes are captured too). ``preload`` (code importing what every
one of the scripts imports at its start) runs once first, with no folder of its own on
``sys.path``, and its output (a traceback if it fails) is put before every run's own, as each
separate process would have printed it. Not reproduced, since the runs share one
interpreter: modules already imported by an earlier run (their import-time output appears
in the first run that imports them only), warnings shown once per process (a warning one
run printed is not printed again by a later one), the logging configuration, detectron2's
registries and module-level caches a run filled, threads a run left running, and ``atexit``
handlers (they run once, when this process exits). The runs given to it are ones whose
checks do not depend on these.
"""
import json
import os
import runpy
import sys
import tempfile
import traceback

# this file's folder is not on a script's path
del sys.path[0]


def captured(fn):
    """``(result of fn(), stdout bytes, stderr bytes)`` of ``fn`` with fds 1 and 2 redirected."""
    saved, files = [], []
    sys.stdout.flush()
    sys.stderr.flush()
    for fd in (1, 2):
        saved.append(os.dup(fd))
        files.append(tempfile.TemporaryFile())
        os.dup2(files[-1].fileno(), fd)
    try:
        result = fn()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, old in zip((1, 2), saved):
            os.dup2(old, fd)
            os.close(old)
    out = []
    for f in files:
        f.seek(0)
        out.append(f.read())
        f.close()
    return (result, *out)


def exit_status(code) -> int:
    """The exit status of a process that raised ``SystemExit(code)`` (as Python computes it)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def preload(code):
    try:
        exec(compile(code, "<preload>", "exec"), {"__name__": "__preload__"})
    except BaseException:
        traceback.print_exc()


def run_one(run) -> int:
    if run.get("script") is not None:
        script = run["script"]
        sys.argv = [script, *run.get("argv", [])]
        sys.path.insert(0, os.path.dirname(os.path.realpath(script)))
    else:
        sys.argv = ["-c", *run.get("argv", [])]
        sys.path.insert(0, "")
    try:
        if run.get("script") is not None:
            runpy.run_path(script, run_name="__main__")
        else:
            exec(compile(run["code"], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        return 0
    except SystemExit as exc:
        return exit_status(exc.code)
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        del sys.path[0]


def text(output: bytes) -> str:
    """``output`` as ``subprocess.run(..., text=True)`` gives it (universal newlines)."""
    return output.decode(errors="replace").replace("\r\n", "\n").replace("\r", "\n")


def main(spec_path, out_path):
    with open(spec_path) as f:
        spec = json.load(f)
    _, pre_out, pre_err = captured(lambda: preload(spec.get("preload", "")))
    cwd, environ, argv, path = os.getcwd(), dict(os.environ), list(sys.argv), list(sys.path)
    results = {}
    for run in spec["runs"]:
        os.chdir(run.get("cwd") or cwd)
        try:
            code, out, err = captured(lambda: run_one(run))
        finally:
            os.chdir(cwd)
            os.environ.clear()
            os.environ.update(environ)
            sys.argv, sys.path[:] = list(argv), path
        results[run["id"]] = {"returncode": code, "stdout": text(pre_out + out), "stderr": text(pre_err + err)}
    with open(out_path, "w") as f:
        json.dump({"runs": results}, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
