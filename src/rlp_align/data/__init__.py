"""Data: records, readers and writers of preference, instruction and sample files, and how text is laid out.

- `records` (Preference, Instruction, SampleSet), `readers` (JSON/JSONL/parquet/`datasets`, format detection,
  row errors), `writers`;
- `templates`: chat templates, prompt cutting (`fit_prompt`) and collation; `reward_path`: the one way an RM reads
  prompt + response + EOS; `constraints`: machine-checkable text constraints (the instruction world's checks).

May import: core only. Everything above may import it.
"""

from rlp_align.data.readers import (
    ReadReport,
    detect_format,
    inspect_file,
    read_instructions,
    read_preferences,
    read_sample_sets,
)
from rlp_align.data.records import Instruction, Preference, SampleSet, prompt_text, user_prompt
from rlp_align.data.writers import write_preferences

__all__ = [
    "Instruction",
    "Preference",
    "ReadReport",
    "SampleSet",
    "detect_format",
    "inspect_file",
    "prompt_text",
    "read_instructions",
    "read_preferences",
    "read_sample_sets",
    "user_prompt",
    "write_preferences",
]
