"""The ``rlp`` command.

Every training/eval command takes ``--config FILE`` plus ``--key value`` overrides of its config
dataclass (``rlp <command> --help`` lists the keys and defaults). User errors print one paragraph
and exit 2; an interrupted run says how to resume.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import sys
import typing

from rlp_align import __version__
from rlp_align.core.errors import UserError

# command -> (module, config class, entry point). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "run": ("rlp_align.pipeline.run", "PipelineConfig", "run_pipeline", "the RLP pipeline end to end (Algorithm 1)"),
    "sft": ("rlp_align.train.sft", "SFTConfig", "run_sft", "supervised fine-tuning on instruction/response data"),
    "reward": ("rlp_align.train.reward", "RewardConfig", "run_reward", "train a Bradley-Terry reward model"),
    "ppo": ("rlp_align.train.ppo", "PPOConfig", "run_ppo", "PPO against a reward model (AlpacaFarm-style)"),
    "rloo": ("rlp_align.train.rloo", "RLOOConfig", "run_rloo", "RLOO (REINFORCE leave-one-out, no critic) against an RM"),
    "best-of-n": ("rlp_align.train.best_of_n", "BestOfNConfig", "run_best_of_n", "best-of-n sampling re-ranked by an RM"),
    "sample": ("rlp_align.train.sample", "SampleConfig", "run_sample", "n policy samples per prompt (RLP step 4)"),
    "spg": ("rlp_align.rlp.spg", "SPGConfig", "run_spg", "synthetic preferences from policy samples (RLP-SPG)"),
    "refine": ("rlp_align.rlp.refine", "RefineConfig", "run_refine", "refine an RM on policy samples (UML/SPG)"),
    "annotate": ("rlp_align.judge.annotate", "AnnotateConfig", "run_annotate", "simulated preference labels"),
    "generate": ("rlp_align.models.generation", "GenerateConfig", "run_generate", "a policy's answers on an eval set"),
    "eval winrate": ("rlp_align.judge.evaluate", "WinrateConfig", "run_winrate", "win-rate under a judge, with CI"),
    "eval rm-accuracy": ("rlp_align.judge.evaluate", "RMAccuracyConfig", "run_rm_accuracy", "RM accuracy on pairs"),
}


def _describe_fields(cls: type, prefix: str = "", defaults: object = None) -> list[str]:
    """One line per option with its default, read from the config's default instance (``defaults``), so a
    section's own defaults show (`RewardConfig.optim` has learning rate 3e-6, `OptimConfig` alone 1e-5)."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if defaults is not None:
            default = getattr(defaults, f.name)
        else:
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
        if dataclasses.is_dataclass(hints[f.name]):
            lines += _describe_fields(hints[f.name], f"{prefix}{f.name}.",
                                      default if dataclasses.is_dataclass(default) else None)
            continue
        type_name = getattr(hints[f.name], "__name__", None) or str(hints[f.name]).replace("typing.", "")
        lines.append(f"  --{prefix}{f.name} ({type_name}, default {default!r})")
    return lines


def _run_command(name: str, argv: list[str]) -> int:
    from rlp_align.core.config import load_config, parse_overrides

    module_name, cls_name, fn_name, summary = COMMANDS[name]
    module = importlib.import_module(module_name)
    cls, run = getattr(module, cls_name), getattr(module, fn_name)
    if "-h" in argv or "--help" in argv:
        print(f"usage: rlp {name} [--config FILE] [--key value ...]\n\n{summary}\n\noptions:")
        print("\n".join(_describe_fields(cls)))
        return 0
    config_file = None
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise UserError("--config needs a file path")
        config_file = argv[i + 1]
        argv = argv[:i] + argv[i + 2 :]
    if name == "run":  # `rlp run --status DIR` reports without running
        from rlp_align.pipeline import run as pipeline

        if "--status" in argv:
            i = argv.index("--status")
            if i + 1 >= len(argv):
                raise UserError("--status needs a run folder")
            print(pipeline.format_status(os.path.expanduser(argv[i + 1])))  # as `io.user_path`
            return 0
        if config_file is None:
            config_file = pipeline.preset_path("default")
        elif not os.path.exists(config_file) and os.path.exists(pipeline.preset_path(config_file)):
            config_file = pipeline.preset_path(config_file)
    cfg = load_config(cls, config_file, parse_overrides(argv))
    from rlp_align.core.io import CACHE_SETTING, OUTPUT_SETTING
    from rlp_align.core.run_folder import claim_output
    from rlp_align.models.registry import cache_dir

    # an I/O error's hint names what this command's user sets: its output flag, or the cache's variable
    tokens = (OUTPUT_SETTING.set("--output_file" if hasattr(cfg, "output_file") else "--output_dir"),
              CACHE_SETTING.set((cache_dir(), "$RLP_ALIGN_CACHE")))
    try:
        with claim_output(name, cfg):  # the one output guard, the run lock, the run fingerprint
            result = run(cfg)
    except OSError as e:  # described here, while the settings above are known (`main` would say "output path")
        from rlp_align.core.io import describe_os_error

        raise UserError(describe_os_error(e)) from None
    finally:
        OUTPUT_SETTING.reset(tokens[0])
        CACHE_SETTING.reset(tokens[1])
    if isinstance(result, dict):
        print(json.dumps(result, indent=2, default=str))
    return 0


