"""Data records, readers and writers for preference and instruction files."""

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
