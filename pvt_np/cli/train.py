"""``pvt-np train``: train a PVT v2 on CIFAR-10/100 or an image folder; ``--task segmentation``: a PVT v2 and a
Semantic FPN head on generated scenes or an images + masks folder (pvt_np.training.segmentation)."""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from pvt_np import distributed
from pvt_np.cli.arguments import positive_int
from pvt_np.data import DATASETS, SCENE_STYLES
from pvt_np.data.errors import DataError
from pvt_np.io.checkpoint import CheckpointError
from pvt_np.models import list_models
from pvt_np.training import runlock
from pvt_np.training.config import ABSENT_FIELD_VALUES, TrainConfig
from pvt_np.training.errors import TrainingError
from pvt_np.training.segmentation import SEGMENTATION_DATASETS, SegmentationConfig, SegmentationTrainer
from pvt_np.training.trainer import Trainer
from pvt_np.training.validation import TTA_MODES, ConfigError

DEFAULTS = TrainConfig()
# The attribute of the parsed arguments that lists the options the user typed (see _Given).
GIVEN = "_given"
# TrainConfig fields set by a flag of another name; every other field F comes from --F (underscores as dashes).
FIELD_FLAGS = {
    "model_overrides": "--override",
    "cifar_stem": "--cifar-stem",
    "crop_padding": "--no-augment",
    "hflip": "--no-augment",
    "progress": "--no-progress",
    "cuda_graph": "--no-cuda-graph",
}


def parse_override(text: str) -> tuple[str, Any]:
    """'sr_ratios=4,2,1,1' -> ('sr_ratios', (4, 2, 1, 1)); 'linear=True' -> ('linear', True)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = ast.literal_eval(value if "," not in value or value.startswith(("(", "[")) else f"({value})")
    except (ValueError, SyntaxError) as err:
        raise argparse.ArgumentTypeError(f"cannot parse the value of {key!r}: {value!r}") from err
    return key.strip(), tuple(parsed) if isinstance(parsed, list) else parsed


def _mark_given(namespace: argparse.Namespace, dest: str) -> None:
    # A fresh set each time: argparse copies a sub-command's namespace attribute by attribute.
    setattr(namespace, GIVEN, {*getattr(namespace, GIVEN, ()), dest})


class _Given(argparse.Action):
    """Stores the value like argparse's default action, and records that the option was typed.

    ``--resume`` takes every setting the user did not type from the run's config.json, so
    it must tell a typed ``--epochs 20`` (which must agree with the run) from the default 20.
    """

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        setattr(namespace, self.dest, values)
        _mark_given(namespace, self.dest)


class _GivenTrue(argparse.Action):
    """``store_true`` that records that the option was typed."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("default", False)
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        setattr(namespace, self.dest, True)
        _mark_given(namespace, self.dest)


