"""Command line: ``python -m odc_mini train ...``, ``compare ...`` and ``experiment ...``.

    python -m odc_mini train --method odc --profile quick --out runs/odc-quick
    python -m odc_mini train --out runs/odc-quick --resume      # after a crash or Ctrl-C
    python -m odc_mini compare --profile quick --out runs/compare-quick
    python -m odc_mini experiment --list                        # the book's saved runs
    python -m odc_mini train ... --pinned-kernels               # bit-identical on any x86-64

Runs are checkpointed into ``--out`` at every epoch end and on Ctrl-C. ``--resume`` continues the
run in ``--out`` with its own settings; a setting given on the command line must match it.

``--pinned-kernels`` runs the command in a new process on the pinned CPU kernel path
(:mod:`odc_mini.run.kernels`): slower, but bit-identical on every x86-64 machine with the same torch.
Experiments marked ``pinned`` (the golden runs) always train on it.

Bad input is reported in one line, without a traceback, with exit status 2; a diverged run
exits with 1, an interrupted one with 130 (after saving its checkpoint).
"""
from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import types
import typing
from pathlib import Path

from ..config import METHODS, PROFILES, Config
from ..history import History
from ..run import distributed, kernels, runfolder
from ..run.session import TrainingDiverged, train
from . import experiments, saved
from .analysis import results_table, text_table

def config_flags() -> dict[str, type]:
    """Every Config field that has a command-line flag, with the flag's value type (from the
    field's annotation: int, float, str or bool)."""
    flags = {}
    for name, kind in typing.get_type_hints(Config).items():   # the fields, in their order
        if name in ("method", "profile"):       # flags of their own, not generated
            continue
        if isinstance(kind, types.UnionType):          # e.g. int | None
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        flags[name] = kind
    return flags


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (no usage block) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m odc_mini", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train_p = commands.add_parser("train", help="train one method and save its run")
    train_p.add_argument("--method", default=None, help=f"one of {', '.join(METHODS)} (default: odc)")
    add_run_flags(train_p)
    add_run_flags(commands.add_parser("compare", help="train every method (odc, "
                                      "deepcluster, coke) with the same settings and print a "
                                      "summary table"))
    exp_p = commands.add_parser("experiment", help="train a named experiment of the book and "
                                "save its compact run into odc_mini/study/saved_runs (see --list)")
    exp_p.add_argument("names", nargs="*", help="experiment names (python -m odc_mini "
                       "experiment --list)")
    exp_p.add_argument("--list", action="store_true", help="list the experiments and exit")
    exp_p.add_argument("--from", dest="source", default=None,
                       help="save the finished run in this folder (trained elsewhere) instead "
                            "of training; one name only")
    exp_p.add_argument("--work", default="runs/experiments",
                       help="folder the runs train (and checkpoint) in (default: %(default)s)")
    exp_p.add_argument("--saved-dir", default=None, help="where to save (default: the package's "
                       "saved_runs folder)")
    exp_p.add_argument("--data-root", default=None, help="folder holding cifar10.npz")
    exp_p.add_argument("--note", action="append", default=[], metavar="KEY=VALUE",
                       help="an extra provenance item, e.g. torch=2.11.0 (repeatable)")
    shared_flags(exp_p)
    return parser


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """The flags of ``train`` and ``compare``: the run's folder, and one flag per Config field,
    grouped by whether it is part of the run's identity."""
    p.add_argument("--profile", default=None, help=f"one of {', '.join(PROFILES)} "
                   "(default: $ODC_PROFILE, else quick)")
    p.add_argument("--out", required=True, help="folder the run(s) are saved in")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out where it stopped, with its settings")
    shared_flags(p)
    groups = {False: p.add_argument_group("what is trained (a run's identity)"),
              True: p.add_argument_group("where and how it runs")}
    fields = {f.name: f for f in dataclasses.fields(Config)}
    for name, kind in config_flags().items():
        field = fields[name]
        flag, group = "--" + name.replace("_", "-"), groups[field.metadata["runs"]]
        value = ({"action": argparse.BooleanOptionalAction} if kind is bool
                 else {"type": kind, "metavar": kind.__name__.upper()})
        group.add_argument(flag, default=None, help=_flag_help(field), **value)


def _flag_help(field: dataclasses.Field) -> str:
    """A Config field's help line, with its accepted values and default (``%`` escaped)."""
    text = field.metadata["help"].replace("%", "%%")
    if field.metadata["choices"]:
        text += f"; one of {', '.join(field.metadata['choices'])}"
    if field.default not in (None, dataclasses.MISSING) and "default" not in text:
        text += f" (default: {field.default})"
    return text


def shared_flags(p: argparse.ArgumentParser) -> None:
    """The flags of every command that trains: progress bars and the pinned kernel path."""
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--pinned-kernels", action="store_true",
                   help="train on the CPU kernel path every x86-64 machine shares (a new process, "
                        "about 3x slower): bit-identical on any of them with the same torch")


