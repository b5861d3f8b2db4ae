"""The graph as GraphML (Gephi, yEd, Cytoscape) or node-link JSON (D3, networkx).

GraphML attributes must be scalars of one declared type, so list properties (aliases)
are written as JSON text and a key's type is the widest seen for it. A node's ``label`` is
its label (Document, Chunk, Entity), an edge's its relationship type (HAS_CHUNK,
MENTIONS, RELATED); a RELATED edge's own ``type`` property names the relation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO
from xml.sax.saxutils import escape, quoteattr

FORMATS = ("graphml", "json")


def write(nodes: list[dict[str, Any]], edges: list[dict[str, Any]], fmt: str,
          out: TextIO) -> None:
    if fmt == "json":
        json.dump({"directed": True, "multigraph": True, "nodes": [
            {**n["properties"], "id": n["id"], "label": n["label"]} for n in nodes],
            "links": [{**e["properties"], "source": e["source"], "target": e["target"],
                       "label": e["type"]} for e in edges]}, out, indent=1, default=str)
        out.write("\n")
    elif fmt == "graphml":
        _graphml(nodes, edges, out)
    else:
        raise ValueError(f"unknown format {fmt!r}")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "long"
    if isinstance(value, float):
        return "double"
    return "string"


def _keys(items: list[dict[str, Any]], extra: dict[str, Any]) -> dict[str, str]:
    kinds: dict[str, set[str]] = {name: {_kind(v)} for name, v in extra.items()}
    for item in items:
        for name, value in item["properties"].items():
            if value is not None:
                kinds.setdefault(name, set()).add(_kind(value))
    widest = {}
    for name, seen in kinds.items():
        widest[name] = (next(iter(seen)) if len(seen) == 1 else
                        "double" if seen <= {"long", "double"} else "string")
    return widest


def _text(value: Any, kind: str) -> str:
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    if kind == "boolean":
        return "true" if value else "false"
    return str(value)


def _graphml(nodes: list[dict[str, Any]], edges: list[dict[str, Any]], out: TextIO) -> None:
    node_keys = _keys(nodes, {"label": ""})
    edge_keys = _keys(edges, {"label": ""})
    out.write('<?xml version="1.0" encoding="UTF-8"?>\n<graphml '
              'xmlns="http://graphml.graphdrawing.org/xmlns">\n')
    for scope, keys, prefix in (("node", node_keys, "n"), ("edge", edge_keys, "e")):
        for name, kind in sorted(keys.items()):
            out.write(f'  <key id={quoteattr(prefix + "_" + name)} for="{scope}" '
                      f'attr.name={quoteattr(name)} attr.type="{kind}"/>\n')
    out.write('  <graph id="sutazai" edgedefault="directed">\n')
    for node in nodes:
        out.write(f'    <node id={quoteattr(str(node["id"]))}>')
        props = {**node["properties"], "label": node["label"]}
        for name, value in sorted(props.items()):
            if value is not None:
                out.write(f'<data key={quoteattr("n_" + name)}>'
                          f'{escape(_text(value, node_keys[name]))}</data>')
        out.write("</node>\n")
    for index, edge in enumerate(edges):
        out.write(f'    <edge id="e{index}" source={quoteattr(str(edge["source"]))} '
                  f'target={quoteattr(str(edge["target"]))}>')
        props = {**edge["properties"], "label": edge["type"]}
        for name, value in sorted(props.items()):
            if value is not None:
                out.write(f'<data key={quoteattr("e_" + name)}>'
                          f'{escape(_text(value, edge_keys[name]))}</data>')
        out.write("</edge>\n")
    out.write("  </graph>\n</graphml>\n")


def export_file(nodes: list[dict[str, Any]], edges: list[dict[str, Any]], fmt: str,
                path: Path) -> None:
    """Write atomically: a reader never sees half an export."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        write(nodes, edges, fmt, out)
    tmp.replace(path)
