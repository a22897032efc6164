"""YAML for the files users write (``--config``, ``--space``): PyYAML's safe loader, minus silent overrides.

YAML leaves duplicate mapping keys to the implementation and PyYAML keeps the later one without a word,
so a config that sets ``epochs: 60`` near the top and ``epochs: 2`` further down trains for 2 epochs and
nobody notices. :func:`load_strict` refuses such a file with :class:`DuplicateKeyError`, which names the
key and both lines; merge keys (``<<: *defaults``) and the explicit keys that override them stay allowed.
"""

from __future__ import annotations

from typing import Any, Callable

import yaml

MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKeyError(yaml.YAMLError):
    """A mapping sets one key twice: ``key`` at line ``first`` and again at line ``line`` (1-based)."""

    def __init__(self, key: Any, first: int, line: int):
        super().__init__(f"key {key!r} appears twice, at line {first} and at line {line}")
        self.key, self.first, self.line = key, first, line


def _loader(same_key: Callable[[Any], Any]) -> type[yaml.SafeLoader]:
    """A SafeLoader whose every mapping checks its keys, compared as ``same_key(key)``."""

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, int] = {}
                for key_node, _ in node.value:
                    if key_node.tag == MERGE_TAG:
                        continue
                    line = key_node.start_mark.line + 1
                    try:
                        key = same_key(self.construct_object(key_node, deep=True))
                        if key in seen:
                            raise DuplicateKeyError(key, seen[key], line)
                    except TypeError:  # an unhashable key: SafeLoader's own error says so below
                        continue
                    seen[key] = line
            return super().construct_mapping(node, deep)

    return StrictLoader


def load_strict(text: str, same_key: Callable[[Any], Any] | None = None) -> Any:
    """``yaml.safe_load(text)``, but a mapping that names one key twice raises :class:`DuplicateKeyError`.

    ``same_key`` maps a key to what it means (``batch-size`` and ``batch_size`` are one setting of a
    config), so two spellings of one key count as a duplicate too; the error then names the meaning.
    """
    return yaml.load(text, Loader=_loader(same_key or (lambda k: k)))  # noqa: S506 (a SafeLoader)
