"""The foundation every layer stands on: settings and their ranges, errors, file I/O, the device rule, run folders.

- `config`: YAML/CLI settings into dataclasses; `ranges`: the one table of valid values;
- `errors`: `UserError` (exit 2 with a one-paragraph message); `io`: atomic writes, JSON/JSONL;
- `tables`: parquet files and Hugging Face `datasets` folders read as rows (for `io.read_rows`);
- `device`: the one device rule (`RLP_DEVICE`); `run_folder`: the one output guard (who may write an output); `run_lock`: the run lock; `fingerprint`: what produced a folder.

May import: nothing else of rlp_align (the bottom layer). Everything above may import it.
"""