def _data_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rlp data")
    sub = parser.add_subparsers(dest="action", required=True)
    inspect = sub.add_parser("inspect", help="detected format, row count, field stats, first rows, invalid rows")
    inspect.add_argument("file")
    inspect.add_argument("--head", type=int, default=3)
    inspect.add_argument("--json", action="store_true", help="print the full report as JSON")
    args = parser.parse_args(argv)
    if args.head < 0:
        raise UserError(f"--head {args.head}: the number of rows to show must be >= 0")
    from rlp_align.data import inspect_file

    report = inspect_file(args.file, head=args.head)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    print(f"{report['path']}\n  format: {report['format']}\n  rows: {report['rows']} "
          f"(valid {report['kept'] + report['duplicates'] + report['identical']}, duplicates "
          f"{report['duplicates']}, chosen == rejected {report['identical']}, invalid {len(report['invalid'])})")
    for name, s in report["fields"].items():
        print(f"  {name}: mean {s['mean_chars']} chars, max {s['max_chars']}, empty {s['empty']}")
    for row in report["first_rows"]:
        print("  row:", json.dumps(row, ensure_ascii=False)[:300])
    for problem in report["invalid"]:
        print("  invalid:", problem)
    return 0


def _prepare_command(argv: list[str]) -> int:
    from rlp_align.core.io import CACHE_SETTING, describe_os_error
    from rlp_align.models import BUILTIN_MODEL, resolve_model
    from rlp_align.models.registry import cache_dir

    names = argv or [BUILTIN_MODEL]
    token = CACHE_SETTING.set((cache_dir(), "$RLP_ALIGN_CACHE"))  # what a failed build's hint names
    try:
        for name in names:
            print(f"{name}: {resolve_model(name)}")
    except OSError as e:
        raise UserError(describe_os_error(e)) from None
    finally:
        CACHE_SETTING.reset(token)
    return 0


def _usage() -> str:
    lines = [f"rlp {__version__}: RLHF with Reward Learning on Policy\n", "usage: rlp <command> [options]\n",
             "commands:"]
    lines += [f"  {name:<18} {spec[3]}" for name, spec in COMMANDS.items()]
    lines += ["  data inspect FILE  detected format, row count, field stats, first rows, invalid rows",
              "  prepare [MODEL]    convert/build a built-in model into the cache (default smollm2-135m-instruct)",
              "\nGlobal option: --skip_invalid reports and skips bad data rows instead of stopping at the first.",
              "`rlp <command> --help` lists a command's options. Docs: README.md"]
    return "\n".join(lines)


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("accelerate", "httpx", "urllib3", "matplotlib"):  # checkpoint chatter, not progress
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"rlp-align {__version__}")
        return 0
    _quiet_libraries()
    # --skip_invalid (anywhere) is the global spelling of each command's own `skip_invalid` setting, passed
    # to its readers as an ordinary config override; `rlp run` reads user files only in its data section.
    flags = [a for a in argv if a in ("--skip_invalid", "--skip-invalid")]
    argv = [a for a in argv if a not in flags]
    if flags and argv and argv[0] not in ("data", "prepare"):
        argv.append("--data.skip_invalid" if argv[0] == "run" else "--skip_invalid")
    try:
        if argv[0] == "data":
            return _data_command(argv[1:])
        if argv[0] == "prepare":
            return _prepare_command(argv[1:])
        if argv[0] == "eval" and len(argv) > 1 and f"eval {argv[1]}" in COMMANDS:
            return _run_command(f"eval {argv[1]}", argv[2:])
        if argv[0] in COMMANDS:
            return _run_command(argv[0], argv[1:])
        raise UserError(f"unknown command '{' '.join(argv[:2])}'. Run `rlp --help` for the list.")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a read or write the code did not wrap: still one paragraph with the path
        from rlp_align.core.io import describe_os_error

        print(f"error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # torch.save / safetensors report a failed write without the path
        from rlp_align.core.io import is_write_failure

        if not is_write_failure(e):
            raise
        print(f"error: a write failed: {str(e).splitlines()[0][:300]}. Is the disk full? Free some space and "
              "rerun the same command to resume from the last checkpoint.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished stages and the last checkpoint are kept; rerun the same command to resume.",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
