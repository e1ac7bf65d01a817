"""Readers on the real shared data, every supported format, and bad rows."""

import gzip
import json

import pytest

from rlp_align.core.errors import DataError, UserError
from rlp_align.data import (
    Preference,
    detect_format,
    inspect_file,
    read_instructions,
    read_preferences,
    read_sample_sets,
    user_prompt,
    write_preferences,
)

# file -> (reader, rows in the file, valid rows). HH-RLHF has 9 dialogues whose last turn is empty and
# LLMEval² one empty output: those are real bad rows, skipped and reported with --skip-invalid.
SHARED_FILES = {
    "alpaca_5000.json": ("instructions", 5000, 5000),
    "alpacafarm_eval.json": ("instructions", 725, 725),
    "alpacafarm_multisamples_sft.json": ("samples", 8, 8),
    "llmbar_natural.json": ("preferences", 100, 100),
    "llmbar_adversarial_gptout.json": ("preferences", 47, 47),
    "llmbar_adversarial_manual.json": ("preferences", 46, 46),
    "llmbar_processed_llmeval2.json": ("preferences", 200, 199),  # and one pair with chosen == rejected
    "llmbar_processed_faireval.json": ("preferences", 66, 66),
    "hh_rlhf_harmless_base_test.jsonl.gz": ("preferences", 2312, 2303),
}


@pytest.mark.parametrize("name", sorted(SHARED_FILES))
def test_every_shared_file_reads_with_right_counts(shared_data, name):
    kind, rows, valid = SHARED_FILES[name]
    reader = {"instructions": read_instructions, "preferences": read_preferences, "samples": read_sample_sets}[kind]
    items, report = reader(shared_data / name, skip_invalid=True, with_report=True)
    assert report.rows == rows
    assert len(items) + report.duplicates + report.identical == valid
    assert report.identical == (name == "llmbar_processed_llmeval2.json")  # skipped with a warning: no gradient
    assert len(report.invalid) == rows - valid
    if valid < rows:
        with pytest.raises(DataError, match=r"row \d+, field"):
            reader(shared_data / name)


def test_shared_contents_are_normalised(shared_data):
    eval_set = read_instructions(shared_data / "alpacafarm_eval.json")
    assert all(x.reference for x in eval_set) and {x.meta["subset"] for x in eval_set} >= {"koala", "oasst"}
    hh = read_preferences(shared_data / "hh_rlhf_harmless_base_test.jsonl.gz", skip_invalid=True)
    assert hh[0].prompt[-1]["role"] == "user" and "Human:" not in hh[0].chosen
    bar = json.loads((shared_data / "llmbar_natural.json").read_text())[0]
    pref = read_preferences(shared_data / "llmbar_natural.json")[0]
    assert pref.chosen == bar[f"output_{bar['label']}"]


