"""The policy reference (docs/policy-reference.md), generated from the same JSON Schemas as policies/schema/.

Every field of every policy file with its type, default and the model's own description, so the reference cannot
drift from what the loader accepts. A unit test regenerates it and compares. Regenerate with

    mcp-gateway schema --reference docs/policy-reference.md
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

HEADER = """# Policy reference

Generated from the policy models by `mcp-gateway schema --reference docs/policy-reference.md`; do not edit by hand.
Each policy file in `policies/` is validated against these fields (unknown keys are errors). Types: `a | b` is
either; `list[x]` a YAML list; `map[x]` a mapping from names to x. A `-` default means required or none.

**Reloads and open sessions.** Lists (tools, resources, prompts) are filtered for their caller by tool rules
(tenants, `access.yaml`, keys), scopes and route access. A reload that changes what an open session's caller may
list sends that session `notifications/tools/list_changed` (and `resources/` / `prompts/` for those kinds) on its
Streamable HTTP GET stream or its legacy HTTP+SSE stream, once per reload and kind, so the client lists again; a
reload that changes nothing for the caller sends nothing. A keys.yaml key is judged by its record in the new policy
(a scope or tool-rule edit counts), other credentials by what they presented. Only sessions whose GET stream is open
through a gateway process that loaded the edit are told; with several replicas each notifies the streams it relays
when it reloads (docs/transports.md). WebSocket sessions are not notified.
"""


PIPE = "\\|"  # a literal pipe inside a Markdown table cell


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _type_of(node: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in node:
        return _ref_name(node["$ref"])
    if "anyOf" in node:
        return " | ".join(_type_of(n, defs) for n in node["anyOf"])
    if "enum" in node:
        return " | ".join(orjson.dumps(v).decode() for v in node["enum"])
    if "const" in node:
        return orjson.dumps(node["const"]).decode()
    t = node.get("type")
    if t == "array":
        return f"list[{_type_of(node.get('items', {}), defs)}]"
    if t == "object" and "additionalProperties" in node and isinstance(node["additionalProperties"], dict):
        return f"map[{_type_of(node['additionalProperties'], defs)}]"
    if isinstance(t, str):
        fmt = node.get("format")
        return f"{t} ({fmt})" if fmt else t
    return "any"


def _constraints(node: dict[str, Any]) -> str:
    parts = []
    for key, sym in (("exclusiveMinimum", ">"), ("minimum", ">="), ("exclusiveMaximum", "<"), ("maximum", "<=")):
        if key in node:
            parts.append(f"{sym} {node[key]}")
    if "minItems" in node:
        parts.append(f"at least {node['minItems']} item(s)")
    return ", ".join(parts)


def _default(node: dict[str, Any]) -> str:
    if "default" not in node:
        return "-"
    return f"`{orjson.dumps(node['default']).decode()}`"


def _object_table(title: str, node: dict[str, Any], defs: dict[str, Any]) -> list[str]:
    lines = [f"### `{title}`", ""]
    desc = node.get("description")
    if desc:
        lines += [" ".join(desc.split()), ""]
    lines += ["| field | type | default | notes |", "|---|---|---|---|"]
    required = set(node.get("required", []))
    for name, prop in node.get("properties", {}).items():
        notes = []
        if name in required:
            notes.append("required")
        c = _constraints(prop)
        if c:
            notes.append(c)
        if prop.get("description"):
            notes.append(" ".join(str(prop["description"]).split()))
        typ = _type_of(prop, defs).replace("|", PIPE)
        default = _default(prop).replace("|", PIPE)
        lines.append(f"| `{name}` | {typ} | {default} | {'; '.join(notes)} |")
    lines.append("")
    return lines


def render_reference(schemas: Mapping[str, dict[str, Any]]) -> str:
    """The reference page from the policy files' JSON Schemas (gateway/policy/schema.py `policy_schemas`)."""
    out = [HEADER]
    for file_name, schema in schemas.items():
        policy_file = file_name.replace(".schema.json", ".yaml")
        defs: dict[str, Any] = schema.get("$defs", {})
        out += [f"## `{policy_file}`", ""]
        out += _object_table(policy_file + " (top level)", schema, defs)
        for name in sorted(defs):
            node = defs[name]
            if node.get("type") == "object" and "properties" in node:
                out += _object_table(name, node, defs)
    return "\n".join(out).rstrip() + "\n"
