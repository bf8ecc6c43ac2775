"""Helpers shared by the CLI commands: waiting with progress, columns."""
from cliff import command

from mec_conpaas.cli import client as client_mod


class ApiCommand(command.Command):
    """Turns API errors into one clear line and exit status 1."""

    def run(self, parsed_args):
        try:
            return super().run(parsed_args)
        except client_mod.ApiError as e:
            self.app.stderr.write("error: %s\n" % e.message)
            return 1


def add_wait_args(parser):
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--wait", dest="wait", action="store_true", default=True,
                       help="wait for the operation, showing progress (default)")
    group.add_argument("--no-wait", dest="wait", action="store_false",
                       help="return the operation id at once")
    parser.add_argument("--timeout", type=int, default=600)
    return parser


def wait_for(app, result, parsed_args):
    """Wait for the operation in an accepted response; return it."""
    op = result["operation"]
    if not parsed_args.wait:
        return op
    op = wait_all(app, [op], parsed_args.timeout)[0]
    if op["state"] == "FAILED":
        raise client_mod.ApiError(0, "operation %s failed: %s" % (op["id"], op["error"]))
    return op


def wait_all(app, ops, timeout):
    """Wait for operations, one progress bar each; return them ended."""
    from rich.console import Console
    from rich.progress import BarColumn
    from rich.progress import Progress
    from rich.progress import TextColumn
    console = Console(file=app.stderr)
    with Progress(TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.percentage:>3.0f}%"), console=console,
                  transient=not console.is_terminal) as progress:
        tasks = {o["id"]: progress.add_task(o["kind"], total=100) for o in ops}

        def show(o):
            progress.update(tasks[o["id"]], completed=o["progress"],
                            description="%s %s: %s" % (o["kind"], o["service"] or "",
                                                       o["step"]))
        return app.client.wait_all([o["id"] for o in ops], timeout, show)


def operation_columns(op):
    keys = ("id", "kind", "service", "state", "progress", "step", "error",
            "attempts", "created_at", "updated_at")
    return keys, tuple(op.get(k) for k in keys)
