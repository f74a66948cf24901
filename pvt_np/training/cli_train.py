"""``pvt-np train``: train a PVT v2 on CIFAR-10/100 or an image folder."""

from __future__ import annotations

import argparse
import ast
import sys
from typing import Any

from pvt_np.data import DATASETS
from pvt_np.data.errors import DataError
from pvt_np.models import list_models
from pvt_np.training.checkpoint import CheckpointError
from pvt_np.training.trainer import TrainConfig, Trainer, TrainingError

DEFAULTS = TrainConfig()


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


def add_arguments(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("model")
    m.add_argument("--model", default=DEFAULTS.model, choices=list_models())
    m.add_argument("--override", type=parse_override, action="append", default=[], metavar="KEY=VALUE",
                   help="any create_model override, e.g. sr_ratios=4,2,1,1 or patch_size=3 (repeatable)")  # fmt: skip
    m.add_argument("--cifar-stem", choices=("auto", "yes", "no"), default="auto",
                   help="3x3 stride-2 stem and sr_ratios (4,2,1,1); auto: for images of 64 px or less")  # fmt: skip
    m.add_argument("--drop-rate", type=float, default=DEFAULTS.drop_rate)
    m.add_argument("--drop-path-rate", type=float, default=DEFAULTS.drop_path_rate)
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default=DEFAULTS.dataset, choices=DATASETS)
    d.add_argument("--data-path", default=DEFAULTS.data_path,
                   help="folder or archive with the data (CIFAR python archives or an image folder)")  # fmt: skip
    d.add_argument("--download", action="store_true", help="download CIFAR if missing")
    d.add_argument("--no-augment", action="store_true", help="no random crop / flip")
    d.add_argument("--mixup", type=float, default=DEFAULTS.mixup, help="mixup alpha (0: off)")
    d.add_argument("--cutmix", type=float, default=DEFAULTS.cutmix, help="cutmix alpha (0: off)")
    d.add_argument("--train-subset", type=int, help="use only the first N training images")
    d.add_argument("--test-subset", type=int, help="use only the first N test images")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=DEFAULTS.epochs)
    o.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    o.add_argument("--lr", type=float, default=DEFAULTS.lr, help="peak learning rate (AdamW)")
    o.add_argument("--min-lr", type=float, default=DEFAULTS.min_lr)
    o.add_argument("--warmup-epochs", type=float, default=DEFAULTS.warmup_epochs)
    o.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay)
    o.add_argument("--label-smoothing", type=float, default=DEFAULTS.label_smoothing)
    o.add_argument("--clip-grad", type=float, default=None, help="clip the gradient norm to this value")
    r = p.add_argument_group("run")
    r.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    r.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    r.add_argument("--seed", type=int, default=DEFAULTS.seed)
    r.add_argument("--threads", type=int, help="threads for pvt_np's elementwise kernels (default: all cores; "
                   "under mpiexec, the node's cores shared among its ranks, BLAS too)")  # fmt: skip
    r.add_argument("--nprocs", type=int, help="data-parallel: run N processes through mpiexec (see README)")
    r.add_argument("--output", default="runs/pvt", help="run directory (checkpoints, logs, plots)")
    r.add_argument("--resume", action="store_true", help="continue the run in --output from last.npz")
    r.add_argument("--log-every", type=int, default=DEFAULTS.log_every)
    r.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    cifar = {"auto": None, "yes": True, "no": False}[args.cifar_stem]
    values = {
        "model": args.model,
        "model_overrides": dict(args.override),
        "cifar_stem": cifar,
        "dataset": args.dataset,
        "data_path": args.data_path,
        "download": args.download,
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
        "device": args.device,
        "dtype": args.dtype,
        "seed": args.seed,
        "train_subset": args.train_subset,
        "test_subset": args.test_subset,
        "log_every": args.log_every,
        "progress": not args.no_progress,
    }
    return TrainConfig(**values)


def run(args: argparse.Namespace) -> int:
    from pvt_np import distributed

    if args.nprocs is not None:
        return distributed.launch(args.nprocs, sys.argv[1:])
    try:
        world = distributed.get_world()
    except distributed.DistributedError as err:
        print(f"pvt-np train: error: {err}", file=sys.stderr)
        return 1
    distributed.set_threads(world, args.threads)
    try:
        trainer = world.agree(lambda: Trainer(config_from_args(args), args.output, resume=args.resume))
        result = trainer.fit()
    except KeyboardInterrupt as stop:
        if world.size > 1 and not str(stop):  # a second Ctrl-C on one rank: the others cannot finish the step
            world.abort(130)
        if world.is_root:
            print(f"pvt-np train: {stop or 'interrupted'}", file=sys.stderr)
        return 130
    except (TrainingError, CheckpointError, DataError, ValueError, RuntimeError, OSError) as err:
        # A TrainingError that gets here comes from a loss all-reduced over the ranks (or from set-up,
        # which the ranks agree on): every rank raised it at the same step.
        return distributed.fail(world, err, agreed=(TrainingError,))
    if not world.is_root:
        return 0
    if result:
        best = trainer.best_accuracy
        print(f"done: test accuracy {result['test_accuracy']:.4f} (best {best:.4f}); run in {args.output}")
    return 0