class _GivenAppend(argparse.Action):
    """``append`` that records that the option was typed."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), values])
        _mark_given(namespace, self.dest)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=("classification", "segmentation"), default="classification",
                   help="segmentation: a Semantic FPN head on the backbone, --dataset scenes or segfolder; an "
                   "option it does not take (--mixup, --tta, ...) is refused")  # fmt: skip
    m = p.add_argument_group("model")
    m.add_argument("--model", action=_Given, default=DEFAULTS.model, choices=list_models(), help="PVT v2 variant")
    m.add_argument("--override", action=_GivenAppend, type=parse_override, default=[], metavar="KEY=VALUE",
                   help="any create_model override, e.g. sr_ratios=4,2,1,1 or patch_size=3 (repeatable)")  # fmt: skip
    m.add_argument("--cifar-stem", action=_Given, choices=("auto", "yes", "no"), default="auto",
                   help="the CIFAR config: 3x3 stride-2 stem, sr_ratios (4,2,1,1) and, unless --override gives them, "
                   "mlp_ratios (4,4,4,4); auto: for images of 64 px or less")  # fmt: skip
    m.add_argument("--drop-rate", action=_Given, type=float, default=DEFAULTS.drop_rate,
                   help="dropout before the head, in [0, 1)")  # fmt: skip
    m.add_argument("--drop-path-rate", action=_Given, type=float, default=DEFAULTS.drop_path_rate,
                   help="stochastic depth of the last block, in [0, 1)")  # fmt: skip
    m.add_argument("--init-backbone", action=_Given, metavar="PATH",
                   help="--task segmentation: start the backbone from this classification model file (a pvt_np "
                   "checkpoint or weights, a timm or official .pth); the segmentation head starts from "
                   "scratch")  # fmt: skip
    d = p.add_argument_group("data")
    d.add_argument("--dataset", action=_Given, default=DEFAULTS.dataset, choices=(*DATASETS, *SEGMENTATION_DATASETS),
                   help="cifar10, cifar100: the official python releases; imagefolder: train/<class>/...; with "
                   "--task segmentation: scenes (generated) or segfolder: <split>/images/*.png|jpg and "
                   "<split>/masks/*.png of class ids (255: ignore)")  # fmt: skip
    d.add_argument("--image-size", action=_Given, type=positive_int, metavar="PX",
                   help="--task segmentation: the scenes' side (none given: 64), or the size a segfolder's images "
                   "and masks are resized to (none given: their own)")  # fmt: skip
    d.add_argument("--scene-style", action=_Given, choices=SCENE_STYLES,
                   help="--task segmentation --dataset scenes: flat (flat-coloured objects on a grainy background; "
                   "none given) or textured (objects and background in the same textures)")  # fmt: skip
    d.add_argument("--scene-classes", action=_Given, type=int, metavar="N",
                   help="--task segmentation --dataset scenes: classes with the background, 2 (object or not; "
                   "none given) to 6 (each of the five shapes)")  # fmt: skip
    d.add_argument("--data-path", action=_Given, default=DEFAULTS.data_path,
                   help="folder or archive with the data (CIFAR python archives or an image folder)")  # fmt: skip
    d.add_argument("--download", action=_GivenTrue, help="download CIFAR if missing")
    d.add_argument("--cache-dir", action=_Given, default=DEFAULTS.cache_dir,
                   help="where the decoded images of an image folder are cached (none given: "
                   "$XDG_CACHE_HOME/pvt_np or ~/.cache/pvt_np)")  # fmt: skip
    d.add_argument("--no-augment", action=_GivenTrue, help="no random crop / flip")
    d.add_argument("--trivial-augment", action=_GivenTrue,
                   help="TrivialAugment after the crop and flip: one colour or geometric op per image")  # fmt: skip
    d.add_argument("--low-res-epochs", action=_Given, type=int, default=DEFAULTS.low_res_epochs, metavar="N",
                   help="progressive resizing: train the first N epochs on images resized by --low-res-scale "
                   "(cheaper steps), then at full size (none given: the first half of the epochs; 0: off)")  # fmt: skip
    d.add_argument("--low-res-scale", action=_Given, type=float, default=DEFAULTS.low_res_scale, metavar="S",
                   help="size of the low-resolution epochs' images over the images' own, in (0, 1]")  # fmt: skip
    d.add_argument("--mixup", action=_Given, type=float, default=DEFAULTS.mixup, help="mixup alpha (0: off)")
    d.add_argument("--cutmix", action=_Given, type=float, default=DEFAULTS.cutmix, help="cutmix alpha (0: off)")
    d.add_argument("--train-subset", action=_Given, type=int, metavar="N",
                   help="train on a random subset of N images, drawn with --seed (none given: all)")  # fmt: skip
    d.add_argument("--test-subset", action=_Given, type=int, metavar="N",
                   help="evaluate on a fixed random subset of N test images (none given: all)")  # fmt: skip
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", action=_Given, type=int, default=DEFAULTS.epochs, help="epochs to train")
    o.add_argument("--time-budget", action=_Given, type=float, metavar="MINUTES",
                   help="instead of --epochs: fit the number of epochs, and so the cosine, to this many minutes "
                   "from the command's start to its last evaluation, from a timed probe of a few steps")  # fmt: skip
    o.add_argument("--batch-size", action=_Given, type=int, default=DEFAULTS.batch_size, help="images per step")
    o.add_argument("--lr", action=_Given, type=float, default=DEFAULTS.lr, help="peak learning rate (AdamW)")
    o.add_argument("--min-lr", action=_Given, type=float, default=DEFAULTS.min_lr,
                   help="learning rate at the end of the cosine decay")  # fmt: skip
    o.add_argument("--warmup-epochs", action=_Given, type=float, default=DEFAULTS.warmup_epochs,
                   help="linear warm-up, in epochs (at most --epochs)")  # fmt: skip
    o.add_argument("--weight-decay", action=_Given, type=float, default=DEFAULTS.weight_decay,
                   help="AdamW weight decay (not on biases and norm weights)")  # fmt: skip
    o.add_argument("--label-smoothing", action=_Given, type=float, default=DEFAULTS.label_smoothing,
                   help="in [0, 1)")  # fmt: skip
    o.add_argument("--ema-decay", action=_Given, type=float, default=DEFAULTS.ema_decay,
                   help="keep an exponential moving average of the weights, this decay per step (e.g. 0.999), "
                   "evaluated beside them; best.npz keeps whichever scored better (none given: off)")  # fmt: skip
    o.add_argument("--clip-grad", action=_Given, type=float, default=None,
                   help="clip the gradient norm to this value (none given: no clipping)")  # fmt: skip
    r = p.add_argument_group("run")
    r.add_argument("--device", action=_Given, default=DEFAULTS.device, choices=("cpu", "gpu"), help="where to train")
    r.add_argument("--dtype", action=_Given, default=DEFAULTS.dtype, choices=("float32", "float64"),
                   help="floating-point type of weights and activations")  # fmt: skip
    r.add_argument("--seed", action=_Given, type=int, default=DEFAULTS.seed,
                   help="determines the initial weights, the sample order and every random draw")  # fmt: skip
    r.add_argument("--threads", type=positive_int, help="pvt_np's worker threads, which also run the GEMMs (BLAS: one "
                   "thread each); none given: this process's cores, at most 8, under mpiexec shared among the node's "
                   "ranks")  # fmt: skip
    r.add_argument("--nprocs", type=positive_int,
                   help="data-parallel: run N processes through mpiexec (see README); none given: one single-threaded "
                   "process per core on the CPU when mpi4py and mpiexec are installed and --threads is not given, "
                   "else 1")  # fmt: skip
    r.add_argument("--output", default="runs/pvt", help="run directory (checkpoints, logs, plots)")
    r.add_argument("--resume", action="store_true",
                   help="continue the run in --output from last.npz, with the settings of its config.json "
                   "(options given as well must agree with them)")  # fmt: skip
    r.add_argument("--eval-every", action=_Given, type=int, default=DEFAULTS.eval_every, metavar="K",
                   help="evaluate on the test set every K epochs, and always after the last one")  # fmt: skip
    r.add_argument("--tta", action=_Given, default=DEFAULTS.tta, choices=TTA_MODES,
                   help="test-time augmentation: flip scores each test image by the mean of its logits and its "
                   "mirror image's (the single-view accuracy is logged beside it); flip-shift scores the last "
                   "evaluation by ten views, those two each also shifted by 2 pixels up, down, left and right "
                   "(the flip's accuracy logged beside it), and the earlier ones by the flip; flip-grid likewise "
                   "by fifty views, those two at every shift of up to 2 pixels each way (the flip's and the ten "
                   "views' accuracies logged beside it); none: the image alone")  # fmt: skip
    r.add_argument("--log-every", action=_Given, type=int, default=DEFAULTS.log_every,
                   help="steps between progress-bar updates (and, on a GPU, loss reads)")  # fmt: skip
    r.add_argument("--no-progress", action=_GivenTrue,
                   help="no progress bars, start line or per-epoch lines; only the result and errors")  # fmt: skip
    r.add_argument("--no-cuda-graph", action=_GivenTrue,
                   help="on a GPU, run every training step eagerly instead of recording it once per batch shape as "
                   "a CUDA graph and replaying it (the same numbers either way); does nothing on the CPU")  # fmt: skip


def _field_dest(field: str) -> str:
    """The argparse dest of the option that sets TrainConfig field ``field``."""
    flag = FIELD_FLAGS.get(field)
    return flag[2:].replace("-", "_") if flag else field


def config_from_args(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """The TrainConfig the options describe; with ``base``, only the options the user typed change it."""
    cifar = {"auto": None, "yes": True, "no": False}[args.cifar_stem]
    values = {
        "model": args.model,
        "model_overrides": dict(args.override),
        "cifar_stem": cifar,
        "dataset": args.dataset,
        "data_path": args.data_path,
        "download": args.download,
        "cache_dir": args.cache_dir,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "min_lr": args.min_lr,
        "warmup_epochs": args.warmup_epochs,
        "weight_decay": args.weight_decay,
        "label_smoothing": args.label_smoothing,
        "clip_grad": args.clip_grad,
        "drop_rate": args.drop_rate,
        "drop_path_rate": args.drop_path_rate,
        "crop_padding": 0 if args.no_augment else DEFAULTS.crop_padding,
        "hflip": not args.no_augment,
        "mixup": args.mixup,
        "cutmix": args.cutmix,
        "trivial_augment": args.trivial_augment,
        "low_res_epochs": args.low_res_epochs,
        "low_res_scale": args.low_res_scale,
        "device": args.device,
        "dtype": args.dtype,
        "seed": args.seed,
        "train_subset": args.train_subset,
        "test_subset": args.test_subset,
        "eval_every": args.eval_every,
        "tta": args.tta,
        "ema_decay": args.ema_decay,
        "time_budget": args.time_budget,
        "log_every": args.log_every,
        "progress": not args.no_progress,
        "cuda_graph": not args.no_cuda_graph,
    }
    given = getattr(args, GIVEN, set())
    if {"epochs", "time_budget"} <= given:  # the budget chooses the epochs: one or the other
        raise ConfigError(
            "time_budget", "no --epochs beside it (the budget chooses the number of epochs)",
            f"--time-budget {args.time_budget:g} and --epochs {args.epochs}",
        )  # fmt: skip
    if base is not None:
        values = {**asdict(base), **{k: v for k, v in values.items() if _field_dest(k) in given}}
    return TrainConfig(**values)


def saved_config(run_dir: Path) -> TrainConfig | None:
    """The TrainConfig of the run in ``run_dir`` (its config.json), or None if it has none."""
    path = run_dir / "config.json"
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        if not isinstance(saved, dict):
            raise ValueError(f"expected a JSON object, got {type(saved).__name__}")
        known = {f.name for f in fields(TrainConfig)}
        values = {k: v for k, v in saved.items() if k in known}
        for k, v in ABSENT_FIELD_VALUES.items():  # a run from before the setting existed ran without it
            values.setdefault(k, v)
        # JSON has no tuples: sr_ratios=[4, 2, 1, 1] back to the (4, 2, 1, 1) the options give.
        overrides = values.get("model_overrides") or {}
        values["model_overrides"] = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
        return TrainConfig(**values)
    except (OSError, ValueError, TypeError, AttributeError) as err:
        raise CheckpointError(f"--resume: cannot read the run's settings from {path}: {err}") from err


def flag_error(err: ConfigError) -> str:
    """A ConfigError in the command's terms: the flag that sets the field, the allowed range, the value typed."""
    flag = FIELD_FLAGS.get(err.field, "--" + err.field.replace("_", "-"))
    got = err.got
    if isinstance(got, dict):
        got = " ".join(f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in got.items())
    return f"argument {flag}: expected {err.expected}, got {got}"


