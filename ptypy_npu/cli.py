"""``ptypy-npu`` command line: list plugins, reconstruct scans and train models without PtyPy.

    ptypy-npu plugins
    ptypy-npu solve --simulate --out result.h5 --png
    ptypy-npu solve ../shared/data/siemens-star-small.npz.bz2 --frames 200 --out star.h5
    ptypy-npu train scan.cxi --out star_model
    ptypy-npu reconstruct new_scan.cxi --model star_model --out new.h5 --png
    ptypy-npu compare script.py --engines DM EPIE ML W1Net DM+W1Net --numiter 100 --out cmp
    ptypy-npu compare --ptyr cmp/DM.ptyr cmp/W1Net.ptyr --truth cmp/truth.npz --out cmp2
"""
import argparse
import sys
import time

from . import __version__


def _plugins(args):
    from .plugins import describe
    for name, distribution, networks, optimizers, status in describe():
        print(f"{name:12s} {distribution:22s} networks: {', '.join(networks) or '-':20s} "
              f"optimizers: {', '.join(optimizers) or '-':20s} {status}")
    return 0


def _load_input(args, probe=None):
    """(ScanData, truth or None) from ``--simulate`` or the INPUT file (CXI or npz)."""
    from .io import load_scan
    from .simulate import simulate_scan
    if getattr(args, 'simulate', False):
        return simulate_scan(frame_size=args.frame_size, count=args.frames or 100, photons=args.photons,
                             seed=args.seed)
    if not args.input:
        raise ValueError(f"ptypy-npu {args.command}: give an INPUT scan file" +
                         (" or --simulate" if hasattr(args, 'simulate') else ""))
    return load_scan(args.input, probe=probe, max_frames=args.frames), None


def _outputs(args):
    """The files this command will write; refused up front if they exist without --force."""
    from .io import refuse_overwrite
    png = args.out.rsplit('.', 1)[0] + '.png' if getattr(args, 'png', False) else None
    for path in (args.out, png):
        if path:
            refuse_overwrite(path, args.force)
    return png


def _train(args, data, truth):
    """Run the joint solver on ``data`` for ``args.epochs``, printing errors; returns the solver."""
    from .metrics import illuminated_region, registered_error
    from .solver import GroupSettings, JointSolver, SolverSettings
    network = None if args.network.lower() == 'none' else {'name': args.network, 'depth': args.depth,
                                                           'width': args.width, 'binning': args.binning}
    settings = SolverSettings(network=network, loss=args.loss, seed=args.seed, device=args.device,
                              precision=args.precision)
    for name in ('network_start', 'batch_size'):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    for group, rate in (('object_group', args.object_rate), ('probe_group', args.probe_rate)):
        if rate is not None:
            setattr(settings, group, GroupSettings(getattr(settings, group).optimizer, rate))
    solver = JointSolver(data, settings)
    region = illuminated_region(data.probe, data.positions, data.obj.shape) if truth is not None else None
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        errors = solver.run(1)
        line = (f"epoch {epoch:4d}  {time.perf_counter() - start:7.1f} s  fourier {errors[:, 0].mean():.4g}  "
                f"photon {errors[:, 1].mean():.4g}  exit {errors[:, 2].mean():.4g}")
        if truth is not None and (epoch % 5 == 0 or epoch == args.epochs):
            line += f"  object error {registered_error(solver.object, truth, region):.4f}"
        print(line, flush=True)
    return solver


def _solve(args):
    from .io import save_png, save_result
    png = _outputs(args)
    data, truth = _load_input(args)
    solver = _train(args, data, truth)
    metadata = {'ptypy_npu_version': __version__, 'input': 'simulated' if args.simulate else str(args.input),
                'epochs': args.epochs, 'network': str(solver.settings.network), 'loss': args.loss}
    save_result(args.out, solver.object, solver.probe, data.positions, metadata, solver.errors, force=args.force)
    print(f"wrote {args.out}")
    if png:
        save_png(png, solver.object, force=args.force)
        print(f"wrote {png}")
    return 0


def _train_model(args):
    from .models import save_model
    _outputs(args)
    data, truth = _load_input(args)
    solver = _train(args, data, truth)
    save_model(args.out, solver, force=args.force)
    print(f"wrote model {args.out}")
    return 0


def _reconstruct(args):
    from .io import save_png, save_result
    from .models import StreamingReconstruction, load_model
    png = _outputs(args)
    model = load_model(args.model, args.device)
    data, _ = _load_input(args, probe=model.probe)
    model.check(data)
    stream = StreamingReconstruction(model, data.obj.shape, data.probe, args.batch_size, fill=data.obj,
                                     report=lambda line: print(line, flush=True))
    chunk = args.chunk or len(data.positions)
    obj = stream.run((data.intensities[k:k + chunk], data.positions[k:k + chunk])
                     for k in range(0, len(data.positions), chunk))
    metadata = {'ptypy_npu_version': __version__, 'input': str(args.input), 'model': str(args.model),
                'frames_per_second': stream.frames_done / stream.seconds}
    save_result(args.out, obj, data.probe, data.positions, metadata, force=args.force)
    print(f"wrote {args.out}")
    if png:
        save_png(png, obj, force=args.force)
        print(f"wrote {png}")
    return 0


