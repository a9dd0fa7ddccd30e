"""Command line: ``fastnn demo`` (also ``python -m fastnn demo``); ``train``,
``predict`` and ``info`` are in cli.py.

This module (the console script's entry point) and the package's
``__init__`` import only what Python has already loaded at start-up, so a
Ctrl-C is answered by ``main`` from the first instant of fastnn's code."""

import sys


def main(argv=None):
    """``fastnn COMMAND ...``; returns the exit status. Ctrl-C at any moment,
    also while NumPy and numba load, is one line on stderr and status 130."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before a command's own handler (run_command) took over
        print("fastnn: interrupted", file=sys.stderr)
        return 130


def _main(argv):
    from . import __version__
    from .cli import _int_at_least, _Parser, run_command

    parser = _Parser(prog="fastnn", description="fastnn command line")
    parser.add_argument("--version", action="version", version=f"fastnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small network on generated data and report "
                                       "loss, accuracy, device and samples/s")
    demo.add_argument("--samples", type=_int_at_least(2), default=20000,
                      help="training samples (default 20000)")
    demo.add_argument("--epochs", type=_int_at_least(1), default=10, help="epochs (default 10)")
    demo.add_argument("--batch-size", type=_int_at_least(2), default=64,
                      help="batch size (default 64)")
    demo.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "numpy"],
                      help="default auto: the device this run is predicted to train faster "
                           "on (cpu without a usable GPU)")
    demo.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    demo.add_argument("--seed", type=_int_at_least(0), default=0)
    sub.add_parser("bench", help="training throughput of fastnn vs NumPy, PyTorch and JAX on the "
                                 "standard networks (fastnn bench --help)", add_help=False)
    for name, text in (("train", "train a classifier or a regressor on a CSV or .npz file "
                                "and save it"),
                       ("predict", "predict with a saved model"),
                       ("info", "describe a saved model")):
        sub.add_parser(name, help=f"{text} (fastnn {name} --help)", add_help=False)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["train"], ["predict"], ["info"]):
        from .cli import main as cli_main
        return cli_main(argv)
    if argv[:1] == ["bench"]:
        from .bench import main as bench_main
        return run_command("bench", bench_main, argv[1:])
    args = parser.parse_args(argv)
    from .demo import run
    return run_command("demo", run, args.samples, args.epochs, args.batch_size, args.device,
                       args.dtype, args.seed)


if __name__ == "__main__":
    sys.exit(main())
