"""Console output: the plan as phases and per-node steps, and problems as paragraphs."""
from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.tree import Tree

from bmctl.config.problems import Problem

if TYPE_CHECKING:
    from bmctl.phases.plan import PlannedPhase

def _console(stderr: bool) -> Console:
    # emoji=False: rich would turn ":100:" of "file.yaml:100:3" into an emoji; user text is escaped
    # wherever markup is on, so neither markup nor emoji codes in it are ever read.
    console = Console(stderr=stderr, highlight=False, soft_wrap=True, emoji=False)
    if not console.is_terminal:
        console.width = 200  # logs and pipes: do not crop plan lines at 80 columns
    return console


out = _console(stderr=False)
err = _console(stderr=True)


def print_problems(problems: list[Problem]) -> None:
    for p in problems:
        style = "bold red" if p.severity == "error" else "yellow"
        err.print(f"[{style}]{escape(p.severity)}[/]" + escape(p.render()[len(p.severity):]))
        err.print()


def print_plan(planned: list[PlannedPhase]) -> None:
    for i, pp in enumerate(planned, 1):
        tree = Tree(f"[bold]Phase {i}/{len(planned)}: {escape(pp.phase.title)}[/]")
        by_target: dict[str, Tree] = {}
        for step in pp.steps:
            node = by_target.get(step.target)
            if node is None:
                node = by_target[step.target] = tree.add(f"[cyan]{escape(step.target)}[/]")
            leaf = node.add(escape(step.title))
            for f in step.files:
                leaf.add(f"[dim]{escape(f.path)}[/] ({oct(f.mode)[2:]})")
        out.print(tree)
