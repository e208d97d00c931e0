"""Run a ported Keras guide statement by statement and count how many statements run.

Each top-level statement of the script (``ast``) runs in one shared namespace, in order;
a statement that raises is recorded (line, exception type, first line of the message) and
the run goes on with the next one. Statements that fail only because an earlier one failed
(a ``NameError`` for a name that a failed statement should have bound) still count as
failed, and are marked with the line of that earlier statement. Bare string statements
(the guides' prose) are not counted. Statements whose lines carry a ``# fnn-port:`` comment
other than ``# fnn-port: import`` count as changed from the original guide.

    python examples/keras_guides/run_guide.py examples/keras_guides/functional_api.py
    python examples/keras_guides/run_guide.py --plain GUIDE     # run it as a script
    python examples/keras_guides/run_guide.py --keras GUIDE     # the same, with Keras 3

``--keras`` undoes the ``# fnn-port: import`` lines (``import fnn as keras`` becomes
``import keras``): the reference run with Keras 3 itself on the same data. Guides run in a
fresh temporary directory (the files they save land there) unless ``--cwd`` is given.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import contextlib
import dataclasses
import io
import json
import os
import re
import runpy
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
GUIDES = (
    "functional_api.py",
    "sequential_model.py",
    "making_new_layers_and_models_via_subclassing.py",
    "timeseries_classification_from_scratch.py",
    "text_classification_with_transformer.py",
)
KERAS_RAN = HERE / "keras_reference.json"  # statements that ran with Keras 3 (--with-keras)
_PORT = re.compile(r"#\s*fnn-port:\s*(.*)$")


@dataclasses.dataclass
class Failure:
    """One statement that raised."""

    line: int
    source: str  # the statement's first line
    error: str  # exception type name
    message: str  # first line of the message
    after: int | None = None  # line of the failed statement this one depends on
    where: str = ""  # innermost frame inside fnn/, when the error came from there

    def __str__(self) -> str:
        text = f"line {self.line}: {self.error}: {self.message}"
        if self.after is not None:
            text += f"  (after line {self.after} failed)"
        return f"{text}\n    {self.source}" + (f"\n    at {self.where}" if self.where else "")


@dataclasses.dataclass
class Result:
    """A run's counts: ``ran`` of ``total`` statements; ``changed`` carry a port comment."""

    path: str
    total: int
    ran: int
    changed: list[int]  # first lines of the changed statements
    failures: list[Failure]
    seconds: float
    timings: list[tuple[float, int]] = dataclasses.field(default_factory=list)  # (s, line)
    unbound: dict[str, int] = dataclasses.field(default_factory=dict)  # name -> failed line
    output: str = ""  # what the guide printed (when run quietly)
    namespace: dict = dataclasses.field(repr=False, default_factory=dict)

    @property
    def ran_unchanged(self) -> int:
        failed = {f.line for f in self.failures}
        return self.ran - sum(1 for line in self.changed if line not in failed)

    def cause_of(self, name: str) -> Failure | None:
        """The root failure that left ``name`` unbound, if a failure did."""
        by_line = {f.line: f for f in self.failures}
        failure = by_line.get(self.unbound.get(name, -1))
        while failure is not None and failure.after in by_line:
            failure = by_line[failure.after]
        return failure

    def root_causes(self) -> list[tuple[Failure, int]]:
        """Each failure that did not follow from an earlier one, with the number of
        statements that failed because of it (itself included)."""
        by_line = {f.line: f for f in self.failures}
        counts: dict[int, int] = {}
        for failure in self.failures:
            root = failure
            while root.after is not None and root.after in by_line:
                root = by_line[root.after]
            counts[root.line] = counts.get(root.line, 0) + 1
        return [(by_line[line], n) for line, n in counts.items()]

    def summary(self) -> str:
        return (
            f"ran {self.ran} of {self.total} statements "
            f"({len(self.changed)} changed for the port, {self.ran_unchanged} ran unchanged; "
            f"{self.seconds:.1f}s)"
        )


def _is_prose(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _bound_names(node: ast.stmt) -> set[str]:
    """Names a top-level statement binds (assignments, defs, classes, imports, loops)."""
    names = set()
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        names.add(node.name)
    elif isinstance(node, ast.Import | ast.ImportFrom):
        names.update((a.asname or a.name).split(".")[0] for a in node.names)
    else:
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign | ast.AugAssign | ast.For):
            targets = [node.target]
        elif isinstance(node, ast.With):
            targets = [i.optional_vars for i in node.items if i.optional_vars is not None]
        for target in targets:
            names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def _fnn_frame(exc: BaseException) -> str:
    """``fnn/...py:LINE in FUNC`` of the innermost frame inside the fnn package, if any."""
    where = ""
    for frame in traceback.extract_tb(exc.__traceback__):
        parts = Path(frame.filename).parts
        if "fnn" in parts and "keras_guides" not in parts:
            rel = Path(*parts[len(parts) - 1 - parts[::-1].index("fnn") :])
            where = f"{rel}:{frame.lineno} in {frame.name}"
    return where


