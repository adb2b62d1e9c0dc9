"""Live progress of a screening job: one bar per stage with done / running / failed counts and an ETA.

On a cluster a second view counts tasks per node (running, done, failed), printed once the job has used more than one.
Units are the work a stage is made of — temperatures for transport tasks, hops for NEB tasks — so the
bar moves while a long task runs. Without a terminal, a one-line summary is printed every few seconds.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field


@dataclass
class StageCounts:
    total_tasks: int = 0
    done: int = 0
    running: int = 0
    failed: int = 0
    reused: int = 0
    reused_units: float = 0.0
    units_total: float = 0.0
    units_done: dict[int, float] = field(default_factory=dict)  # task id → units done

    @property
    def units_completed(self) -> float:
        return sum(self.units_done.values())


class JobProgress:
    """Tracks tasks by stage; ``units_per_task[task_id]`` is the task's number of units (≥ 1)."""

    def __init__(self, stage_of: dict[int, str], units_per_task: dict[int, int], *, stream=None, live: bool | None = None,
                 interval_s: float = 5.0):
        self.stage_of = stage_of
        self.units = dict(units_per_task)
        self.stages: dict[str, StageCounts] = {}
        for task_id, stage in stage_of.items():
            c = self.stages.setdefault(stage, StageCounts())
            c.total_tasks += 1
            c.units_total += self.units.get(task_id, 1)
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.interval_s = interval_s
        self._last_print = 0.0
        self._started = time.monotonic()
        self._rich = None
        self._bars: dict[str, int] = {}
        self.node_of: dict[int, str] = {}  # task id -> node of its current attempt
        self.nodes: dict[str, dict[str, int]] = {}  # node -> {"running": n, "done": n, "failed": n, "retried": n}

    # --------------------------------------------------------------- updates
    def on_node(self, task_id: int, node: str | None) -> None:
        """The task's attempt now runs on ``node`` (call before ``mark(task_id, "running")``)."""
        if node:
            self.node_of[task_id] = node
            self._node_counts(node)["running"] += 1

    def _node_counts(self, node: str) -> dict[str, int]:
        return self.nodes.setdefault(node, {"running": 0, "done": 0, "failed": 0, "retried": 0})

    def _node_end(self, task_id: int, state: str) -> None:
        node = self.node_of.pop(task_id, None)
        if node is None:
            return
        counts = self._node_counts(node)
        counts["running"] = max(0, counts["running"] - 1)
        key = {"done": "done", "failed": "failed", "retry": "retried", "cancelled": "failed"}.get(state)
        if key:
            counts[key] += 1

    def mark(self, task_id: int, state: str) -> None:
        if state in ("done", "failed", "cancelled", "retry"):
            self._node_end(task_id, state)
        c = self.stages[self.stage_of[task_id]]
        if state == "running":
            c.running += 1
        elif state in ("done", "reused", "failed", "cancelled"):
            if c.running and state != "reused":
                c.running -= 1
            if state == "failed":
                c.failed += 1
            else:
                c.done += 1
                if state == "reused":
                    c.reused += 1
                    c.reused_units += self.units.get(task_id, 1)
            c.units_done[task_id] = self.units.get(task_id, 1)
        elif state == "retry" and c.running:
            c.running -= 1
        self.render()

    def progress(self, task_id: int, event: dict) -> None:
        """A worker's event: ``temperature`` (with its index) as each starts, ``hop`` after each NEB hop."""
        c = self.stages[self.stage_of[task_id]]
        if event.get("stage") == "temperature" and "index" in event:
            c.units_done[task_id] = float(event["index"])
        elif event.get("stage") == "hop" and event.get("total"):
            total = int(event["total"])
            if total != self.units.get(task_id, 1):
                c.units_total += total - self.units.get(task_id, 1)
                self.units[task_id] = total
            c.units_done[task_id] = float(event["done"])
        self.render()

    # --------------------------------------------------------------- output
    def eta_s(self, c: StageCounts) -> float | None:
        """Seconds left at the rate units were computed so far (reused results do not count as speed)."""
        worked = c.units_completed - c.reused_units
        remaining = c.units_total - c.units_completed
        if worked <= 0 or remaining <= 0:
            return None
        return (time.monotonic() - self._started) / worked * remaining

    def line(self, stage: str) -> str:
        c = self.stages[stage]
        eta = self.eta_s(c)
        eta_text = f"ETA {eta / 60:.1f} min" if eta is not None else "ETA —"
        return (f"{stage:<9} {c.units_completed:>6.1f}/{c.units_total:<6.0f} units  tasks: {c.done} done"
                f" ({c.reused} reused), {c.running} running, {c.failed} failed of {c.total_tasks}  {eta_text}")

    def nodes_line(self) -> str | None:
        """Tasks per node, once the job has used more than one node; else None."""
        if len(self.nodes) < 2:
            return None
        parts = [f"{node}: {c['done']} done, {c['running']} running"
                 + (f", {c['failed']} failed" if c["failed"] else "") + (f", {c['retried']} retried" if c["retried"] else "")
                 for node, c in sorted(self.nodes.items())]
        return "nodes    " + "; ".join(parts)

    def render(self, force: bool = False) -> None:
        if self.live:
            self._render_rich()
            return
        now = time.monotonic()
        if force or now - self._last_print >= self.interval_s:
            self._last_print = now
            for stage in self.stages:
                print(f"[progress] {self.line(stage)}", file=self.stream, flush=True)
            if (nodes := self.nodes_line()) is not None:
                print(f"[progress] {nodes}", file=self.stream, flush=True)

    def _render_rich(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        if self._rich is None:
            self._rich = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[counts]}"),
                                  TimeRemainingColumn(), transient=False)
            self._rich.start()
            for stage, c in self.stages.items():
                self._bars[stage] = self._rich.add_task(stage, total=c.units_total, counts="")
        for stage, c in self.stages.items():
            self._rich.update(self._bars[stage], total=c.units_total, completed=c.units_completed,
                              counts=f"{c.done} done, {c.running} running, {c.failed} failed / {c.total_tasks}")
        if (nodes := self.nodes_line()) is not None:
            if "nodes" not in self._bars:
                self._bars["nodes"] = self._rich.add_task("nodes", total=None, counts="")
            self._rich.update(self._bars["nodes"], counts=nodes.removeprefix("nodes    "))

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
        else:
            self.render(force=True)
