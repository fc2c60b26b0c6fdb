"""W1Net beside DM and ePIE on PtyPy's simulated MoonFlowerScan, and W1Net after each of them in one chain.

    ONEDNN_MAX_CPU_ISA=AVX2 GLOG_v=3 python examples/moonflower_w1net.py [--frames 200] [--iterations 100]
    ONEDNN_MAX_CPU_ISA=AVX2 GLOG_v=3 mpiexec -n 2 python examples/moonflower_w1net.py   # frames shared by 2 ranks
    ONEDNN_MAX_CPU_ISA=AVX2 GLOG_v=3 msrun --worker_num=2 --local_worker_num=2 --log_dir=msrun_logs \
        --join=True examples/moonflower_w1net.py --distributed mindspore   # MindSpore's collectives; logs per worker

Each engine runs the same number of iterations (epochs for ePIE and W1Net) on a fresh Ptycho of the same
scan and noise; a chain gives the engine before W1Net and W1Net half each. W1Net runs as a single scan wants it: its
physics core (object and probe, ``network.name = None``); ``--network W1Network`` adds the network
(README: at this dose it costs several times per epoch for no gain). Prints PtyPy's last Fourier error,
the iterations' wall time and the registered object error against the simulated truth.

Needs PtyPy (install it from its upstream repository, see README).
"""
import argparse

from ptypy import utils as u
from ptypy.utils import parallel

import ptypy_npu.ptypy_plugin  # noqa: F401  (registers the W1Net engine with PtyPy)
from ptypy_npu.comparison import Contestant, score
from ptypy_npu.ptypy_plugin.moonflower import moonflower_scan
from ptypy_npu.ptypy_plugin.runner import run_contestant


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--frames', type=int, default=200, help='frames MoonFlowerScan is asked for')
    parser.add_argument('--photons', type=float, default=1e8, help='photons per frame')
    parser.add_argument('--iterations', type=int, default=100, help='iterations of each engine (the chain: half each)')
    parser.add_argument('--network', default=None, help="W1Net's network.name (default None: the physics core)")
    parser.add_argument('--distributed', choices=['mpi', 'mindspore'], default='mpi',
                        help="W1Net's channel between processes: 'mpi' under mpiexec, 'mindspore' under msrun")
    args = parser.parse_args()

    p = u.Param(verbose_level='critical')
    p.io = u.Param(home='results/moonflower')
    p.scans = u.Param(MF=moonflower_scan(frames=args.frames, shape=128, photons=args.photons))
    w1net = dict(name='W1Net', network=u.Param(name=args.network), distributed=args.distributed)
    half = args.iterations // 2
    contestants = [Contestant('DM', [dict(name='DM', numiter=args.iterations)]),
                   Contestant('ePIE', [dict(name='EPIE', numiter=args.iterations)]),
                   Contestant('W1Net', [dict(w1net, numiter=args.iterations)]),
                   Contestant('DM+W1Net', [dict(name='DM', numiter=half), dict(w1net, numiter=half)]),
                   Contestant('ePIE+W1Net', [dict(name='EPIE', numiter=half), dict(w1net, numiter=half)])]
    rows, curves = [], {}
    for contestant in contestants:
        result, truth = run_contestant(p, contestant, seed=0)  # the same noise for every engine
        if parallel.master:
            score(result, truth)
            rows.append(result.row)
            curves[contestant.name] = result.curve
            print(f"{contestant.name:>10s}: Fourier error {result.row['fourier_error']:.4g}, "
                  f"{result.row['wall_s']:.1f} s, object error {result.row['object_error']:.4f}", flush=True)
    if parallel.master:
        for row in rows[3:]:  # the chains against W1Net alone stopped at the same iteration time
            alone = [c['object_error'] for c in curves['W1Net'] if c['wall_s'] <= row['wall_s']]
            print(f"{row['contestant']:>10s}: object error {row['object_error']:.4f}; W1Net alone stopped at its "
                  f"{row['wall_s']:.1f} s: {alone[-1]:.4f}")
        best = min(rows, key=lambda row: row['object_error'])
        print(f"lowest object error: {best['contestant']} ({best['object_error']:.4f})")


if __name__ == '__main__':
    main()
