"""What the commands print through: a rich console sized for pipes, and progress events as bars."""

from __future__ import annotations

from typing import Any


def new_console():
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:  # piped or captured: don't squeeze tables into 80 columns
        console = Console(highlight=False, width=120)

    def closed_pipe() -> None:  # rich would exit 1; `main` ends a closed pipe quietly (141) for every command
        console.quiet = True
        raise BrokenPipeError(32, "Broken pipe")

    console.on_broken_pipe = closed_pipe
    return console


class CliProgress:
    """Draws progress events as rich progress bars, one line per task."""

    def __init__(self, console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.console = console
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
                             TimeRemainingColumn(), console=console, transient=True)
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> CliProgress:
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bars.__exit__(*exc)

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "step":
            label = f"[{event['index'] + 1}/{event['total']}] {event['kind']}"
            if event.get("outputs"):
                label += f" → {', '.join(event['outputs'])}"
            if event["status"] == "start":
                self.bars.console.print(f"[bold]{label}[/bold]")
            else:
                self.bars.console.print(f"  {event['status']} in {event.get('seconds', 0):.1f} s")
        elif kind == "progress":
            task = event.get("task", "work")
            if task not in self.tasks:
                self.tasks[task] = self.bars.add_task(f"  {task}", total=event.get("total") or None, info="")
            self.bars.update(self.tasks[task], completed=event.get("done", 0), total=event.get("total") or None)
        elif kind == "metric":
            task = event.get("task", "work")
            info = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                             for k, v in event.items() if k not in ("type", "task", "time"))
            if task in self.tasks:
                self.bars.update(self.tasks[task], info=info)
        elif kind == "log":
            self.bars.console.print(f"  {event.get('message', '')}")