def _compare(args):
    from . import compare
    if args.ptyr:
        if args.tree or args.engines:
            raise ValueError("compare: give either SCRIPT_OR_TREE with --engines, or --ptyr files, not both")
        compare.compare_ptyr(args.ptyr, args.out, args.truth, args.force)
    else:
        if not args.tree:
            raise ValueError("compare: give a PtyPy script or JSON tree (SCRIPT_OR_TREE), or --ptyr files")
        if args.truth:
            raise ValueError("compare: --truth is for --ptyr files; simulated scans bring their own truth")
        contestants = compare.parse_contestants(args.engines, args.numiter, compare.known_engines())
        compare.compare(compare.load_tree(args.tree), contestants, args.out, args.seed, args.sample_every,
                        args.force, args.halves)
    return 0


def _add_solver_options(parser):
    parser.add_argument('--frames', type=int, help='use only the first FRAMES frames (simulation: frame count)')
    parser.add_argument('--frame-size', type=int, default=64, help='simulated frame size in pixels')
    parser.add_argument('--photons', type=float, default=1e6, help='simulated mean photons per frame')
    parser.add_argument('--simulate', action='store_true', help='simulate a Siemens-star scan instead of INPUT')
    parser.add_argument('--epochs', type=int, default=60)
    parser.add_argument('--batch-size', type=int, help="frames per step (default: the solver's)")
    parser.add_argument('--network', default='W1Net', help="network name from the plugins, or 'none'")
    parser.add_argument('--network-start', type=int,
                        help="epochs of physics-only refinement before the network joins (default: the solver's)")
    parser.add_argument('--depth', type=int, default=3)
    parser.add_argument('--width', type=int, default=8)
    parser.add_argument('--binning', type=int, default=1)
    parser.add_argument('--loss', default='gaussian', choices=['gaussian', 'poisson'])
    parser.add_argument('--object-rate', type=float, help="object learning rate (1 = full step; default: the solver's)")
    parser.add_argument('--probe-rate', type=float, help="probe learning rate (1 = full step; default: the solver's)")
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--device', default='CPU', choices=['CPU', 'GPU', 'Ascend'])
    parser.add_argument('--precision', default='float32', choices=['float32', 'float16', 'bfloat16'],
                        help="the network's arithmetic while training (bfloat16: GPU or Ascend)")


def build_parser():
    parser = argparse.ArgumentParser(prog='ptypy-npu', description=__doc__.split('\n')[0])
    parser.add_argument('--version', action='version', version=f'ptypy-npu {__version__}')
    commands = parser.add_subparsers(dest='command', required=True)
    commands.add_parser('plugins', help='list loaded plugins and what they contribute').set_defaults(run=_plugins)
    solve = commands.add_parser('solve', help='reconstruct a scan (CXI, npz or simulated) without PtyPy')
    solve.add_argument('input', nargs='?', help='scan file: .cxi/.h5 (CXI) or .npz/.npz.bz2 (data, scan, probe)')
    solve.add_argument('--out', required=True, help='HDF5 result file to write')
    solve.add_argument('--png', action='store_true', help='also write amplitude/phase as OUT.png')
    solve.add_argument('--force', action='store_true', help='replace existing output files')
    _add_solver_options(solve)
    solve.set_defaults(run=_solve)
    train = commands.add_parser('train', help='train a network on a scan and save it as a model directory')
    train.add_argument('input', nargs='?', help='scan file: .cxi/.h5 (CXI) or .npz/.npz.bz2')
    train.add_argument('--out', required=True, help='model directory to write')
    train.add_argument('--force', action='store_true', help='replace an existing model directory')
    _add_solver_options(train)
    train.set_defaults(run=_train_model)
    reconstruct = commands.add_parser('reconstruct', help="one-pass reconstruction of a scan with a trained model")
    reconstruct.add_argument('input', help='scan file: .cxi/.h5 (CXI) or .npz/.npz.bz2')
    reconstruct.add_argument('--model', required=True, help='model directory written by `ptypy-npu train`')
    reconstruct.add_argument('--out', required=True, help='HDF5 result file to write')
    reconstruct.add_argument('--png', action='store_true', help='also write amplitude/phase as OUT.png')
    reconstruct.add_argument('--force', action='store_true', help='replace existing output files')
    reconstruct.add_argument('--frames', type=int, help='use only the first FRAMES frames')
    reconstruct.add_argument('--batch-size', type=int, default=64, help='frames per forward pass')
    reconstruct.add_argument('--chunk', type=int, help='frames per streamed chunk (default: all at once)')
    reconstruct.add_argument('--device', default='CPU', choices=['CPU', 'GPU', 'Ascend'])
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
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"ptypy-npu {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
