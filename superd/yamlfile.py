"""Reading YAML while remembering where every value came from.

PyYAML's safe loader forgets line numbers and silently keeps the last of two
duplicate keys.  This module composes the node tree itself and turns it into
plain Python values, except that every mapping becomes a `Located` dict that
knows its own line and the line of each key.  A duplicate key is reported,
not resolved.  config.py is the only user.

The input may be hostile (anyone who can write an included file), so loading
is bounded: aliases are counted as the tree would expand, before any value is
built (a "billion laughs" document is refused in milliseconds), a structure
that contains itself or nests past the interpreter's stack is a problem, not a
RecursionError, and no message is longer than MESSAGE_MAX characters.
"""

import yaml
import yaml.constructor
import yaml.reader


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
        self.message = bounded(message)


# Values the document may expand to, aliases counted each time they are used.
# A services.yaml of a hundred services is a few thousand.
MAX_VALUES = 100_000
MESSAGE_MAX = 240


def bounded(message):
    """message in at most MESSAGE_MAX characters, so that none carries the
    attacker's megabyte: its beginning (what is wrong) and end (what to do)
    are kept, and the middle, where a quoted value sits, is dropped."""
    if len(message) <= MESSAGE_MAX:
        return message
    return message[:160] + " ... " + message[165 - MESSAGE_MAX:]


def load(text):
    """Parse text; return (value, problems).  value is None for an empty file."""
    try:
        node, first_alias = _compose(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else 1
        return None, [YamlProblem(line, None, f"YAML syntax: {err.problem or err}")]
    except yaml.reader.ReaderError as err:   # a control character, bad UTF-8
        line = text.count("\n", 0, err.position) + 1
        return None, [YamlProblem(line, None, f"YAML syntax: {err.reason}, character #x{err.character:02x}"
                                  if isinstance(err.character, int) else f"YAML syntax: {err.reason}")]
    except RecursionError:
        return None, [YamlProblem(1, None, "YAML nests too deeply")]
    if node is None:
        return None, []
    try:
        size = _expanded_size(node, {}, set())
    except RecursionError:
        return None, [YamlProblem(first_alias or 1, None,
                                  "aliases nest too deeply (the first alias is on this line)")]
    if size is None:
        return None, [YamlProblem(first_alias or 1, None,
                                  "a value contains itself through an alias (the first alias is on this line)")]
    if size > MAX_VALUES:
        return None, [YamlProblem(first_alias or 1, None,
                                  f"aliases expand past {MAX_VALUES} values (the first alias is on this line)")]
    problems = []
    try:
        return _plain(node, yaml.constructor.SafeConstructor(), problems), problems
    except RecursionError:
        return None, [YamlProblem(1, None, "YAML nests too deeply")]


class _CountingLoader(yaml.SafeLoader):
    """A SafeLoader that remembers the line of the first alias it composes."""

    first_alias = None

    def compose_node(self, parent, index):
        if self.first_alias is None and self.check_event(yaml.AliasEvent):
            self.first_alias = self.peek_event().start_mark.line + 1
        return super().compose_node(parent, index)


def _compose(text):
    loader = _CountingLoader(text)
    try:
        return loader.get_single_node(), loader.first_alias
    finally:
        loader.dispose()


def _expanded_size(node, sizes, open_nodes):
    """How many values node expands to, each shared (aliased) node counted
    every time it is used; None if node contains itself.  Each node is visited
    once (sizes memoizes), so this is linear in the document, not its expansion."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        return None
    open_nodes.add(key)
    total = 1
    children = node.value if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) else ()
    for child in children:
        for part in (child if isinstance(node, yaml.MappingNode) else (child,)):
            size = _expanded_size(part, sizes, open_nodes)
            if size is None:
                return None
            total += size
    open_nodes.discard(key)
    sizes[key] = total
    return total


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
    except Exception as err:   # a tag that does not fit: !!int x, !!timestamp b
        problems.append(YamlProblem(node.start_mark.line + 1, None,
                                    f"cannot be read as {node.tag.rpartition(':')[2]}: "
                                    f"{node.value!r} ({err})"))
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
