"""The ``agent-swarm`` command line.

Commands are imported lazily (only the one being run), so ``--help`` stays fast. The single
error boundary is :meth:`SwarmGroup.main`: user errors become ``Error: …`` / ``Hint: …`` on
stderr with the error's exit code; anything unexpected is an internal error (exit 70) whose
traceback is shown only with ``--debug`` or ``AGENT_SWARM_DEBUG=1``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import click

from agent_swarm.cli.context import AppContext
from agent_swarm.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, AgentSwarmError

# name -> ("module:attribute", short help). Order is the order of `--help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "init-base": ("images:init_base", "Create or register a base image."),
    "project": ("project:project", "Manage project VMs (the templates tasks are cloned from)."),
    "create": ("tasks:create", "Create a task VM cloned from a project's template."),
    "fork": ("tasks:fork", "Branch a running task into new running tasks (memory and disk)."),
    "list": ("tasks:list_", "List task VMs with their live state."),
    "start": ("tasks:start", "Start a stopped task VM."),
    "stop": ("tasks:stop", "Stop a task VM."),
    "delete": ("tasks:delete", "Delete a task VM and its disk."),
    "ssh": ("access:ssh", "SSH into a task VM (interactive, or run a command)."),
    "run": ("access:run", "Run a command inside a task VM."),
    "code": ("access:code", "Open VS Code connected to a task VM."),
    "cp": ("access:cp", "Copy files between the host and a VM."),
    "ssh-config": ("access:ssh_config", "Print or install the SSH config for all VMs."),
    "bulk": ("bulk:bulk", "Create or delete many task VMs in parallel."),
    "env": ("env:env", "Manage encrypted environment variables injected into VMs."),
    "checkpoint": ("snapshots:checkpoint", "Checkpoint a VM (memory too when running)."),
    "restore": ("snapshots:restore", "Restore a VM to a checkpoint."),
    "checkpoints": ("snapshots:checkpoints", "List a VM's checkpoints."),
    "status": ("status:status", "Show host resources and what the VMs use."),
    "providers": ("status:providers", "Show which VM providers this host can run, and why not."),
    "doctor": ("status:doctor", "Find (and with --fix repair) inconsistent state."),
    "gc": ("status:gc", "Remove template generations no VM uses."),
}
# Not in --help: run by OpenSSH (ProxyCommand in the generated ssh_config), not by people.
HIDDEN: dict[str, str] = {"ssh-proxy": "access:ssh_proxy"}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def __init__(
        self, *args: Any, lazy: dict[str, tuple[str, str]] | None = None, **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self.lazy = lazy or {}
        self.unlisted: dict[str, str] = {}  # lazy too, but not in --help

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*self.lazy, *sorted(super().list_commands(ctx))]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        ref = self.lazy[name][0] if name in self.lazy else self.unlisted.get(name)
        if ref is not None:
            module, _, attr = ref.partition(":")
            cmd = getattr(importlib.import_module(f"agent_swarm.cli.commands.{module}"), attr)
            assert isinstance(cmd, click.Command)
            return cmd
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help from the table: no import of any command module for `--help`.
        rows = [(n, h) for n, (_, h) in self.lazy.items()]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


GLOBAL_FLAGS = ("--json", "--debug")


def _hoist_global_flags(argv: list[str]) -> list[str]:
    """Accept the global flags after the command too (`agent-swarm list --json`), but never
    from a guest command after `--`."""
    end = argv.index("--") if "--" in argv else len(argv)
    words = [i for i, a in enumerate(argv[:end]) if not a.startswith("-")]
    path = [argv[i] for i in words[:2]]
    if path[:1] in (["run"], ["ssh"]) or path[:2] in (["project", "run"], ["project", "ssh"]):
        # Everything after the command word may belong to the guest command.
        end = words[0] + 1 if path[0] != "project" else words[1] + 1
    flags = [a for a in argv[:end] if a in GLOBAL_FLAGS]
    rest = [a for a in argv[:end] if a not in GLOBAL_FLAGS]
    return list(dict.fromkeys(flags)) + rest + argv[end:]


class SwarmGroup(LazyGroup):
    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.unlisted = HIDDEN

    def main(  # type: ignore[override]
        self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: Any
    ) -> None:
        argv = _hoist_global_flags(list(sys.argv[1:] if args is None else args))
        debug = os.environ.get("AGENT_SWARM_DEBUG") == "1" or "--debug" in argv
        as_json = "--json" in argv
        try:
            rv = super().main(
                args=argv, prog_name=prog_name or "agent-swarm", standalone_mode=False, **extra
            )
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except (click.Abort, KeyboardInterrupt):
            _flush_quietly()
            print("Interrupted.", file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)
        except AgentSwarmError as exc:
            if debug:
                traceback.print_exc()
            _report(exc.message, exc.hint, exc.exit_code, as_json)
            sys.exit(exc.exit_code)
        except BrokenPipeError:
            # Output piped into `head` & co: not an error.
            _devnull_stdout()
            sys.exit(0)
        except Exception as exc:  # the boundary: anything else is a bug
            if debug:
                traceback.print_exc()
            _report(
                f"Internal error: {type(exc).__name__}: {exc}",
                "rerun with --debug for details and report it as a bug",
                EXIT_INTERNAL,
                as_json,
                prefix="",
            )
            sys.exit(EXIT_INTERNAL)
        sys.exit(rv if isinstance(rv, int) else 0)


def _report(msg: str, hint: str | None, code: int, as_json: bool, prefix: str = "Error: ") -> None:
    _flush_quietly()
    if as_json:
        print(json.dumps({"error": msg, "hint": hint, "exit_code": code}), file=sys.stderr)
        return
    click.echo(f"{prefix}{msg}", err=True)
    if hint:
        click.echo(f"Hint: {hint}", err=True)


def _flush_quietly() -> None:
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()


def _devnull_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


@click.group(
    cls=SwarmGroup,
    lazy=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(None, "-V", "--version", package_name="agent-swarm", prog_name="agent-swarm")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logging.")
@click.pass_context
def cli(ctx: click.Context, as_json: bool, debug: bool) -> None:
    """Isolated VMs for running many AI coding agents in parallel.

    Set up a project VM once, seal it with `project stop`, then clone task VMs from it
    copy-on-write in well under a second. State lives in ~/.agent-swarm (AGENT_SWARM_HOME).

    \b
    Exit codes: 0 ok, 1 failure, 2 usage, 3 not found, 4 provider unavailable,
    70 internal error, 130 interrupted; `run`/`ssh` pass the guest command's code through.
    """
    if debug:
        import logging

        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
        logging.getLogger("paramiko").propagate = True
    ctx.obj = AppContext(as_json=as_json, debug=debug)
    ctx.call_on_close(ctx.obj.close)


def main() -> None:
    cli.main()
