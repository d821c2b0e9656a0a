"""``lightpipe stages``: every stage with its parameters, generated from the declarations."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lightpipe.core import registry


def parameter_rows(params_model: Any) -> list[tuple[str, str, str, str, str, str]]:
    """(name, type, unit, default, bounds, description) of each parameter of a pydantic model."""
    rows = []
    for name, info in params_model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        bounds = []
        for meta in info.metadata:
            for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
                if getattr(meta, attr, None) is not None:
                    bounds.append(f"{sym}{getattr(meta, attr)}")
        annotation = getattr(info.annotation, "__name__", None) or str(info.annotation).replace("typing.", "")
        default = "required" if info.is_required() else repr(info.get_default(call_default_factory=True))
        rows.append((name, annotation, str(extra.get("unit", "")), default, " ".join(bounds), info.description or ""))
    return rows


def print_stages(out: Console, err: Console, only: str | None = None) -> int:
    """Print every registered stage (or only ``only``); report plugins that failed to import."""
    stages = registry.load_all("stages")
    if only is not None:
        if only not in stages:
            err.print(f"[red]unknown stage {only!r}[/]; known: {', '.join(sorted(stages))}")
            return 2
        stages = {only: stages[only]}
    for name, cls in sorted(stages.items()):
        out.print(f"\n[bold cyan]{name}[/]  ({cls.kind})  {cls.summary()}")
        for label, ports in (("inputs", cls.inputs), ("outputs", cls.outputs)):
            for port_name, port in ports.items():
                out.print(escape(f"  {label[:-1]:6} {port_name}: {port.describe()}  {port.description}"))
        rows = parameter_rows(cls.Params)
        if rows:
            table = Table(show_edge=False, pad_edge=False, box=None, header_style="dim")
            for col in ("parameter", "type", "unit", "default", "bounds", "description"):
                table.add_column(col)
            for row in rows:
                table.add_row(*(escape(cell) for cell in row))
            out.print(table)
    for name, why in registry.broken("stages").items():
        err.print(f"[yellow]stage {name!r} failed to import and is unavailable:[/] {why}")
    return 0
