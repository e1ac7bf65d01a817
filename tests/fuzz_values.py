"""Hypothesis strategies of the fuzz harness (issue 23 §5): bad data files for the readers, bad values and
YAML for the config loader. `tests/test_fuzz.py` runs them; `tests/fuzz_cli.py` borrows `QUIRKS`."""

from __future__ import annotations

import gzip
import io
import json

from hypothesis import strategies as st

# Values a user might type for any option: YAML's surprises (yes/no/on/off/~ become booleans or null),
# numbers at and past every edge, lists and mappings where scalars belong, and plain nonsense.
QUIRKS = ["yes", "no", "on", "off", "~", "null", "Null", "true", "False", "", "''", "0", "-1", "1", "2", "7",
          "1e3", "1e30", "-1e30", "1e-30", "0x10", "0o7", "1_000", ".inf", "-.inf", ".nan", "nan", "inf",
          "99999999999999999999", "-99999999999999999999", "2147483648", "3.5", "-0.0", "[1, 2]", "[]", "{}",
          "{a: 1}", "[", "{", "'x", "!!python/object:os.system", "&a 1", "*a", "tiny", "../x", "/dev/null",
          "2026-01-01", "12:30", "\t", "a: b", "- x", "#", "é", "\x00"]

# JSONL lines past the usual: deep nesting, lone surrogates, huge numbers, NaN, a BOM mid-file, NUL bytes
ODD_LINES = ["[" * 5000 + "]" * 5000, '{"prompt": "a", "chosen": "\\ud800", "rejected": "b"}',
             '{"prompt": "a", "chosen": "b", "rejected": 1e999}', '{"prompt": NaN, "chosen": "b", "rejected": "c"}',
             '{"prompt": "a", "chosen": "b", "rejected": ' + "9" * 5000 + "}", "\ufeff{}", "\x00", '"just a string"',
             '{"prompt": "a", "prompt": "b", "chosen": "c", "rejected": "d"}']

PREFERENCE_KEYS = ["prompt", "chosen", "rejected", "instruction", "input", "output", "output_1", "output_2",
                   "preference", "label", "responses", "reference_output", "meta", "messages", "role", "content"]


def key_case(key: str) -> st.SearchStrategy[str]:
    """A format key as written, or in another case (``Prompt``, ``CHOSEN``), or with stray spaces."""
    return st.sampled_from([key, key.upper(), key.capitalize(), f" {key}", f"{key} "])


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40),
                      st.sampled_from(["", " ", "\n\nHuman: hi\n\nAssistant: yo", "1", "2", "\ufeff"]))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(PREFERENCE_KEYS), inner, max_size=4),
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "bot"]),
                                    "content": inner}), max_size=3)), max_leaves=12)


@st.composite
def rows(draw) -> dict:
    """A row built around real format keys (some cased wrongly), with values of any JSON type."""
    keys = draw(st.lists(st.sampled_from(PREFERENCE_KEYS), min_size=1, max_size=6, unique=True))
    row = {draw(key_case(k)): draw(json_value) for k in keys}
    if draw(st.booleans()):  # some rows are nearly right: fill the text fields with text
        row.update({k: draw(st.text(min_size=1, max_size=20)) for k in keys if k in ("prompt", "chosen", "rejected")})
    return row


@st.composite
def data_files(draw) -> tuple[str, bytes]:
    """(file name, bytes): JSONL, a JSON array, their gzip, or parquet, in some encoding, maybe cut short;
    or random bytes under a data-file name."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(["d.jsonl", "d.json", "d.parquet", "d.jsonl.gz"])), draw(st.binary(max_size=300))
    items = draw(st.lists(st.one_of(rows(), json_value), min_size=0, max_size=6))
    layout = draw(st.sampled_from(["jsonl", "json", "gz", "parquet"]))
    if layout == "parquet":
        data = parquet_bytes([r for r in items if isinstance(r, dict)])
        if data is None:
            layout = "jsonl"
        else:
            return "d.parquet", data
    text = (json.dumps(items) if layout == "json" else
            "".join((json.dumps(r) if draw(st.integers(0, 7)) else json.dumps(r)[:-1]) + "\n" for r in items))
    if layout != "json" and draw(st.integers(0, 4)) == 0:  # a line no JSON parser or tokenizer should meet
        text += draw(st.sampled_from(ODD_LINES)) + "\n"
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1"]))
    data = text.encode(encoding, errors="replace")
    if draw(st.integers(0, 5)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    if layout == "gz":
        return "d.jsonl.gz", gzip.compress(data)
    return ("d.json" if layout == "json" else "d.jsonl"), data


def parquet_bytes(items: list[dict]) -> bytes | None:
    """A parquet file of ``items`` (every row gets every column), or None when Arrow cannot type a column
    (mixed types in one column cannot be written as parquet at all)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = list(dict.fromkeys(k for r in items for k in r))
    try:
        table = pa.table({k: [r.get(k) for r in items] for k in keys}) if keys else None
        if table is None:
            return None
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
    except (pa.ArrowException, ValueError, TypeError, OverflowError):
        return None
    return buffer.getvalue()


def option_values() -> st.SearchStrategy[str]:
    """An option's text on the command line: a quirk, a number of any size, or random text."""
    return st.one_of(st.sampled_from(QUIRKS), st.integers().map(str), st.floats().map(repr),
                     st.text(max_size=12))


@st.composite
def yaml_documents(draw, keys: list[str]) -> str:
    """A YAML config: some of ``keys`` (dotted: nested sections) with quirky values, in block or flow style,
    sometimes with a key repeated, a tab, an anchor, or cut short."""
    chosen = draw(st.lists(st.sampled_from(keys), min_size=1, max_size=4))
    lines = []
    for key in chosen:
        *sections, name = key.split(".")
        for depth, section in enumerate(sections):
            lines.append("  " * depth + f"{section}:")
        lines.append("  " * len(sections) + f"{name}: {draw(st.sampled_from(QUIRKS))}")
    text = "\n".join(lines) + "\n"
    twist = draw(st.integers(0, 6))
    if twist == 0:
        text = text.replace("  ", "\t", 1)
    elif twist == 1:
        text = text[: draw(st.integers(0, len(text)))]
    elif twist == 2:
        text = "base: &b {x: 1}\n" + text + "other: *b\n"
    elif twist == 3:
        text = "{" + text
    return text
