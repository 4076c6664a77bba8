"""Reading YAML while remembering where every value came from.

PyYAML's safe loader forgets line numbers and silently keeps the last of two
duplicate keys.  This module composes the node tree itself and turns it into
plain Python values, except that every mapping becomes a `Located` dict that
knows its own line and the line of each key.  A duplicate key is reported,
not resolved.  config.py is the only user.
"""

import yaml
import yaml.constructor


class Located(dict):
    """A mapping from the file, with `line` (its own) and `lines[key]`."""

    def __init__(self, line):
        super().__init__()
        self.line = line
        self.lines = {}


class YamlProblem(Exception):
    """A syntax error or duplicate key, with its 1-based line."""

    def __init__(self, line, key, message):
        super().__init__(message)
        self.line = line
        self.key = key
        self.message = message


def load(text):
    """Parse text; return (value, problems).  value is None for an empty file."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else 1
        return None, [YamlProblem(line, None, f"YAML syntax: {err.problem or err}")]
    finally:
        loader.dispose()
    if node is None:
        return None, []
    problems = []
    return _plain(node, yaml.constructor.SafeConstructor(), problems), problems


MERGE_TAG = "tag:yaml.org,2002:merge"


def _plain(node, constructor, problems):
    if isinstance(node, yaml.MappingNode):
        out = Located(node.start_mark.line + 1)
        merges = []
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                merges.append(value_node)
                continue
            key = _plain(key_node, constructor, problems)
            line = key_node.start_mark.line + 1
            if isinstance(key, (dict, list)):
                problems.append(YamlProblem(line, None, "a mapping key must be a plain value"))
                continue
            if key in out:
                problems.append(YamlProblem(
                    line, key, f"duplicate key (first given on line {out.lines[key]})"))
                continue
            out[key] = _plain(value_node, constructor, problems)
            out.lines[key] = line
        for value_node in merges:
            _merge(out, value_node, constructor, problems)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_plain(child, constructor, problems) for child in node.value]
    try:
        return constructor.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError as err:
        problems.append(YamlProblem(node.start_mark.line + 1, None, str(err.problem)))
        return None
    except (ValueError, TypeError, OverflowError) as err:   # a tag that does not fit: !!int x
        problems.append(YamlProblem(node.start_mark.line + 1, None,
                                    f"{node.value!r} cannot be read as {node.tag.rpartition(':')[2]}: {err}"))
        return None


def _merge(out, node, constructor, problems):
    """A merge key (`<<: *defaults`, or a list of them): each mapping's keys
    join `out` unless given already, by `out` itself or an earlier mapping."""
    sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
    for source in sources:
        if not isinstance(source, yaml.MappingNode):
            problems.append(YamlProblem(node.start_mark.line + 1, "<<",
                                        "a merge key takes a mapping or a list of mappings"))
            return
        merged = _plain(source, constructor, problems)
        for key, value in merged.items():
            if key not in out:
                out[key] = value
                out.lines[key] = merged.lines[key]