def _write(tmp_path, rows, name="f.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_trl_standard_conversational_and_implicit(tmp_path):
    rows = [
        {"prompt": "Say hi", "chosen": "hi", "rejected": "no"},
        {"prompt": [{"role": "user", "content": "Say yo"}],
         "chosen": [{"role": "assistant", "content": "yo"}], "rejected": [{"role": "assistant", "content": "x"}]},
        {"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "good"}],
         "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "bad"}]},
    ]
    prefs = read_preferences(_write(tmp_path, rows))
    assert [p.chosen for p in prefs] == ["hi", "yo", "good"]
    assert prefs[2].prompt == user_prompt("Q")


def test_alpacafarm_preference_two_means_output_2(tmp_path):
    row = {"instruction": "Add", "input": "1+1", "output_1": "3", "output_2": "2", "preference": 2}
    (pref,) = read_preferences(_write(tmp_path, [row]))
    assert (pref.chosen, pref.rejected, pref.prompt[0]["content"]) == ("2", "3", "Add\n\n1+1")


def test_writers_round_trip_both_formats(tmp_path):
    prefs = [Preference(user_prompt(f"q{i}"), f"good{i}", f"bad{i}", {"source": "t"}) for i in range(3)]
    for fmt in ("trl", "alpacafarm"):
        path = tmp_path / f"{fmt}.jsonl"
        write_preferences(path, prefs, fmt=fmt)
        back = read_preferences(path)
        assert [(p.chosen, p.rejected) for p in back] == [(p.chosen, p.rejected) for p in prefs]
        assert detect_format(json.loads(path.read_text().splitlines()[0])) == fmt


def test_gzip_and_json_list(tmp_path):
    rows = [{"instruction": "a", "input": "", "output": "b"}]
    gz = tmp_path / "x.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write(json.dumps(rows[0]) + "\n")
    (tmp_path / "x.json").write_text(json.dumps(rows))
    assert read_instructions(gz)[0].reference == "b"
    assert read_instructions(tmp_path / "x.json")[0].text == "a"


BAD_ROWS = [
    ("malformed JSON line", '{"prompt": "a", "chosen": "b"', None, "malformed JSON"),
    ("missing key", {"prompt": "a", "chosen": "b"}, "rejected", "missing"),
    ("label outside 1/2", {"input": "a", "output_1": "b", "output_2": "c", "label": 3}, "label", "must be 1 or 2"),
    ("preference outside 1/2", {"instruction": "a", "input": "", "output_1": "b", "output_2": "c",
                                "preference": 0}, "preference", "must be 1 or 2"),
    ("empty prompt", {"prompt": "  ", "chosen": "b", "rejected": "c"}, "prompt", "empty"),
    ("empty response", {"prompt": "a", "chosen": "", "rejected": "c"}, "chosen", "empty"),
    ("wrong type", {"prompt": "a", "chosen": 3, "rejected": "c"}, "chosen", "expected a string"),
    ("bad message", {"prompt": [{"role": "robot", "content": "x"}], "chosen": "b", "rejected": "c"}, "prompt",
     "bad message"),
    ("not an object", [1, 2], None, "expected a JSON object"),
]


@pytest.mark.parametrize("case,row,field,problem", BAD_ROWS, ids=[c[0] for c in BAD_ROWS])
def test_bad_row_names_file_row_and_field(tmp_path, case, row, field, problem):
    good = {"prompt": "q", "chosen": "a", "rejected": "b"} if "label" not in str(row) else \
        {"input": "q", "output_1": "a", "output_2": "b", "label": 1}
    if "preference" in str(row):
        good = {"instruction": "q", "input": "", "output_1": "a", "output_2": "b", "preference": 1}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + (row if isinstance(row, str) else json.dumps(row)) + "\n")
    with pytest.raises(DataError) as err:
        read_preferences(path)
    message = str(err.value)
    assert "bad.jsonl, row 2" in message and problem in message
    if field:
        assert f"field '{field}'" in message
    prefs, report = read_preferences(path, skip_invalid=True, with_report=True)
    assert len(prefs) == 1 and len(report.invalid) == 1


def test_non_utf8_empty_missing_and_duplicates(tmp_path):
    bad = tmp_path / "latin.jsonl"
    bad.write_bytes(b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(DataError, match="not valid UTF-8"):
        read_preferences(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        read_preferences(empty)
    with pytest.raises(UserError, match="no such file"):
        read_preferences(tmp_path / "nope.jsonl")
    dup = _write(tmp_path, [{"prompt": "a", "chosen": "b", "rejected": "c"}] * 3)
    prefs, report = read_preferences(dup, with_report=True)
    assert len(prefs) == 1 and report.duplicates == 2


def test_wrong_kind_of_file_is_named(tmp_path):
    path = _write(tmp_path, [{"instruction": "a", "input": "", "output": "b"}])
    with pytest.raises(UserError, match="looks like a 'alpaca' file"):
        read_preferences(path)
    with pytest.raises(UserError, match="unrecognised row"):
        read_preferences(_write(tmp_path, [{"foo": 1}], "foo.jsonl"))


def test_inspect_reports_format_counts_and_invalid(tmp_path):
    path = _write(tmp_path, [{"prompt": "a", "chosen": "bb", "rejected": "c"}, {"prompt": "a", "chosen": ""}])
    report = inspect_file(path)
    assert report["format"] == "trl" and report["rows"] == 2 and report["kept"] == 1
    assert report["fields"]["chosen"]["mean_chars"] == 2.0 and len(report["invalid"]) == 1


# ---- rows no reader expected: other formats, deep nesting, invalid Unicode (issue 16)

TRL = {"prompt": "q", "chosen": "a", "rejected": "b"}
AF = {"instruction": "q", "input": "", "output_1": "a", "output_2": "b", "preference": 2}


def test_mixed_formats_are_bad_rows_with_their_numbers(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [TRL, AF, {**TRL, "prompt": "q2"}, AF]))
    with pytest.raises(DataError, match=r"mixed.jsonl, row 2: a 'alpacafarm' row in a 'trl' file \(the format of row 1\)"):
        read_preferences(path, skip_invalid=False)
    prefs, report = read_preferences(path, skip_invalid=True, with_report=True)
    assert [p.prompt[-1]["content"] for p in prefs] == ["q", "q2"] and report.format == "trl"
    assert report.rows == 4 and [m.split(": ")[0][-5:] for m in report.invalid] == ["row 2", "row 4"]


def test_the_first_valid_row_sets_the_format(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [{"question": "?"}, AF, TRL]))
    prefs, report = read_preferences(path, skip_invalid=True, with_report=True)
    assert report.format == "alpacafarm" and len(prefs) == 1 and prefs[0].chosen == "b"
    assert "row 1: unrecognised row" in report.invalid[0] and "row 3: a 'trl' row" in report.invalid[1]


def test_deep_nesting_is_a_bad_row_not_a_recursion_error(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    lines = tmp_path / "deep.jsonl"
    lines.write_text(json.dumps(TRL) + "\n" + deep + "\n" + json.dumps({**TRL, "meta": {"x": deep[:20]}}) + "\n")
    with pytest.raises(DataError, match="row 2: JSON nested too deeply"):
        read_preferences(lines, skip_invalid=False)
    assert len(read_preferences(lines, skip_invalid=True)) == 2
    array = tmp_path / "deep.json"
    array.write_text(f"[{deep}]")
    with pytest.raises(DataError, match="deep.json: JSON nested too deeply"):
        read_preferences(array)


def test_a_lone_surrogate_is_a_bad_row_in_every_reader(tmp_path):
    bad = '{"prompt": "caf\\ud800", "chosen": "a", "rejected": "b"}'  # the JSON escape, as written on disk
    pair = '{"prompt": "x", "chosen": "\\ud83d\\ude00 fine", "rejected": "b"}'  # a valid surrogate pair: kept
    prefs = tmp_path / "p.jsonl"
    prefs.write_text(json.dumps(TRL) + "\n" + bad + "\n" + pair + "\n")
    with pytest.raises(DataError, match=r"row 2: field 'prompt': invalid Unicode: a lone surrogate '\\ud800'"):
        read_preferences(prefs, skip_invalid=False)
    kept = read_preferences(prefs, skip_invalid=True)
    assert [p.chosen for p in kept] == ["a", "\U0001F600 fine"]
    for p in kept:  # what reaches the tokenizer encodes as UTF-8
        (p.prompt[-1]["content"] + p.chosen + p.rejected).encode("utf-8")
    nested = tmp_path / "i.json"
    nested.write_text('[{"prompt": [{"role": "user", "content": "ok"}]}, '
                      '{"prompt": [{"role": "user", "content": "\\udfff"}]}]')
    with pytest.raises(DataError, match=r"i.json, row 2: field 'prompt': invalid Unicode"):
        read_instructions(nested, skip_invalid=False)
    assert len(read_instructions(nested, skip_invalid=True)) == 1
    assert "invalid Unicode" in inspect_file(prefs)["invalid"][0]
