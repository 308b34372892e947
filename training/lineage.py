"""Round lineage as plain data: which model each round starts from, and the tree of rounds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from herdbook.db.errors import NotFound
from herdbook.training.settings import ModelChain


@dataclass(frozen=True)
class RoundNode:
    id: int
    parent_id: int | None
    mode: str
    status: str
    base_model: str
    output_path: str | None  # a pipeline folder (full) or an adapter folder (lora)


def chain_for(round_id: int | None, rounds: Mapping[int, RoundNode], base_model: str) -> ModelChain:
    """The model a finished round produced; None means the base model."""
    if round_id is None:
        return ModelChain(base_model)
    node = rounds.get(round_id)
    if node is None:
        raise NotFound(f"no round {round_id}")
    if node.status != "finished" or not node.output_path:
        raise NotFound(f"round {round_id} has not finished (it is {node.status})")
    if node.mode == "full":
        return ModelChain(node.output_path)
    parent = chain_for(node.parent_id, rounds, node.base_model)
    return ModelChain(parent.pipeline, (*parent.adapters, node.output_path))


def tree_lines(rounds: Mapping[int, RoundNode]) -> list[str]:
    """The lineage drawn as text, children under their parent, base at the top."""
    children: dict[int | None, list[int]] = {}
    for node in sorted(rounds.values(), key=lambda n: n.id):
        children.setdefault(node.parent_id, []).append(node.id)
    lines = ["base"]

    def walk(parent: int | None, indent: str) -> None:
        kids = children.get(parent, [])
        for i, child in enumerate(kids):
            last = i == len(kids) - 1
            node = rounds[child]
            lines.append(f"{indent}{'└─' if last else '├─'} round {child} ({node.mode}, {node.status})")
            walk(child, indent + ("   " if last else "│  "))

    walk(None, "")
    return lines
