"""The CLI half of the fuzz harness (issue 23 §5): random mutations of good commands, and the invariants.

A case is one good command on the tiny model (`rlp reward`, `rlp sft`, `rlp sample`, `rlp data inspect`)
with one to three mutations drawn by a seeded `random.Random`:

- ``alias``: the output path is an input, lies inside one, or contains one (a model folder, a data file);
- ``finished``: the output is, or lies inside, a finished reward run (its folder, its ``model/``, its weights);
- ``locked``: the output is, or lies inside, a folder whose run lock another process holds;
- ``truncate`` / ``garble``: an input file (data, config.json, weights, tokenizer) cut short or overwritten
  with random bytes or re-encoded as UTF-16;
- ``symlink``: the output reached through a symbolic link to an input or to its folder;
- ``swap``: a data input replaced by a folder, ``/dev/null``, a missing path, or the model's weights;
- ``parquet``: a JSONL input rewritten as parquet (under a .parquet name or its old one);
- ``env``: an environment variable the package reads set to nonsense (threads, device, precision, cache);
- ``option``: a config key set to a value from the config fuzzer's quirk list (`fuzz_values.QUIRKS`);
- ``overwrite``: ``--overwrite true`` added (with the other mutations it is the dangerous one).

Invariants checked for every case (`check_case`): exit code 0 or 2; no traceback (nothing raised out of
`cli.main`, no "Traceback" on stderr); every input byte-identical afterwards; nothing outside the output
path created or changed; and an exit-0 result equal to the same command's on a clean folder (the same
inputs copied elsewhere, the output at a fresh path).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import random
import re
import shutil
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from fuzz_values import QUIRKS

from rlp_align import cli
from rlp_align.models import resolve_model

GOOD = [{"prompt": "Name a fruit.", "chosen": "A banana.", "rejected": "A rock."},
        {"prompt": "Name a stone.", "chosen": "Granite.", "rejected": "A pear."}]
SFT = [{"instruction": "Name a fruit.", "output": "A banana."}, {"instruction": "Name a stone.", "output": "Granite."}]
PROMPTS = [{"prompt": "Name a fruit."}, {"prompt": "Name a stone."}]
COMMANDS = ("reward", "sft", "sample", "inspect")
MUTATIONS = ("alias", "symlink", "finished", "locked", "truncate", "garble", "swap", "parquet", "env", "option",
             "overwrite")
ENV = {"RLP_NUM_THREADS": ["abc", "0", "-3", "", "1e3"], "RLP_DEVICE": ["tpu", "cuda:9", "", "CPU"],
       "ACCELERATE_MIXED_PRECISION": ["fp8", "bogus", ""], "RLP_ALIGN_CACHE": ["{in}/data.jsonl", "/nonexistent/c"],
       "HF_HUB_OFFLINE": ["0", "yes"], "TOKENIZERS_PARALLELISM": ["maybe"], "HOME": ["/nonexistent"]}
OPTIONS = {"reward": ["seed", "max_length", "optim.learning_rate", "optim.batch_size", "optim.max_steps",
                      "optim.save_every", "optim.warmup_steps", "lora.enabled", "eval_file", "mixed_precision"],
           "sft": ["seed", "max_length", "optim.learning_rate", "optim.max_steps", "optim.gradient_accumulation_steps"],
           "sample": ["n", "temperature", "top_p", "max_new_tokens", "max_prompt_length", "batch_size", "seed",
                      "limit", "engine", "mixed_precision"],
           "inspect": []}


@dataclass
class Case:
    seed: int
    command: str
    root: Path
    argv: list[str]
    output: Path | None  # the output path the command was asked to write
    env: dict[str, str] = field(default_factory=dict)
    mutations: list[str] = field(default_factory=list)
    lock_fd: int | None = None
    owned: dict[Path, str] = field(default_factory=dict)  # the user's files placed where rlp writes: their digests
    locked_output: Path | None = None  # an output another process holds: the command must stop (exit 2)
    cleanup: list = field(default_factory=list)  # callables run after the command (a FIFO's writer released)

    def describe(self) -> str:
        shown = " ".join(a.replace(str(self.root), "<case>") for a in self.argv)
        env = " ".join(f"{k}={v!r}" for k, v in self.env.items())
        return f"seed {self.seed} [{', '.join(self.mutations)}] {env} rlp {shown}"


@dataclass
class Outcome:
    code: int | None
    out: str
    err: str
    raised: str | None  # the traceback of an exception that escaped cli.main


# --------------------------------------------------------------------------------------------------
# Building a case


def write_inputs(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True)
    files = {"data": folder / "data.jsonl", "sft": folder / "sft.jsonl", "prompts": folder / "prompts.jsonl"}
    for key, rows in (("data", GOOD), ("sft", SFT), ("prompts", PROMPTS)):
        files[key].write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.copytree(resolve_model("tiny"), folder / "model")
    files["model"] = folder / "model"
    return files


def base_argv(command: str, files: dict[str, Path], out: Path) -> tuple[list[str], Path | None]:
    train = ["--optim.max_steps", "1", "--optim.batch_size", "2", "--max_length", "64"]
    if command == "reward":
        return ["reward", "--model", str(files["model"]), "--train_file", str(files["data"]), "--output_dir",
                str(out), *train], out
    if command == "sft":
        return ["sft", "--model", str(files["model"]), "--train_file", str(files["sft"]), "--output_dir", str(out),
                *train], out
    if command == "sample":
        out = out.with_suffix(".jsonl")
        return ["sample", "--policy", str(files["model"]), "--prompts_file", str(files["prompts"]), "--output_file",
                str(out), "--n", "2", "--max_new_tokens", "4"], out
    return ["data", "inspect", "--json", str(files["data"])], None


def set_option(argv: list[str], key: str, value: str) -> None:
    flag = "--" + key.lstrip("-")
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]


def hold_lock(folder: Path) -> int:
    """Hold ``folder``'s run lock as another process would: a separate open file with an flock on it, naming
    our parent's PID (a live process that is not this one)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.pwrite(fd, f"{os.getppid()}\n".encode(), 0)
    return fd


