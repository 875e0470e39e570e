"""JSON output: every `--json`, plan.json and import.json is written here, indented with sorted keys,
so the same data always gives the same bytes."""

from __future__ import annotations

import json


def json_text(doc) -> str:
    """A whole JSON output: `dumps_json` and a final newline."""
    return dumps_json(doc) + "\n"


def dumps_json(obj, *, ensure_ascii: bool = True) -> str:
    """`json.dumps(obj, indent=2, sort_keys=True)`, the same text, written without the pure-Python
    encoder's generators (json has no C path for indented output): a plan of a thousand apps is
    over a million values. Anything but plain JSON data is left to json.dumps itself."""
    quote = json.encoder.encode_basestring_ascii if ensure_ascii else json.encoder.encode_basestring
    out: list[str] = []
    write = out.append

    def value(o, indent: str) -> None:
        if isinstance(o, str):
            write(quote(o))
        elif o is None:
            write("null")
        elif o is True:
            write("true")
        elif o is False:
            write("false")
        elif type(o) is int:
            write(int.__repr__(o))
        elif type(o) is float and o == o and o not in (float("inf"), float("-inf")):
            write(float.__repr__(o))
        elif type(o) is dict:
            if not o:
                write("{}")
                return
            inner = indent + "  "
            if not all(type(k) is str for k in o):
                raise _NotPlain
            write("{")
            first = True
            for k in sorted(o):
                write(("\n" if first else ",\n") + inner + quote(k) + ": ")
                first = False
                value(o[k], inner)
            write("\n" + indent + "}")
        elif type(o) in (list, tuple):
            if not o:
                write("[]")
                return
            inner = indent + "  "
            write("[")
            first = True
            for item in o:
                write(("\n" if first else ",\n") + inner)
                first = False
                value(item, inner)
            write("\n" + indent + "]")
        else:
            raise _NotPlain

    try:
        value(obj, "")
    except _NotPlain:
        return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=ensure_ascii)
    return "".join(out)


class _NotPlain(Exception):
    """A value dumps_json leaves to json.dumps (non-string keys, NaN, subclasses, ...)."""