class Terminated(BaseException):
    """SIGTERM or SIGHUP reached ``pvt-np train``: it ends now, keeping the last checkpoint (a checkpoint being
    written is abandoned and its temporary removed), with the exit code 128 + the signal's number.

    A BaseException, as KeyboardInterrupt is: no ``except Exception`` on its way catches it."""

    def __init__(self, signum: int) -> None:
        self.code = 128 + int(signum)
        super().__init__(signal.Signals(signum).name)


@contextlib.contextmanager
def _terminated_by_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`Terminated` for the duration, once (on the main thread; the handlers before
    are put back): the same exit codes, 143 and 129, in one process and on every rank."""

    raised = []
    owner = os.getpid()

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != owner:  # a forked child (the image decoders' pool) inherited it: end as by default, quietly
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if not raised:  # once: a second SIGTERM (mpiexec's and the launcher watch's) must not cut the ending short
            raised.append(signum)
            raise Terminated(signum)

    previous: dict[int, Any] = {}
    try:
        for name in ("SIGTERM", "SIGHUP"):
            if hasattr(signal, name):  # (Windows has no SIGHUP)
                number = getattr(signal, name)
                previous[number] = signal.signal(number, handler)
    except ValueError:  # not the main thread: no handler can be set
        pass
    try:
        yield
    finally:
        for number, before in previous.items():
            signal.signal(number, before)


class _Refused(Exception):
    """The run directory is held by another run (or cannot be locked): exit 1 with the message, on every rank."""


def _lock_run(world: Any, output: str) -> runlock.RunLock | None:
    """Rank 0 (the writer) holds the lock on ``output``: the one its launcher handed down, or its own; a
    :class:`_Refused` on every rank if another run holds it."""
    lock, message = None, None
    if world.is_root:
        launcher = distributed.launcher_identity()
        try:
            lock = runlock.adopt(output) or runlock.acquire(
                output, mine=lambda holder: launcher is not None and holder.get("pid") == launcher[0]
            )
            if lock.held:
                who = {"rank": world.rank, "ranks": world.size} if world.size > 1 else {}
                if launcher is not None:
                    who.update(launcher_pid=launcher[0], launcher_start=launcher[1])
                lock.record(**who)
        except runlock.RunLocked as err:
            message = str(err)
        except OSError as err:
            message = f"cannot lock the run directory {output}: {err}"
    else:
        runlock.drop_inherited(output)
    if world.size > 1:
        message = world.comm.bcast(message, root=0)
    if message is not None:
        raise _Refused(message)
    return lock


def run(args: argparse.Namespace) -> int:
    """``pvt-np train``; its exit code: 0, 1 (a failure), 2 (a bad option), 129/130/143 (SIGHUP/SIGINT/SIGTERM),
    the same under MPI (docs/faults.md)."""
    with _terminated_by_signals():
        try:
            return _run(args)
        except Terminated as stop:  # before training (set-up, launching)
            print(f"pvt-np train: stopped by {stop}", file=sys.stderr, flush=True)
            return stop.code
        except _Refused as err:  # the launcher's own refusal (the ranks print theirs)
            print(f"pvt-np train: error: {err}", file=sys.stderr, flush=True)
            return distributed.EXIT_FAILURE


def _run(args: argparse.Namespace) -> int:
    """Either task through the same launcher, run lock, ranks and exit codes (:func:`_train`)."""
    if args.task == "segmentation" or (args.resume and _saved_task(Path(args.output)) == "segmentation"):
        refused = sorted(getattr(args, GIVEN, set()) - set(SEGMENTATION_DESTS))
        if refused:
            flag = "--" + refused[0].replace("_", "-")
            print(
                f"pvt-np train: error: argument {flag}: not with --task segmentation (it takes "
                f"{', '.join('--' + d.replace('_', '-') for d in SEGMENTATION_DESTS)}, --threads, --nprocs, "
                "--output, --resume)",
                file=sys.stderr,
            )
            return 2
        return _train(
            args,
            segmentation_config,
            lambda config, started: SegmentationTrainer(config, args.output, resume=args.resume),
            lambda trainer, result: f"test mIoU {result['test_miou']:.4f} (best {trainer.best_miou:.4f})",
        )
    for dest in sorted(getattr(args, GIVEN, set()) & {"image_size", "init_backbone", "scene_style", "scene_classes"}):
        flag = "--" + dest.replace("_", "-")
        print(f"pvt-np train: error: argument {flag}: only with --task segmentation", file=sys.stderr)
        return 2
    return _train(
        args,
        _classification_config,
        lambda config, started: Trainer(config, args.output, resume=args.resume, started=started),
        _classification_result,
    )


def _classification_config(args: argparse.Namespace) -> TrainConfig:
    return config_from_args(args, saved_config(Path(args.output)) if args.resume else None)


def _classification_result(trainer: Trainer, result: dict[str, Any]) -> str:
    ema = f", EMA {result['ema_test_accuracy']:.4f}" if result.get("ema_test_accuracy") is not None else ""
    return f"test accuracy {result['test_accuracy']:.4f}{ema} (best {trainer.best_accuracy:.4f})"


def _train(
    args: argparse.Namespace,
    make_config: Callable[[argparse.Namespace], Any],
    make_trainer: Callable[[Any, float], Any],
    describe: Callable[[Any, dict[str, Any]], str],
) -> int:
    """Launch the ranks (``--nprocs``, or one per core by default) or, in a rank or the one process, train.

    ``make_config(args)``: the task's config (a ConfigError for a bad option, exit 2); ``make_trainer(config,
    started)``: its trainer (``started``: the command's start, for --time-budget); ``describe(trainer, result)``:
    the figures of the last line."""
    started = distributed.command_started()  # --time-budget counts from here (or from the launching command)
    started_wall = time.time()
    nprocs = args.nprocs
    if nprocs is None and not distributed.under_launcher():
        # Check the options here, once, so that a bad value gets its one message and exit code 2
        # before any rank starts; then let the config (typed or resumed) choose the processes.
        try:
            config = make_config(args)
        except ConfigError as err:
            print(f"pvt-np train: error: {flag_error(err)}", file=sys.stderr)
            return 2
        except CheckpointError as err:
            print(f"pvt-np train: error: {err}", file=sys.stderr)
            return 1
        nprocs = distributed.auto_nprocs(config.device, args.threads, config.batch_size)
    if nprocs is not None and (nprocs > 1 or distributed.under_launcher()):  # (typed under mpiexec: refused)
        if distributed.under_launcher():
            return distributed.launch(nprocs, sys.argv[1:], started=started_wall)
        # The run directory is locked before any rank starts (a second run is refused at once), and the lock is
        # handed to the ranks, whose rank 0 holds it for the run's life.
        try:
            lock = runlock.acquire(args.output)
        except runlock.RunLocked as err:
            raise _Refused(str(err)) from err
        except OSError as err:
            raise _Refused(f"cannot lock the run directory {args.output}: {err}") from err
        lock.record()
        try:
            return distributed.launch(nprocs, sys.argv[1:], started=started_wall, lock_fd=lock.detach_fd())
        finally:
            lock.release()
    try:
        world = distributed.get_world()
    except distributed.DistributedError as err:
        print(f"pvt-np train: error: {err}", file=sys.stderr)
        return 1
    distributed.set_threads(world, args.threads)
    distributed.watch_launcher()  # under pvt-np train --nprocs: this rank ends when the launcher has gone
    lock = None
    try:
        lock = _lock_run(world, args.output)
        trainer = world.agree(lambda: make_trainer(make_config(args), started))
        result = trainer.fit()
    except _Refused as err:
        if world.is_root:
            print(f"pvt-np train: error: {err}", file=sys.stderr, flush=True)
        return 1
    except Terminated as stop:  # SIGTERM or SIGHUP: end now; the last checkpoint stays as it was
        if world.is_root:
            last = Path(args.output) / "last.npz"
            kept = f"{last} holds the last checkpoint (continue with --resume)" if last.exists() else "no checkpoint"
            print(f"pvt-np train: stopped by {stop}; {kept}", file=sys.stderr, flush=True)
        if world.size > 1:  # the other ranks may wait in a collective for this one
            world.abort(stop.code)
        return stop.code
    except KeyboardInterrupt as stop:
        if world.size > 1 and not str(stop):  # a second Ctrl-C on one rank: the others cannot finish the step
            world.abort(130)
        if world.is_root:
            print(f"pvt-np train: {stop or 'interrupted'}", file=sys.stderr)
        return 130
    except ConfigError as err:  # a bad option value: argparse's message form and exit code
        if world.is_root:
            print(f"pvt-np train: error: {flag_error(err)}", file=sys.stderr)
        return 2
    except distributed.DistributedError as err:
        # Every rank refused the same option (under mpiexec), or an option the ranks cannot run with.
        bad_option = (ConfigError, distributed.OptionError)
        if isinstance(err, distributed.OptionError) or isinstance(err.__cause__, bad_option):
            if world.is_root:
                shown = flag_error(err.__cause__) if isinstance(err.__cause__, ConfigError) else str(err)
                print(f"pvt-np train: error: {shown}", file=sys.stderr)
            return 2
        return distributed.fail(world, err)
    except (TrainingError, CheckpointError, DataError, ValueError, RuntimeError, OSError) as err:
        # A TrainingError that gets here comes from a loss all-reduced over the ranks (or from set-up,
        # which the ranks agree on): every rank raised it at the same step.
        return distributed.fail(world, err, agreed=(TrainingError,))
    finally:
        if lock is not None:  # a run that wrote nothing leaves no directory behind
            lock.release()
    if not world.is_root:
        return 0
    if result:
        print(f"done: {describe(trainer, result)}; run in {args.output}")
    return 0


# The options --task segmentation takes (argparse dests); any other typed option is refused.
SEGMENTATION_DESTS = (
    "model", "override", "init_backbone", "drop_path_rate", "dataset", "data_path", "image_size", "scene_style",
    "scene_classes", "no_augment",
    "train_subset", "test_subset", "epochs", "batch_size", "lr", "min_lr", "warmup_epochs", "weight_decay", "device",
    "dtype", "seed", "no_progress",
)  # fmt: skip


def _saved_task(run_dir: Path) -> str | None:
    """The task recorded in the config.json of the run in ``run_dir`` (None: none, or a classification run)."""
    try:
        saved = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return saved.get("task") if isinstance(saved, dict) else None


def segmentation_config(args: argparse.Namespace) -> SegmentationConfig:
    """The SegmentationConfig the typed options describe, over the run's config.json with --resume (else over
    SegmentationConfig's defaults: the classification defaults of the parser do not apply)."""
    given = getattr(args, GIVEN, set())
    values: dict[str, Any] = {}
    if args.resume:
        path = Path(args.output) / "config.json"
        try:
            values = asdict(SegmentationConfig.from_saved(json.loads(path.read_text())))
        except (OSError, ValueError, AttributeError, TypeError) as err:
            raise CheckpointError(f"--resume: cannot read the run's settings from {path}: {err}") from err
    for dest in given & set(SEGMENTATION_DESTS):
        if dest == "override":
            values["model_overrides"] = dict(args.override)
        elif dest == "no_augment":
            values.update(crop_padding=0, hflip=False)
        elif dest == "no_progress":
            values["progress"] = False
        else:
            values[dest] = getattr(args, dest)
    return SegmentationConfig(**values)