def make_case(seed: int, tmp: Path, finished: Path) -> Case:
    """Case ``seed``: a good command in ``tmp/case-<seed>`` with one to three mutations. ``finished`` is a
    finished `rlp reward` folder made once per session (copied, never used in place)."""
    rng = random.Random(seed)
    root = tmp / f"case-{seed}"
    files = write_inputs(root / "in")
    command = rng.choice(COMMANDS)
    argv, output = base_argv(command, files, root / "out")
    case = Case(seed, command, root, argv, output)
    inputs = [p for k, p in files.items() if str(p) in argv]
    flag = "--output_file" if command == "sample" else "--output_dir"
    for mutation in rng.sample(MUTATIONS, rng.randint(1, 3)):
        if mutation in ("alias", "symlink", "finished", "locked", "overwrite") and output is None:
            continue
        case.mutations.append(mutation)
        if mutation == "alias":
            target = rng.choice(inputs)
            choices = [target, target / "sub" if target.is_dir() else target.with_name("x") / "y", root / "in",
                       files["model"] / "model.safetensors", files["model"] / "config.json"]
            set_option(argv, flag, str(rng.choice(choices)))
        elif mutation == "symlink":  # the output reached through a link to an input, or to its folder
            target = rng.choice(inputs + [root / "in"])
            link = root / "link"
            link.symlink_to(target)
            set_option(argv, flag, str(rng.choice([link, link / "sub"] if target.is_dir() else [link])))
        elif mutation == "finished":
            done = root / "done"
            shutil.copytree(finished, done)
            choices = [done, done / "model", done / "sub", done / "model" / "model.safetensors", done / "summary.json"]
            set_option(argv, flag, str(rng.choice(choices)))
        elif mutation == "locked":
            locked = root / "locked"
            case.lock_fd = hold_lock(locked)
            set_option(argv, flag, str(rng.choice([locked, locked / "sub", locked / "sub" / "out.jsonl"])))
        elif mutation in ("truncate", "garble"):
            victims = [p for p in inputs if p.is_file()] + [files["model"] / n for n in (
                "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")]
            victim = rng.choice([v for v in victims if v.exists()])
            data = victim.read_bytes()
            if mutation == "truncate":
                victim.write_bytes(data[: rng.randint(0, max(0, len(data) - 1))])
            elif rng.random() < 0.5 and victim.suffix in (".json", ".jsonl"):
                victim.write_bytes(data.decode(errors="replace").encode("utf-16"))
            else:
                start = rng.randint(0, max(0, len(data) - 1))
                victim.write_bytes(data[:start] + rng.randbytes(rng.randint(1, 64)) + data[start + 64:])
        elif mutation == "swap":
            data_flag = next((f for f in ("--train_file", "--prompts_file") if f in argv), None)
            choice = rng.choice([root / "in", Path("/dev/null"), root / "missing.jsonl",
                                 files["model"] / "model.safetensors"])
            if data_flag:
                set_option(argv, data_flag, str(choice))
            else:
                argv[-1] = str(choice)
        elif mutation == "parquet":  # the same rows as parquet, under a parquet or the old JSONL name
            data = next((p for p in inputs if p.suffix == ".jsonl" and str(p) in argv), None)
            if data is not None:
                import pyarrow as pa
                import pyarrow.parquet as pq

                try:  # an earlier mutation may have broken the file: then it stays as it is
                    table = pa.Table.from_pylist([json.loads(line) for line in data.read_bytes().splitlines()])
                except (ValueError, TypeError, pa.ArrowException):  # UnicodeDecodeError is a ValueError
                    continue
                target = rng.choice([data, data.with_suffix(".parquet")])
                data.unlink()
                pq.write_table(table, target)
                argv[argv.index(str(data))] = str(target)
        elif mutation == "env":
            name = rng.choice(sorted(ENV))
            case.env[name] = rng.choice(ENV[name]).format(**{"in": root / "in"})
        elif mutation == "option" and OPTIONS[command]:
            set_option(argv, rng.choice(OPTIONS[command]), rng.choice(QUIRKS))
        elif mutation == "overwrite" and command != "sample":
            set_option(argv, "--overwrite", "true")
        elif mutation in OWNERSHIP_MUTATIONS:
            ownership_mutation(mutation, case, rng, files, flag if output is not None else None, finished)
    case.output = Path(argv[argv.index(flag) + 1]) if output is not None else None
    return case


