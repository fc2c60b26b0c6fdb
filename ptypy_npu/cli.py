"""``ptypy-npu`` command line: list plugins, reconstruct a scan without PtyPy.

    ptypy-npu plugins
    ptypy-npu solve --simulate --out result.h5 --png
    ptypy-npu solve ../shared/data/siemens-star-small.npz.bz2 --frames 200 --out star.h5
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


def _solve(args):
    from .io import load_npz_scan, refuse_overwrite, save_png, save_result
    from .metrics import illuminated_region, registered_error
    from .simulate import simulate_scan
    from .solver import GroupSettings, JointSolver, SolverSettings

    png = args.out.rsplit('.', 1)[0] + '.png' if args.png else None
    refuse_overwrite(args.out, args.force)
    if png:
        refuse_overwrite(png, args.force)
    truth = None
    if args.simulate:
        data, truth = simulate_scan(frame_size=args.frame_size, count=args.frames or 100, photons=args.photons,
                                    seed=args.seed)
    elif args.input:
        data = load_npz_scan(args.input, max_frames=args.frames)
    else:
        raise SystemExit("ptypy-npu solve: give an INPUT scan file or --simulate")
    network = None if args.network.lower() == 'none' else {'name': args.network, 'depth': args.depth,
                                                           'width': args.width, 'binning': args.binning}
    settings = SolverSettings(network=network, batch_size=args.batch_size, loss=args.loss, seed=args.seed,
                              device=args.device)
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
    metadata = {'ptypy_npu_version': __version__, 'input': 'simulated' if args.simulate else str(args.input),
                'epochs': args.epochs, 'network': str(network), 'loss': args.loss}
    save_result(args.out, solver, metadata, force=args.force)
    print(f"wrote {args.out}")
    if png:
        save_png(png, solver.object, force=args.force)
        print(f"wrote {png}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog='ptypy-npu', description=__doc__.split('\n')[0])
    parser.add_argument('--version', action='version', version=f'ptypy-npu {__version__}')
    commands = parser.add_subparsers(dest='command', required=True)
    commands.add_parser('plugins', help='list loaded plugins and what they contribute').set_defaults(run=_plugins)
    solve = commands.add_parser('solve', help='reconstruct a scan (npz file or simulated) without PtyPy')
    solve.add_argument('input', nargs='?', help='scan file (.npz or .npz.bz2: data, scan, probe)')
    solve.add_argument('--simulate', action='store_true', help='simulate a Siemens-star scan instead')
    solve.add_argument('--out', required=True, help='HDF5 result file to write')
    solve.add_argument('--png', action='store_true', help='also write amplitude/phase as OUT.png')
    solve.add_argument('--force', action='store_true', help='replace existing output files')
    solve.add_argument('--frames', type=int, help='use only the first FRAMES frames (simulation: frame count)')
    solve.add_argument('--frame-size', type=int, default=64, help='simulated frame size in pixels')
    solve.add_argument('--photons', type=float, default=1e6, help='simulated mean photons per frame')
    solve.add_argument('--epochs', type=int, default=30)
    solve.add_argument('--batch-size', type=int, default=8)
    solve.add_argument('--network', default='W1Net', help="network name from the plugins, or 'none'")
    solve.add_argument('--depth', type=int, default=3)
    solve.add_argument('--width', type=int, default=8)
    solve.add_argument('--binning', type=int, default=1)
    solve.add_argument('--loss', default='gaussian', choices=['gaussian', 'poisson'])
    solve.add_argument('--object-rate', type=float, help='object learning rate (1 = full step; default: the solver\'s)')
    solve.add_argument('--probe-rate', type=float, help='probe learning rate (1 = full step; default: the solver\'s)')
    solve.add_argument('--seed', type=int, default=0)
    solve.add_argument('--device', default='CPU', choices=['CPU', 'GPU', 'Ascend'])
    solve.set_defaults(run=_solve)
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