def wants_pinned(args: argparse.Namespace) -> bool:
    """Whether the command trains on the pinned kernel path: asked for, or a pinned experiment."""
    if args.pinned_kernels:
        return True
    if args.command != "experiment" or args.source is not None or args.list:
        return False
    chosen = [experiments.get(name) for name in args.names]
    pinned = [e.name for e in chosen if e.pinned]
    if pinned and len(pinned) < len(chosen):
        raise ValueError(f"train the pinned experiments ({', '.join(pinned)}) in a command of "
                         "their own")
    return bool(pinned)


def rerun_pinned(argv: list[str]) -> int:
    """Run this same command again in a new process on the pinned kernel path."""
    ok, why = kernels.pinnable()
    if not ok:
        raise ValueError(f"--pinned-kernels: {why}")
    command, env = kernels.pinned_command(argv)
    print("odc_mini: training on the pinned kernel path (a new process: "
          + ", ".join(f"{k}={v}" for k, v in kernels.PINNED_ENV.items()) + ")",
          file=sys.stderr, flush=True)
    return subprocess.run(command, env=env).returncode


def experiment_command(args: argparse.Namespace) -> int:
    """``python -m odc_mini experiment``: list, train and save, or save a run trained elsewhere."""
    if args.list or not args.names:
        present, width = set(saved.names(args.saved_dir)), max(map(len, experiments.EXPERIMENTS)) + 2
        for name, exp in experiments.EXPERIMENTS.items():
            print(f"{'saved' if name in present else '-':6s}{name:{width}s}{exp.about}")
        return 0
    chosen = [experiments.get(name) for name in args.names]     # every name before any work
    notes = {}
    for note in args.note:
        key, sep, value = note.partition("=")
        if not sep or not key:
            raise ValueError(f"--note {note!r} must be KEY=VALUE")
        notes[key] = value
    if args.source is not None:
        if len(chosen) != 1:
            raise ValueError(f"--from saves one run; {len(chosen)} names were given")
        source = Path(args.source)
        history = History.load(source / "history.npz")
        config = runfolder.read_config(source / "config.json")
        folder = saved.save(history, config, chosen[0].name, args.saved_dir, **notes)
        print(f"{chosen[0].name}: saved to {folder}")
        return 0
    plan = []
    for exp in chosen:
        # the pinned kernel path is a CPU path: a GPU would not reproduce the saved run
        device = {"device": "cpu"} if exp.pinned or args.pinned_kernels else {}
        cfg = exp.config(data_root=args.data_root, **device).validate()
        out = Path(args.work) / exp.name
        runfolder.check(out, cfg, resume="auto")     # resume the run there, or start it
        plan.append((exp, cfg, out))
    for exp, cfg, out in plan:
        run = train(cfg, progress=not args.no_progress, out=out, resume="auto")
        folder = saved.save(run.history, run.config, exp.name, args.saved_dir, **notes)
        print(f"{exp.name}: saved to {folder}", flush=True)
    return 0


def config_from_args(args: argparse.Namespace, method: str, base: dict | None = None) -> Config:
    """The Config the flags ask for; with ``base`` (a run's saved config, for --resume) the flags
    given override its values, and whatever differs from it is refused later by name."""
    values = {name: getattr(args, name) for name in (*config_flags(), "profile")
              if getattr(args, name) is not None}
    if args.pinned_kernels:
        if values.get("device", "cpu") != "cpu":
            raise ValueError(f"--pinned-kernels is a CPU kernel path; --device {values['device']} "
                             "is not the CPU")
        values["device"] = "cpu"
    return Config.from_dict({**(base or {}), "method": method, **values}).validate()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        if wants_pinned(args) and not kernels.is_pinned():
            return rerun_pinned(argv)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if kernels.is_pinned():
        kernels.apply_in_process()
    try:
        if args.command == "experiment":
            return experiment_command(args)
        # train: one method in --out; compare: every method, a folder each
        folders = ({args.method: Path(args.out)} if args.command == "train"
                   else {m: Path(args.out) / m for m in METHODS})
        plan = {}
        for method, out in folders.items():   # check every setting and folder before training
            # --resume: the settings of the run there (None: no run, which check refuses)
            base = runfolder.inspect_folder(out).config if args.resume else None
            if method is None:
                method = base["method"] if base else "odc"
            cfg = config_from_args(args, method, base)
            runfolder.check(out, cfg, args.resume)
            plan[method] = (cfg, out)
        runs = {}
        for method, (cfg, out) in plan.items():
            runs[method] = train(cfg, progress=not args.no_progress, out=out, resume=args.resume)
            if distributed.is_main():       # under torchrun: rank 0 reports
                print(f"{method}: saved to {out}", flush=True)
    except (ValueError, FileNotFoundError, TrainingDiverged) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1 if isinstance(err, TrainingDiverged) else 2
    except KeyboardInterrupt as err:
        print(f"\n{err or 'interrupted'}", file=sys.stderr)
        return 130
    if distributed.is_main():
        print(text_table(*results_table({name: run.history for name, run in runs.items()})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
