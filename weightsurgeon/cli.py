"""The `surgeon` command: a click group whose subcommands load lazily, and the error contract.

Subcommands live in ``weightsurgeon/commands/<family>.py`` and are imported only when
invoked (or listed by --help), so `surgeon --help` never imports numba, torch,
transformers or matplotlib. Errors are handled here, once: a `SurgeonError` becomes one
``error: ...`` line on stderr and exit code 1; ``--debug`` shows the traceback; usage
errors keep click's exit code 2.
"""
from __future__ import annotations

import importlib
import os
import signal
import sys
import threading

import click

from weightsurgeon._version import __version__
from weightsurgeon.errors import Interrupted, SurgeonError

# name -> "module:attribute" of a click command.
COMMANDS: dict[str, str] = {
    "inspect": "weightsurgeon.commands.inspect:inspect_cmd",
    "verify": "weightsurgeon.commands.inspect:verify_cmd",
    "demo": "weightsurgeon.commands.demo:demo_cmd",
    "splice": "weightsurgeon.commands.surgery:splice_cmd",
    "zero": "weightsurgeon.commands.surgery:zero_cmd",
    "reinit": "weightsurgeon.commands.surgery:reinit_cmd",
    "remove": "weightsurgeon.commands.surgery:remove_cmd",
    "extract": "weightsurgeon.commands.surgery:extract_cmd",
    "cast": "weightsurgeon.commands.surgery:cast_cmd",
    "clean": "weightsurgeon.commands.clean:clean_cmd",
    "diff": "weightsurgeon.commands.diff:diff_cmd",
    "lineage": "weightsurgeon.commands.lineage:lineage_cmd",
    "plot": "weightsurgeon.commands.plot:plot_cmd",
    "compare-reports": "weightsurgeon.commands.compare:compare_cmd",
    "train": "weightsurgeon.commands.train:train_cmd",
    "recipe": "weightsurgeon.commands.train:recipe_group",
    "train-plot": "weightsurgeon.commands.train:train_plot_cmd",
    "eval": "weightsurgeon.commands.eval:eval_group",
    "probe": "weightsurgeon.commands.eval:probe_cmd",
}


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when that subcommand is needed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return super().get_command(ctx, name)
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="surgeon")
@click.option("--debug", is_flag=True, envvar="SURGEON_DEBUG", help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Streaming weight surgery for LLM checkpoints: which weights changed, and what do they do?

    \b
    Delta:        surgeon diff BASE TUNED -o report/
    Merge:        surgeon splice BASE DONOR --take o_proj -o merged/
    Destruction:  surgeon zero|reinit MODEL --module o_proj --layers 5-30 -o out/; surgeon remove MODEL --layers 5-30 -o out/
    Freeze:       surgeon train CONFIG.yaml; surgeon eval MODEL --tasks aime24,math500,gpqa_diamond
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _exit(code: int) -> None:
    """Exit without a second Ctrl-C during interpreter shutdown printing 'Exception ignored ...'."""
    if code and threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the group and apply the error contract."""
    args = list(argv if argv is not None else sys.argv[1:])
    debug = "--debug" in args or bool(os.environ.get("SURGEON_DEBUG"))
    try:
        # the exact command line travels in ctx.obj, for the model cards and surgeon.json
        rv = cli.main(args=argv, prog_name="surgeon", standalone_mode=False, obj={"argv": ["surgeon", *args]})
    except click.exceptions.Abort:
        click.echo("error: interrupted", err=True)
        _exit(1)
    except click.ClickException as e:  # usage errors: click's own message and exit code (2)
        e.show()
        _exit(e.exit_code)
    except (SurgeonError, Interrupted) as e:
        if debug:
            raise
        click.echo(f"error: {e}", err=True)
        _exit(1)
    except KeyboardInterrupt:
        if debug:
            raise
        click.echo("error: interrupted", err=True)
        _exit(1)
    except BrokenPipeError:
        sys.stderr.close()  # `surgeon ... | head`: not an error of ours
        sys.exit(0)
    except MemoryError:
        click.echo("error: out of memory", err=True)
        _exit(1)
    except OSError as e:
        if debug:
            raise
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        click.echo(f"error: {where}{e.strerror or e}", err=True)
        _exit(1)
    except Exception as e:  # a bug of ours: still one line, with a hint to --debug
        if debug:
            raise
        click.echo(f"error: internal error ({type(e).__name__}: {str(e)[:200]}); rerun with --debug for the traceback", err=True)
        _exit(1)
    _exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
