"""``ptypy-npu`` command line: simulate scans, reconstruct them and train models, without PtyPy.

    ptypy-npu simulate --out scan.cxi --with-probe          # a scan file, and its truth beside it
    ptypy-npu solve scan.cxi --out result.h5 --png --truth scan.truth.npz
    ptypy-npu train scan.cxi --out star_model
    ptypy-npu reconstruct new_scan.cxi --model star_model --out new.h5 --png
    ptypy-npu compare script.py --engines DM EPIE ML W1Net DM+W1Net --numiter 100 --out cmp
    ptypy-npu plugins

The reconstruction flags (``--epochs``, ``--batch-size``, ``--object-rate``, ...) are generated
from :mod:`ptypy_npu.settings`, the settings of the PtyPy engine under their tree names. Every
input is checked before any compute; a bad one ends the command with one line naming it (exit 2),
a diverged run with the reason (exit 3), and nothing is written then.
"""
import argparse
import dataclasses
import logging
import os
import sys

from . import __version__, settings

#: Exit status of a refused input, and of a run that diverged (nothing written).
BAD_INPUT, DIVERGED = 2, 3
#: The simulated scans' defaults, shared by ``simulate`` and ``solve --simulate``.
SIMULATION = {'frames': 100, 'frame_size': 64, 'photons': 1e6}


class _ProgressHandler(logging.Handler):
    """Log records through tqdm, so messages do not break the progress bar."""

    def emit(self, record):
        from tqdm import tqdm
        tqdm.write(self.format(record))


