"""params.yaml as YAML: DVC's float spelling read as floats, and a key given twice refused.

Shared by the params loader (medqa.config) and the overlays (medqa.overlay); kept apart from the
typed params so each module does one job.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from medqa.errors import ConfigError


class _ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads ``2e-05`` as a float.

    PyYAML follows YAML 1.1, where a float needs a dot ("2.0e-5"); DVC writes params with a YAML 1.2
    dumper, so `dvc exp run -S train.learning_rate=2e-5` leaves ``learning_rate: 2e-05`` in
    params.yaml, which plain PyYAML reads back as a string.
    """


_ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _refuse_duplicate_keys(node: yaml.Node, path: str = "") -> None:
    """Raise on a key given twice in one mapping: YAML loaders keep the last silently, so a second
    ``seed:`` further down a group would override the first without a word."""
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicate_keys(item, path)
    if not isinstance(node, yaml.MappingNode):
        return
    first_line: dict[tuple[str, Any], int] = {}
    for key_node, value_node in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may override keys on purpose
            continue
        ident = (
            key_node.tag,
            key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node),
        )
        name = f"{path}.{key_node.value}" if path else str(key_node.value)
        line = key_node.start_mark.line + 1
        if ident in first_line:
            raise ConfigError(
                f"duplicate key {name} at line {line} (first at line {first_line[ident]})"
            )
        first_line[ident] = line
        _refuse_duplicate_keys(value_node, name)


def load_yaml(text: str) -> Any:
    """Parse params-style YAML as DVC writes it (see _ParamsLoader), refusing duplicate keys."""
    loader = _ParamsLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()