def port_source(path: str | os.PathLike, keras: bool = False) -> str:
    """The guide's source; with ``keras=True`` its ``# fnn-port: import`` lines use Keras."""
    text = Path(path).read_text()
    if not keras:
        return text
    lines = []
    for line in text.splitlines(keepends=True):
        match = _PORT.search(line)
        if match and match.group(1).strip().startswith("import"):
            line = line.replace("import fnn as keras", "import keras")
            line = line.replace("from fnn import", "from keras import")
        lines.append(line)
    return "".join(lines)


@contextlib.contextmanager
def _guide_environment(path: Path, cwd: str | None, quiet: bool):
    """cwd, sys.path (the guide's folder, for ``_port``), a headless matplotlib, stdout
    (captured into the yielded ``StringIO`` when ``quiet``)."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("KERAS_BACKEND", "jax")
    old_cwd, old_path = os.getcwd(), list(sys.path)
    with contextlib.ExitStack() as stack:
        if cwd is None:
            cwd = stack.enter_context(tempfile.TemporaryDirectory(prefix="keras_guide_"))
        os.chdir(cwd)
        sys.path.insert(0, str(path.parent))
        captured = io.StringIO()
        if quiet:
            stack.enter_context(contextlib.redirect_stdout(captured))
        try:
            yield captured
        finally:
            os.chdir(old_cwd)
            sys.path[:] = old_path


def run_guide(
    path: str | os.PathLike,
    *,
    keras: bool = False,
    cwd: str | None = None,
    quiet: bool = False,
    echo=None,
) -> Result:
    """Run ``path`` statement by statement; returns the counts, failures and namespace.

    ``echo(failure)`` is called for each failure as it happens (``print`` on the CLI).
    """
    path = Path(path).resolve()
    source = port_source(path, keras=keras)
    lines = source.splitlines()
    tree = ast.parse(source, filename=str(path))
    namespace = {"__name__": "__main__", "__file__": str(path), "__builtins__": builtins}
    failed_names: dict[str, int] = {}  # name -> line of the failed statement binding it
    failures, changed, timings, total, ran = [], [], [], 0, 0
    start = time.perf_counter()
    with _guide_environment(path, cwd, quiet) as captured:
        for node in tree.body:
            if _is_prose(node):
                continue
            total += 1
            span = lines[node.lineno - 1 : node.end_lineno]
            ports = [m.group(1).strip() for m in map(_PORT.search, span) if m]
            if any(not p.startswith("import") for p in ports):
                changed.append(node.lineno)
            code = compile(ast.Module([node], type_ignores=[]), str(path), "exec")
            began = time.perf_counter()
            try:
                exec(code, namespace)
            except (Exception, SystemExit) as exc:
                message = (str(exc).strip().splitlines() or [""])[0]
                message = message.replace(f"{HERE.parents[1]}{os.sep}", "")
                after = None
                if isinstance(exc, NameError) and exc.name in failed_names:
                    after = failed_names[exc.name]
                failure = Failure(
                    node.lineno,
                    span[0].strip(),
                    type(exc).__name__,
                    message,
                    after,
                    _fnn_frame(exc),
                )
                failures.append(failure)
                for name in _bound_names(node):  # unbind them: later users fail visibly
                    failed_names[name] = node.lineno
                    namespace.pop(name, None)
                if echo is not None:
                    echo(failure)
            else:
                ran += 1
                for name in _bound_names(node):
                    failed_names.pop(name, None)
            finally:
                timings.append((time.perf_counter() - began, node.lineno))
    seconds = time.perf_counter() - start
    return Result(
        str(path),
        total,
        ran,
        changed,
        failures,
        seconds,
        timings,
        failed_names,
        captured.getvalue(),
        namespace,
    )


def run_plain(path: str | os.PathLike, *, keras: bool = False, cwd: str | None = None) -> dict:
    """Run the whole guide as one script (stops at the first error, like ``python GUIDE``)."""
    path = Path(path).resolve()
    if not keras:
        with _guide_environment(path, cwd, quiet=False):
            return runpy.run_path(str(path), run_name="__main__")
    namespace = {"__name__": "__main__", "__file__": str(path)}
    with _guide_environment(path, cwd, quiet=False):
        exec(compile(port_source(path, keras=True), str(path), "exec"), namespace)
    return namespace


_BEGIN, _END = "<!-- measurements: begin -->", "<!-- measurements: end -->"


def _cause(failure: Failure) -> str:
    return f"{failure.error}: {failure.message}"


def report(results: dict[str, Result], reference: dict[str, int] | None = None) -> str:
    """The README's measurement table: one row per guide, root causes with what they cost.
    ``reference``: statements that ran with Keras 3, by guide file name."""
    rows = [
        "| guide | statements | changed for the port | ran (fnn) | ran unchanged (fnn) | "
        "ran (Keras 3) | failing statements: line, cause (+ statements failing after it) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, result in results.items():
        causes = "; ".join(
            f"{f.line} `{_cause(f)[:90]}`" + (f" (+{n - 1})" if n > 1 else "")
            for f, n in result.root_causes()
        )
        ref = (reference or {}).get(Path(name).name, "-")
        rows.append(
            f"| {Path(name).stem} | {result.total} | {len(result.changed)} | {result.ran} | "
            f"{result.ran_unchanged} | {ref} | {causes or 'none'} |"
        )
    return "\n".join(rows)


def failure_report(results: dict[str, Result], stamp: str) -> str:
    """Failure causes across all guides, grouped by exact error text, costliest first."""
    groups: dict[str, list[tuple[str, Failure, int]]] = {}
    for name, result in results.items():
        for failure, n in result.root_causes():
            groups.setdefault(_cause(failure), []).append((Path(name).stem, failure, n))
    order = sorted(groups.items(), key=lambda kv: -sum(n for _, _, n in kv[1]))
    lines = [
        f"# Keras guides on fnn: failure causes ({stamp})",
        "",
        "Each cause: the exact error, how many statements fail because of it (itself and",
        "the statements after it that use what it should have made), and every statement",
        "that triggers it. Regenerate: `PYTHONPATH=. python examples/keras_guides/run_guide.py"
        " --report`.",
        "",
        report(results),
        "",
    ]
    for rank, (cause, hits) in enumerate(order, 1):
        lost = sum(n for _, _, n in hits)
        lines.append(f"## {rank}. `{cause}` - {lost} statements in {len(hits)} place(s)")
        for guide, failure, n in hits:
            where = f" (raised at {failure.where})" if failure.where else ""
            lines.append(f"- {guide}:{failure.line} `{failure.source}` -> {n}{where}")
        lines.append("")
    return "\n".join(lines)


def update_readme(readme: Path, table: str) -> None:
    """Replace the block between the measurement markers of ``readme`` with ``table``."""
    text = readme.read_text()
    head, rest = text.split(_BEGIN, 1)
    _, tail = rest.split(_END, 1)
    readme.write_text(f"{head}{_BEGIN}\n{table}\n{_END}{tail}")


def main(argv=None) -> int:
    """CLI: prints each failing statement and ``ran N of M statements``; exit 1 on failures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("guides", nargs="*", help=f"guide scripts (default: all in {HERE})")
    parser.add_argument("--plain", action="store_true", help="run each guide as one script")
    parser.add_argument("--keras", action="store_true", help="reference run with Keras 3")
    parser.add_argument("--cwd", help="working directory (default: a fresh temporary one)")
    parser.add_argument("-q", "--quiet", action="store_true", help="hide the guides' output")
    parser.add_argument("--times", action="store_true", help="print the slowest statements")
    parser.add_argument(
        "--report",
        action="store_true",
        help="run all guides quietly, rewrite README.md's table and the failures file",
    )
    parser.add_argument(
        "--with-keras",
        action="store_true",
        help=f"--report: also run Keras 3 (-> {KERAS_RAN.name})",
    )
    parser.add_argument("--failures", default="/work/guides_failures.md", help="--report output")
    parser.add_argument("--no-readme", action="store_true", help="--report: leave README.md")
    args = parser.parse_args(argv)
    guides = args.guides or [str(HERE / g) for g in GUIDES]
    if args.report:
        results = {g: run_guide(g, cwd=args.cwd, quiet=True) for g in guides}
        if args.with_keras:
            reference = {
                Path(g).name: run_guide(g, keras=True, cwd=args.cwd, quiet=True).ran for g in guides
            }
            KERAS_RAN.write_text(json.dumps(reference, indent=1) + "\n")
        reference = json.loads(KERAS_RAN.read_text()) if KERAS_RAN.exists() else None
        import fnn

        where = Path(fnn.__file__).parent.parent
        sha = subprocess.run(
            ["git", "-C", str(where), "log", "-1", "--format=%h"], capture_output=True, text=True
        ).stdout.strip()
        stamp = f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, fnn from {where} ({sha})"
        if not args.no_readme:
            update_readme(HERE / "README.md", f"Measured {stamp}.\n\n{report(results, reference)}")
        Path(args.failures).write_text(failure_report(results, stamp))
        for g, r in results.items():
            print(f"{Path(g).stem}: {r.summary()}")
        return 0
    status = 0
    for guide in guides:
        print(f"== {guide}", flush=True)
        if args.plain:
            run_plain(guide, keras=args.keras, cwd=args.cwd)
            continue
        result = run_guide(
            guide,
            keras=args.keras,
            cwd=args.cwd,
            quiet=args.quiet,
            echo=lambda f: print(f"FAILED {f}", file=sys.__stdout__, flush=True),
        )
        print(result.summary(), flush=True)
        if args.times:
            for seconds, line in sorted(result.timings, reverse=True)[:8]:
                print(f"  {seconds:6.2f}s  line {line}")
        status |= bool(result.failures)
    return status


if __name__ == "__main__":
    sys.exit(main())