def _convert(text, meta):
    """A flag's text as the setting's type ('none' for a setting that may be None)."""
    kinds = [kind.strip() for kind in meta['type'].split(',')]
    if 'None' in kinds and text.lower() == 'none':
        return None
    kind = next(k for k in kinds if k != 'None')
    if kind == 'bool':
        if text.lower() not in ('true', 'false', 'yes', 'no', '1', '0'):
            raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
        return text.lower() in ('true', 'yes', '1')
    try:
        return {'int': int, 'float': float, 'str': str}[kind](text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {settings.describe(meta)}, got {text!r}") from None


def add_setting_flags(parser):
    """One flag per setting of :class:`~ptypy_npu.settings.Settings`, its help and default from there."""
    group = parser.add_argument_group('reconstruction settings (PtyPy tree names in brackets)')
    for key, default, meta in settings.walk(settings.Settings()):
        flag = settings.cli_flag(key, meta)
        choices = f" ({'|'.join(map(str, meta['choices']))})" if meta['choices'] else ''
        group.add_argument(flag, dest=f"setting:{key}", default=argparse.SUPPRESS, metavar=key.split('.')[-1].upper(),
                           type=lambda text, meta=meta: _convert(text, meta),
                           help=f"{meta['help']}{choices} [{key}; default {default}]")


def settings_from(args, defaults=None):
    """The :class:`~ptypy_npu.settings.Settings` of the flags given (the rest at ``defaults``, {key: value},
    or the settings' own; a flag's value may be None, as ``--network none``)."""
    given = {name[len('setting:'):]: value for name, value in vars(args).items() if name.startswith('setting:')}
    return settings.make({**(defaults or {}), **given})


def _flag(key):
    """The flag of the setting ``key`` (the key itself where it has none)."""
    return {k: flag for flag, k in settings.flags().items()}.get(key, key)


def _positive(name, value):
    if value is not None and value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def _load_scans(args, model=None, needs_probe=None):
    """[(ScanData, truth or None)] from ``--simulate`` or the INPUT files, each with a probe: ``--probe``,
    else the file's, else the model's, else None (the solver guesses one from the data and says so), or,
    given ``needs_probe`` (why the command cannot guess one), a ValueError naming --probe."""
    from .io import load_scan, read_probe
    from .simulate import simulate_scan
    _positive('--frames', args.frames)
    inputs = args.inputs if isinstance(args.inputs, list) else [args.inputs] if args.inputs else []
    if getattr(args, 'simulate', False):
        if inputs:
            raise ValueError("give INPUT files or --simulate, not both")
        return [simulate_scan(frame_size=args.frame_size, count=args.frames or SIMULATION['frames'],
                              photons=args.photons, seed=args.simulation_seed)]
    if not inputs:
        raise ValueError("give an INPUT scan file" + (" or --simulate" if hasattr(args, 'simulate') else ""))
    scans = []
    for path in inputs:
        data = load_scan(path, max_frames=args.frames)
        if args.probe:
            data.probe = read_probe(args.probe, data.frame_shape)
        elif data.probe is None and model is not None:
            data.probe = model.probe
        elif data.probe is None and needs_probe:
            raise ValueError(f"{path} holds no probe: {needs_probe}; give --probe FILE")
        elif data.probe is None:
            logging.getLogger(__name__).info(f"{path} holds no probe (--probe FILE gives one): guessing one")
        scans.append((data if data.probe is None else data.validate(), None))
    return scans


def _truth(args):
    """(object, region) of ``--truth`` (``simulate``'s ``.truth.npz``), or None."""
    if not getattr(args, 'truth', None):
        return None
    from .comparison import read_truth
    return read_truth(args.truth)[:2]


def _check_outputs(args, png=False):
    """The files this command will write, refused up front if they exist (without --force) or their
    folder is missing or not writable; returns the PNG path or None."""
    from .files import check_output
    figure = args.out.rsplit('.', 1)[0] + '.png' if png else None
    for path in (args.out, figure):
        if path:
            check_output(path, args.force)
    return figure


def _reconstruct_scan(args, data, truth, reconstruction, every_epoch=None):
    """Run ``reconstruction`` (a JointSolver) up to the ``numiter`` epochs of its settings, with a progress
    bar (time left) and the object error against ``truth`` every 5 epochs; ``every_epoch(solver)`` after
    each (a checkpoint). Returns it."""
    from tqdm import tqdm
    from .metrics import illuminated_region, registered_error
    region = None if truth is None else (truth[1] if truth[1] is not None else
                                         illuminated_region(data.probe, data.positions, truth[0].shape))
    epochs = reconstruction.settings.numiter
    with tqdm(total=epochs, initial=reconstruction.epoch, unit='epoch', desc=args.command, dynamic_ncols=True) as bar:
        def report(solver):
            errors = solver.errors.mean(0)
            bar.update(1)
            bar.set_postfix(fourier=f"{errors[0]:.4g}", photon=f"{errors[1]:.4g}", exit=f"{errors[2]:.3g}")
            if truth is not None and (solver.epoch % 5 == 0 or solver.epoch == epochs):
                bar.write(f"epoch {solver.epoch:4d}  object error {registered_error(solver.object, truth[0], region):.4f}")
            if every_epoch is not None:
                every_epoch(solver)
        reconstruction.run(max(epochs - reconstruction.epoch, 0), report=report)
    return reconstruction


def _solve(args):
    from .io import save_png, save_result
    from .metrics import illuminated_region
    from .plugins import build_solver
    png = _check_outputs(args, args.png)
    chosen = settings_from(args).validate()
    model = None
    if args.model:
        from .models import load_model
        model = load_model(args.model, chosen.device)
    (data, simulated_truth), = _load_scans(args, model)
    truth = _truth(args) or (None if simulated_truth is None else (simulated_truth, None))
    options = {}
    if model is not None:  # warm start: the one-pass reconstruction, and the model's network if one trains
        model.check(data)
        data = dataclasses.replace(data, obj=model.reconstruct(data))
        print(f"started from the one-pass reconstruction of {args.model}", flush=True)
        if chosen.uses_network:
            chosen = settings.make({'network': model.network_settings()}, chosen)
            options['input_scale'] = model.sidecar['input']['scale']
    solver = build_solver(data, chosen, **options)
    if model is not None and chosen.uses_network:
        from .networks import copy_weights, network_weights
        copy_weights(network_weights(model.network), solver.network)
    _reconstruct_scan(args, data, truth, solver)
    metadata = {'ptypy_npu_version': __version__, 'input': 'simulated' if args.simulate else str(args.inputs),
                'epochs': solver.epoch, 'network': str(chosen.network.name), 'loss': chosen.loss,
                'model': str(args.model)}
    save_result(args.out, solver.object, solver.probe, data.positions, metadata, solver.errors, force=args.force)
    print(f"wrote {args.out}")
    if png:
        save_png(png, solver.object, illuminated_region(solver.probe, data.positions, data.obj.shape), args.force)
        print(f"wrote {png}")
    return 0


def _train_model(args):
    """One network over the frames of every INPUT scan (one instrument: each keeps its own object)."""
    from .models import save_model
    from .plugins import build_solver
    from .scan import combine
    chosen = settings_from(args).validate()
    if not chosen.uses_network:
        raise ValueError(f"{_flag('network.name')} none: train saves a network, so it needs one")
    _check_outputs(args)
    scans = [data for data, _ in _load_scans(args)]
    for path, data in zip(args.inputs[1:], scans[1:]):
        if data.frame_shape != scans[0].frame_shape:
            raise ValueError(f"{path}: its frames {data.frame_shape} differ from {args.inputs[0]}'s "
                             f"{scans[0].frame_shape}: train takes scans of one instrument")
    data = combine(scans)[0] if len(scans) > 1 else scans[0]
    solver = _reconstruct_scan(args, data, None, build_solver(data, chosen))
    save_model(args.out, solver.export_network(), force=args.force)
    print(f"wrote model {args.out}")
    return 0


def _pretrain(args):
    """A network trained on a corpus simulated with the instrument of ``--like`` (pretraining.py)."""
    from . import checkpoints
    from .models import save_model
    from .pretraining import PRETRAINING_DEFAULTS, corpus, instrument, pretraining_solver
    chosen = settings_from(args, PRETRAINING_DEFAULTS).validate()
    if not chosen.uses_network:
        raise ValueError(f"{_flag('network.name')} none: pretrain trains a network, so it needs one")
    _positive('--objects', args.objects)
    _positive('--frames-per-object', args.frames_per_object)
    _check_outputs(args)
    args.inputs, args.frames = [args.like], None
    (scan, _), = _load_scans(args)
    if scan.probe is None:
        raise ValueError(f"--like {args.like} holds no probe: give the instrument's with --probe FILE")
    machine = instrument(scan)
    data, truth, card = corpus(machine, args.objects, args.frames_per_object, args.corpus_seed)
    print(f"corpus: {args.objects} objects x {card['frames_per_object']} frames of {machine['frame_size']} px, "
          f"{machine['photons']:.3g} photons per frame, step {machine['step_fraction']:.2f} of the frame; "
          f"{'supervised by the truth' if args.supervision == 'truth' else 'physics only'}", flush=True)
    solver = pretraining_solver(data, truth, chosen, args.supervision == 'truth')
    if args.checkpoint and os.path.exists(args.checkpoint):
        checkpoints.resume(solver, args.checkpoint)
        print(f"resumed from {args.checkpoint} at epoch {solver.epoch}", flush=True)
    _reconstruct_scan(args, data, None, solver,
                      every_epoch=(lambda s: checkpoints.save(s, args.checkpoint)) if args.checkpoint else None)
    export = solver.export_network()
    export.training.update(corpus=card, supervision=args.supervision)
    save_model(args.out, export, force=args.force)
    print(f"wrote model {args.out}")
    return 0


def _reconstruct(args):
    from .io import save_png, save_result
    from .metrics import illuminated_region, registered_error
    from .models import SingleFrameEstimates, StreamingReconstruction, load_model
    png = _check_outputs(args, args.png)
    _positive('--batch-size', args.batch_size)
    _positive('--chunk', args.chunk)
    model = load_model(args.model, args.device) if args.model else None
    (data, _), = _load_scans(args, model, needs_probe="without --model, reconstruct stitches the frames' "
                                                      "single-shot estimates, which need the probe")
    truth = _truth(args)
    if model is None:
        model = SingleFrameEstimates(data.probe)
        print("no --model: stitching the frames' single-shot estimates (no network)", flush=True)
    model.check(data)
    stream = StreamingReconstruction(model, data.obj.shape, data.probe, args.batch_size, fill=data.obj,
                                     propagator=data.propagator,
                                     report=lambda line: print(line, flush=True))
    chunk = args.chunk or len(data.positions)
    obj = stream.run((data.intensities[k:k + chunk], data.positions[k:k + chunk])
                     for k in range(0, len(data.positions), chunk))
    if truth is not None:
        print(f"object error {registered_error(obj, truth[0], truth[1]):.4f}")
    metadata = {'ptypy_npu_version': __version__, 'input': str(args.inputs),
                'model': str(args.model) if args.model else 'none: single-frame estimates',
                'frames_per_second': stream.frames_done / stream.seconds}
    save_result(args.out, obj, data.probe, data.positions, metadata, force=args.force)
    print(f"wrote {args.out}")
    if png:
        save_png(png, obj, illuminated_region(data.probe, data.positions, obj.shape), args.force)
        print(f"wrote {png}")
    return 0


def _simulate(args):
    import numpy as np

    from .files import atomic_output, check_output
    from .io import save_cxi
    from .metrics import illuminated_region
    from .simulate import simulate_scan
    for name in ('--frames', '--frame-size'):
        _positive(name, getattr(args, name[2:].replace('-', '_')))
    if not args.photons > 0:
        raise ValueError(f"--photons must be > 0, got {args.photons}")
    truth_path = args.out.rsplit('.', 1)[0] + '.truth.npz'
    for path in (args.out, truth_path):
        check_output(path, args.force)
    data, truth = simulate_scan(frame_size=args.frame_size, count=args.frames, photons=args.photons,
                                seed=args.seed, obj=args.object)
    save_cxi(args.out, data, with_probe=args.with_probe, force=args.force)
    with atomic_output(truth_path, args.force, 'truth file') as temporary, open(temporary, 'wb') as handle:
        np.savez(handle, object=truth, region=illuminated_region(data.probe, data.positions, truth.shape),
                 probe=data.probe)
    print(f"wrote {args.out} ({len(data.positions)} frames of {args.frame_size} px, {args.photons:.3g} photons "
          f"per frame, {'with' if args.with_probe else 'without'} its probe) and its truth {truth_path}")
    return 0


def _compare(args):
    from . import comparison
    if args.ptyr:
        if args.tree or args.engines:
            raise ValueError("give either SCRIPT_OR_TREE with --engines, or --ptyr files, not both")
        comparison.compare_ptyr(args.ptyr, args.out, args.truth, args.force)
        return 0
    if not args.tree:
        raise ValueError("give a PtyPy script or JSON tree (SCRIPT_OR_TREE), or --ptyr files")
    if args.truth:
        raise ValueError("--truth is for --ptyr files; simulated scans bring their own truth")
    from .ptypy_plugin import runner
    contestants = comparison.parse_contestants(args.engines, args.numiter, runner.known_engines())
    runner.compare(runner.load_tree(args.tree), contestants, args.out, args.seed, args.sample_every, args.force,
                   args.halves)
    return 0


def _plugins(args):
    from .plugins import describe
    for name, distribution, networks, optimizers, status in describe():
        print(f"{name:12s} {distribution:22s} networks: {', '.join(networks) or '-':20s} "
              f"optimizers: {', '.join(optimizers) or '-':20s} {status}")
    return 0


def _add_scan_inputs(parser, several=False, probe_default="the file's, else one guessed from the data"):
    parser.add_argument('inputs', nargs='+' if several else '?', metavar='INPUT',
                        help='scan file: .cxi/.h5 (CXI) or .npz/.npz.bz2 (data, scan, probe optional)')
    parser.add_argument('--frames', type=int, help='use only the first FRAMES frames')
    parser.add_argument('--probe', help=f"initial probe: .npy, .npz, .cxi/.h5 or a PtyPy .ptyr "
                                        f"(default: {probe_default})")
    parser.add_argument('--force', action='store_true', help='replace existing output files')


def _add_simulation(parser):
    parser.add_argument('--frame-size', type=int, default=SIMULATION['frame_size'], help='frame size in pixels')
    parser.add_argument('--photons', type=float, default=SIMULATION['photons'], help='mean photons per frame')


def build_parser():
    parser = argparse.ArgumentParser(prog='ptypy-npu', description=__doc__.split('\n')[0])
    parser.add_argument('--version', action='version', version=f'ptypy-npu {__version__}')
    commands = parser.add_subparsers(dest='command', required=True)

    simulate = commands.add_parser('simulate', help='write a simulated scan as a CXI file, its truth beside it')
    simulate.add_argument('--out', required=True, help='CXI file to write; the truth goes to OUT.truth.npz')
    from .simulate import OBJECTS
    simulate.add_argument('--object', default='star', choices=sorted(OBJECTS), help='test object')
    simulate.add_argument('--frames', type=int, default=SIMULATION['frames'], help='frames of the scan')
    _add_simulation(simulate)
    simulate.add_argument('--seed', type=int, default=0, help='seed of the Poisson noise (and random objects)')
    simulate.add_argument('--with-probe', action='store_true', help='store the probe in the file (raw files lack it)')
    simulate.add_argument('--force', action='store_true', help='replace existing output files')
    simulate.set_defaults(run=_simulate)

    solve = commands.add_parser('solve', help='reconstruct a scan (CXI, npz or simulated)')
    _add_scan_inputs(solve)
    solve.add_argument('--out', required=True, help='HDF5 result file to write')
    solve.add_argument('--png', action='store_true', help='also write amplitude/phase as OUT.png')
    solve.add_argument('--truth', help="truth file (simulate's .truth.npz): print the object error")
    solve.add_argument('--simulate', action='store_true', help='simulate a Siemens-star scan instead of INPUT')
    _add_simulation(solve)
    solve.add_argument('--simulation-seed', type=int, default=0, help='seed of the simulated noise')
    solve.add_argument('--model', help='warm start: begin from this model\'s one-pass reconstruction (and its '
                                       'network, unless --network none)')
    add_setting_flags(solve)
    solve.set_defaults(run=_solve)

    pretrain = commands.add_parser('pretrain', help="train a network for an instrument on simulated objects with a "
                                                    "scan's probe, geometry, frame size, dose and scan step",
                                   description="Defaults differ from solve's where pretraining needs: "
                                               "--network-input holographic, --batch-size 16.")
    pretrain.add_argument('--like', required=True, help='a scan of the instrument (.cxi/.h5 or .npz)')
    pretrain.add_argument('--out', required=True, help='model directory to write')
    pretrain.add_argument('--probe', help="the instrument's probe (.npy, .npz, .cxi/.h5, .ptyr), if --like has none")
    pretrain.add_argument('--objects', type=int, default=16, help='simulated objects (scans) in the corpus')
    pretrain.add_argument('--frames-per-object', type=int, help="frames of each simulated scan (default: --like's)")
    pretrain.add_argument('--corpus-seed', type=int, default=0, help='seed of the corpus (objects and noise)')
    pretrain.add_argument('--supervision', choices=['truth', 'physics'], default='truth',
                          help="'truth': learn from the simulated objects and the data; 'physics': from the data "
                               "alone, the objects reconstructed alongside")
    pretrain.add_argument('--checkpoint', help='.ckpt file written after every epoch; resumed from when it exists')
    pretrain.add_argument('--force', action='store_true', help='replace an existing model directory')
    add_setting_flags(pretrain)
    pretrain.set_defaults(run=_pretrain)

    train = commands.add_parser('train', help='train one network on the frames of one or more scans of one '
                                              'instrument and save it as a model directory')
    _add_scan_inputs(train, several=True)
    train.add_argument('--out', required=True, help='model directory to write')
    add_setting_flags(train)
    train.set_defaults(run=_train_model)

    reconstruct = commands.add_parser('reconstruct', help="one-pass reconstruction of a scan with a trained model, "
                                                          "or without one from its frames' single-shot estimates")
    _add_scan_inputs(reconstruct, probe_default="the file's, else the model's; without --model the file's")
    reconstruct.add_argument('--model', help='model directory written by `ptypy-npu train` or `pretrain`; without '
                                             "it, the frames' single-shot estimates are stitched (no network; the "
                                             'scan needs its probe, or --probe)')
    reconstruct.add_argument('--out', required=True, help='HDF5 result file to write')
    reconstruct.add_argument('--png', action='store_true', help='also write amplitude/phase as OUT.png')
    reconstruct.add_argument('--truth', help="truth file (simulate's .truth.npz): print the object error")
    reconstruct.add_argument('--batch-size', type=int, default=64, help='frames per forward pass')
    reconstruct.add_argument('--chunk', type=int, help='frames per streamed chunk (default: all at once)')
    reconstruct.add_argument('--device', default='CPU', choices=settings.DEVICES)
    reconstruct.set_defaults(run=_reconstruct)

    comparison = commands.add_parser('compare', help='run engines side by side on one scan (needs PtyPy), '
                                                     'or compare finished .ptyr reconstructions')
    comparison.add_argument('tree', nargs='?', metavar='SCRIPT_OR_TREE',
                            help='PtyPy script (.py, read up to its Ptycho) or parameter tree (.json)')
    comparison.add_argument('--engines', nargs='+', default=[],
                            help="contestants: PtyPy engine names or chains, e.g. DM EPIE ML W1Net DM+W1Net "
                                 "(DM:50+W1Net:30 sets iterations per engine)")
    comparison.add_argument('--numiter', nargs='+', type=int, default=[100],
                            help='iterations of every engine, or one count per contestant')
    comparison.add_argument('--ptyr', nargs='+', help='finished reconstructions to compare instead of running')
    comparison.add_argument('--truth', help="truth.npz (arrays 'object', 'region') for scoring --ptyr files")
    comparison.add_argument('--out', required=True, help='output folder')
    comparison.add_argument('--force', action='store_true', help="replace this command's earlier results in OUT")
    comparison.add_argument('--halves', action='store_true',
                            help='also reconstruct from the even and odd frames (NpzScan) for half-data FRC')
    comparison.add_argument('--seed', type=int, default=0)
    comparison.add_argument('--sample-every', type=int, default=5, help='iterations between convergence samples')
    comparison.set_defaults(run=_compare)

    commands.add_parser('plugins', help='list loaded plugins and what they contribute').set_defaults(run=_plugins)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    handler = _ProgressHandler()
    handler.setFormatter(logging.Formatter('%(message)s'))
    package_logger = logging.getLogger('ptypy_npu')
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    try:
        return args.run(args)
    except settings.SettingError as error:
        print(f"ptypy-npu {args.command}: error: {error.spelled(_flag)}", file=sys.stderr)
        return BAD_INPUT
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"ptypy-npu {args.command}: error: {error}", file=sys.stderr)
        return BAD_INPUT
    except FloatingPointError as error:
        print(f"ptypy-npu {args.command}: the run diverged and nothing was written: {error}", file=sys.stderr)
        return DIVERGED
    finally:
        package_logger.removeHandler(handler)


if __name__ == '__main__':
    sys.exit(main())
