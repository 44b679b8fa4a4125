"""The ``gpux`` command: Typer app, global flags, and the one place errors become exit codes.

Command modules import the engine inside their functions, so ``gpux --help``
loads neither numpy nor onnxruntime.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from gpux._version import __version__
from gpux.cli import build as build_cmd
from gpux.cli.bench import bench_app
from gpux.cli import chat as chat_cmd
from gpux.cli import common
from gpux.cli import info as info_cmd
from gpux.cli import inspect as inspect_cmd
from gpux.cli import pull as pull_cmd
from gpux.cli import run as run_cmd
from gpux.cli import serve as serve_cmd
from gpux.cli import store_cmds
from gpux.cli import validate as validate_cmd
from gpux.cli import verify as verify_cmd
from gpux.errors import GpuxError

app = typer.Typer(
    name="gpux",
    help="Run, inspect and benchmark ONNX models on the best execution provider of this machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

def _version(value: bool) -> None:
    if value:
        typer.echo(f"gpux {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(  # noqa: UP007 - typer needs Optional here
        None, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks and onnxruntime warnings."),
) -> None:
    """gpux: a hardware-universal runtime for ONNX models."""
    common.state["verbose"] = verbose


app.command("pull", no_args_is_help=True)(pull_cmd.pull)
app.command("run", no_args_is_help=True)(run_cmd.run)
app.command("chat", no_args_is_help=True)(chat_cmd.chat)
app.command("inspect", no_args_is_help=True)(inspect_cmd.inspect)
app.command("build", no_args_is_help=True)(build_cmd.build)
app.command("serve")(serve_cmd.serve)
app.command("ls")(store_cmds.ls)
app.command("rm", no_args_is_help=True)(store_cmds.rm)
app.command("prune")(store_cmds.prune)
app.command("validate", no_args_is_help=True)(validate_cmd.validate)
app.command("verify")(verify_cmd.verify)
app.command("info")(info_cmd.info)
app.add_typer(bench_app, name="bench")


def main() -> None:
    """Entry point: run the app, turn gpux errors into one line on stderr and their exit code."""
    try:
        app(prog_name="gpux")
    except GpuxError as exc:
        if common.state["verbose"]:
            import traceback

            traceback.print_exc()
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except Exception as exc:  # a bug: say so in one line; -v shows where
        if common.state["verbose"]:
            raise
        sys.stderr.write(f"error: internal error: {type(exc).__name__}: {exc} "
                         "(run with -v for the traceback, and please report it)\n")
        sys.exit(1)