# --------------------------------------------------------------------------------------------------
# Running a case and checking it


def run_cli(argv: list[str], env: dict[str, str]) -> Outcome:
    """`cli.main` in this process (fast: no interpreter start), stdout/stderr captured, ``env`` applied."""
    saved = {k: os.environ.get(k) for k in env}
    out, err, raised, code = io.StringIO(), io.StringIO(), None, None
    os.environ.update(env)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = cli.main(list(argv))
    except SystemExit as e:  # argparse's own exit (rlp data)
        code = e.code if isinstance(e.code, int) else 2
    except BaseException:  # noqa: B036 - whatever escapes is what the invariant is about
        raised = traceback.format_exc()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return Outcome(code, out.getvalue(), err.getvalue(), raised)


def tree(root: Path) -> dict[str, str]:
    """Every file (its sha256), folder and link under ``root``; the run locks' emptied files excepted."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = f"link {os.readlink(path)}"
        elif path.is_dir():
            found[rel] = "folder"
        elif not path.is_file():  # a named pipe (the ``nonregular`` mutation): reading it would block
            found[rel] = "special"
        elif path.name != ".lock":
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return found


def outside(snapshot: dict[str, str], root: Path, output: Path | None) -> dict[str, str]:
    """The part of a snapshot outside ``output`` (and outside the parent folders it needs)."""
    if output is None:
        return snapshot
    rel = os.path.relpath(output, root)
    parents = {str(Path(rel).parents[i]) for i in range(len(Path(rel).parents) - 1)}
    sidecar = str(Path(rel).parent / f".{Path(rel).name}.rlp.json")  # a file output's record (run_folder)
    return {k: v for k, v in snapshot.items() if not (k in (rel, sidecar) or k.startswith(rel + os.sep))
            and not (k in parents and v == "folder")}


def normalised(text: str, *roots: Path) -> str:
    for root in roots:
        text = text.replace(str(root), "<root>")
    text = re.sub(r'"(seconds|time|elapsed|duration)[a-z_]*": [0-9.e+-]+', r'"\1": 0', text)
    return text


def result_of(case: Case, outcome: Outcome) -> str:
    """What an exit-0 run produced: its printed result (a trainer prints its summary) and an output file,
    paths made relative. (A finished folder's summary.json is the record of the run that wrote it, at the
    paths of then; the printed result is what this command answers.)"""
    parts = [normalised(outcome.out, case.output or case.root, case.root)]
    if case.output is not None and case.output.is_file():
        parts.append(normalised(case.output.read_text(errors="replace"), case.root))
    return "\n".join(parts)


def check_case(case: Case, tmp: Path) -> list[str]:
    """Run ``case``; the invariants it breaks (empty when it passes)."""
    before = tree(case.root)
    outcome = run_cli(case.argv, case.env)
    if case.lock_fd is not None:
        os.close(case.lock_fd)
    for undo in case.cleanup:
        undo()
    problems = ownership_problems(case, outcome)
    if outcome.raised:
        problems.append(f"traceback: {outcome.raised.strip().splitlines()[-1]}")
    elif outcome.code not in (0, 2):
        problems.append(f"exit code {outcome.code}")
    if "Traceback" in outcome.err:
        problems.append("traceback on stderr")
    if outcome.code == 2 and outcome.err.count("error: ") != 1:
        problems.append(f"not one error paragraph: {outcome.err[-300:]!r}")
    after = tree(case.root)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    inputs = [f"in{os.sep}{name}" for name in ("data.jsonl", "sft.jsonl", "prompts.jsonl", "model", "data.parquet",
                                               "sft.parquet", "prompts.parquet") if f"in{os.sep}{name}" in before]
    inputs_changed = [k for k in changed if any(k == i or k.startswith(i + os.sep) for i in inputs)]
    if inputs_changed:
        problems.append(f"inputs changed: {inputs_changed[:3]}")
    real = Path(os.path.realpath(case.output)) if case.output is not None else None  # through a symlink

    def beyond(snapshot: dict[str, str]) -> dict[str, str]:
        return outside(outside(snapshot, case.root, case.output), case.root.resolve(), real)

    stray = sorted(k for k in set(beyond(before)) | set(beyond(after))
                   if before.get(k) != after.get(k) and k not in inputs_changed)
    if stray:
        problems.append(f"changed outside the output path: {stray[:3]}")
    if outcome.code == 0 and not problems:
        clean = tmp / f"clean-{case.seed}"
        shutil.copytree(case.root / "in", clean / "in")
        fresh = clean / ("fresh.jsonl" if case.command == "sample" else "fresh")
        argv = [a.replace(str(case.root / "in"), str(clean / "in")) for a in case.argv]
        if case.output is not None:
            argv[case.argv.index(str(case.output))] = str(fresh)
        again = run_cli(argv, case.env)
        twin = Case(case.seed, case.command, clean, argv, fresh if case.output is not None else None)
        if again.code != 0 or result_of(case, outcome) != result_of(twin, again):
            problems.append("exit 0 with a result unlike the same command's on a clean folder")
    if os.environ.get("RLP_FUZZ_VERBOSE"):
        print(f"{case.describe()} -> {outcome.code} {outcome.err.strip().splitlines()[-1:] if outcome.err else ''}")
    return problems


# --------------------------------------------------------------------------------------------------
# Issue 30 §6 (trust-a): files the user owns where rlp writes, concurrent commands, non-regular files, huge lines
#
# - ``users-files``: the output is a plain folder holding the user's files under rlp's names (summary.json,
#   metrics.jsonl, tensorboard/, model/, a fingerprint.json of their own), or a finished run holding a file of
#   the user's (then maybe ``--overwrite``), or (``--output_file``) an existing file of the user's;
# - ``concurrent``: another process holds the output's lock (a folder's .lock, a file's .<name>.lock);
# - ``nonregular``: a data input that is /dev/zero, /dev/urandom, a named pipe, or a file with one huge line.
#
# Invariants added: every file of the user's placed so is byte-identical afterwards, whatever the exit code; a
# command whose output another process holds stops with exit 2.

OWNERSHIP_MUTATIONS = ("users-files", "concurrent", "nonregular")
MUTATIONS = MUTATIONS + OWNERSHIP_MUTATIONS
RLP_NAMES = ("summary.json", "metrics.jsonl", "tensorboard/events.out.tfevents.1", "model/config.json",
             "model/model.safetensors", "fingerprint.json", "checkpoint/trainer_state.json", "notes.txt")
USER_CONTENT = ('{"train": {"loss": 0.5}}\n', '{"step": 1, "loss": 0.1}\n', '{"command": "reward", "hash": "0"}\n',
                "my notes\n", "")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def place_user_file(case: Case, path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    case.owned[path] = _digest(path)


def huge_line(path: Path, rng: random.Random) -> Path:
    """One line of ``size`` bytes without a line break: past the reader's bound (64 MiB) or below it."""
    from rlp_align.core.io import MAX_LINE

    size = rng.choice([2**20, 8 * 2**20, MAX_LINE + 16])
    with open(path, "wb") as f:
        f.write(json.dumps(GOOD[0]).encode() + b"\n")
        for _ in range(size // 2**20):
            f.write(rng.choice([b"x", b"\0", b"["]) * 2**20)
        f.write(b"x" * (size % 2**20))
    return path


def fifo_with_writer(path: Path, case: Case) -> Path:
    """A named pipe; a writer thread feeds it one line if anything opens it (so a regression shows, not hangs),
    and the case's cleanup releases the writer when nothing did."""
    import threading

    os.mkfifo(path)

    def feed() -> None:
        with contextlib.suppress(OSError), open(path, "w") as f:  # a reader that closes at once: a broken pipe
            f.write(json.dumps(GOOD[0]) + "\n")

    threading.Thread(target=feed, daemon=True).start()

    def release() -> None:
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            os.close(fd)

    case.cleanup.append(release)
    return path


def ownership_mutation(mutation: str, case: Case, rng: random.Random, files: dict[str, Path], flag: str | None,
                       finished: Path) -> None:
    argv, root = case.argv, case.root
    output = Path(argv[argv.index(flag) + 1]) if flag else None
    if mutation == "users-files" and output is not None:
        if flag == "--output_file":
            if not output.is_dir() and output.parent.is_dir():  # an existing file of the user's as the output
                place_user_file(case, output, rng.choice(USER_CONTENT))
            return
        if rng.random() < 0.5:  # a plain folder holding the user's files under rlp's names
            target = root / "users"
            for name in rng.sample(RLP_NAMES, rng.randint(1, 3)):
                place_user_file(case, target / name, rng.choice(USER_CONTENT))
        else:  # a finished run, then a file of the user's inside it
            target = root / "done-user"
            shutil.copytree(finished, target)
            place_user_file(case, target / rng.choice(["model/notes.txt", "tensorboard/mine.txt", "notes.txt",
                                                       "checkpoint/mine.txt"]), "mine\n")
            if rng.random() < 0.5:
                set_option(argv, "--overwrite", "true")
        set_option(argv, flag, str(target))
    elif mutation == "concurrent" and output is not None and case.lock_fd is None:
        if flag == "--output_file":
            output.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(output.parent / f".{output.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.pwrite(fd, f"{os.getppid()}\n".encode(), 0)
            case.lock_fd = fd
        elif not output.exists() or output.is_dir():
            case.lock_fd = hold_lock(output)
        else:
            return
        case.locked_output = output
    elif mutation == "nonregular":
        data_flag = next((f for f in ("--train_file", "--prompts_file") if f in argv), None)
        kind = rng.choice(["zero", "urandom", "fifo", "huge"])
        source = {"zero": lambda: Path("/dev/zero"), "urandom": lambda: Path("/dev/urandom"),
                  "fifo": lambda: fifo_with_writer(root / "pipe.jsonl", case),
                  "huge": lambda: huge_line(root / "in" / "huge.jsonl", rng)}[kind]()  # in/: the clean twin's too
        if data_flag:
            set_option(argv, data_flag, str(source))
        else:
            argv[-1] = str(source)


def ownership_problems(case: Case, outcome: Outcome) -> list[str]:
    """The invariants of issue 30 §1: the user's files unchanged; a held output refused."""
    problems = []
    changed = [str(p.relative_to(case.root)) for p, digest in case.owned.items()
               if not p.is_file() or _digest(p) != digest]
    if changed:
        problems.append(f"the user's files changed or deleted: {changed[:3]}")
    if case.locked_output is not None and case.output == case.locked_output and outcome.code == 0:
        problems.append("exit 0 although another process holds the output")
    return problems
