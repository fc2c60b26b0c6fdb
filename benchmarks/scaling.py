"""W1Net's epoch time on 1 and 2 MPI ranks, one CPU core each, side by side in one run.

    ONEDNN_MAX_CPU_ISA=AVX2 GLOG_v=3 python benchmarks/scaling.py [--epochs 8] [--frames 200]

Needs PtyPy and ``mpiexec`` (``pip install mpich mpi4py``). For N = 1 and 2 it launches
``mpiexec -n N`` of this script's worker; each rank pins itself to core ``rank`` before
MindSpore starts, so N ranks compute on N cores. The worker runs the W1Net engine in PtyPy
on MoonFlowerScan (128-px frames, PtyPy shares the frames among the ranks) with the
network on from the first epoch, and again physics-only (network off); an epoch's time is
the median of PtyPy's per-iteration durations after the first two (graph compilation).
Prints the epoch times and the speed-up; target: >= 1.6x at N = 2.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

CASES = {'network on': {'start': 0}, 'physics only': {'name': None}}


def worker(epochs, frames, case):
    """One rank: W1Net on MoonFlowerScan; rank 0 prints ``RESULT {json}``."""
    rank = int(os.environ.get('PMI_RANK', 0))
    os.sched_setaffinity(0, {rank % os.cpu_count()})  # before MindSpore starts its threads
    import ptypy_npu  # noqa: F401  (registers W1Net)
    from ptypy import utils as u
    from ptypy.core import Ptycho
    from ptypy.utils import parallel
    from ptypy_npu.moonflower import moonflower_scan, use_structured_object
    use_structured_object()
    np.random.seed(1)
    p = u.Param(verbose_level='critical', io=u.Param(rfile=None, autosave=u.Param(active=False),
                                                     interaction=u.Param(active=False)))
    p.scans = u.Param(MF=moonflower_scan(frames=frames, shape=128, photons=1e8))
    p.engines = u.Param(e00=u.Param(name='W1Net', numiter=epochs, numiter_contiguous=1,
                                    network=u.Param(CASES[case])))
    P = Ptycho(p, level=5)
    durations = [float(info['duration']) for info in P.runtime.iter_info]
    frames_here = parallel.allreduce(len([v for v in P.diff.views.values() if v.active]))
    if parallel.master:
        print('RESULT ' + json.dumps({'durations': durations, 'frames': frames_here}), flush=True)


def measure(ranks, epochs, frames, case):
    """Median epoch time (s) and frame count of ``case`` on ``ranks`` MPI ranks."""
    command = ['mpiexec', '-n', str(ranks), sys.executable, __file__, '--worker', case,
               '--epochs', str(epochs), '--frames', str(frames)]
    finished = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in finished.stdout.splitlines() if line.startswith('RESULT ')]
    if finished.returncode or not lines:
        sys.exit(f"{' '.join(command)} failed:\n{finished.stderr[-3000:]}")
    result = json.loads(lines[0][len('RESULT '):])
    return float(np.median(result['durations'][2:])), result['frames']


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--epochs', type=int, default=8, help='W1Net epochs per run (the first two are not timed)')
    parser.add_argument('--frames', type=int, default=200, help='frames MoonFlowerScan is asked for')
    parser.add_argument('--worker', choices=sorted(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.epochs < 3:
        parser.error('--epochs must be >= 3: the first two epochs compile and are not timed')
    if args.worker:
        return worker(args.epochs, args.frames, args.worker)
    print(f"== W1Net on MoonFlowerScan, 128-px frames, one core per rank, median of {args.epochs - 2} epochs ==")
    print(f"{'case':14s} {'frames':>6s} {'N=1 s/epoch':>12s} {'N=2 s/epoch':>12s} {'speed-up':>9s}")
    for case in CASES:
        (one, frames), (two, _) = (measure(ranks, args.epochs, args.frames, case) for ranks in (1, 2))
        print(f"{case:14s} {frames:6d} {one:12.2f} {two:12.2f} {one / two:8.2f}x", flush=True)
    print("target: speed-up >= 1.6x at N=2")


if __name__ == '__main__':
    main()
