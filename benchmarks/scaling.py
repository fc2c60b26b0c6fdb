"""W1Net's epoch time on 1 and 2 processes, one CPU core each, side by side in one run,
over both channels between processes (the engine's ``distributed``): MPI and MindSpore's own.

    ONEDNN_MAX_CPU_ISA=AVX2 GLOG_v=3 python benchmarks/scaling.py [--epochs 8] [--frames 200]

Needs PtyPy and ``mpiexec`` (``pip install mpich mpi4py``). N = 1 is one process; N = 2 is
``mpiexec -n 2`` (``distributed = 'mpi'``: PtyPy shares the frames, gradients summed by
mpi4py on the host) and ``msrun --worker_num=2`` (``distributed = 'mindspore'``: the
engine shares the frames, gradients summed inside the compiled step by MindSpore's mccl).
Each process pins itself to core ``rank`` before MindSpore starts, so N processes compute
on N cores. The worker runs the W1Net engine in PtyPy on MoonFlowerScan (128-px frames)
with the network on from the first epoch, and again physics-only (network off), at each
global batch size of ``--batch-sizes`` (4, the engine's default, and 16: every step takes
batch / N frames on each process, and an epoch has frames / batch steps, so a larger batch
shares fewer, larger steps, whose fixed costs weigh less); an epoch's time is the median of PtyPy's per-iteration durations after the first two
(graph compilation), and each figure the median of ``--rounds`` interleaved rounds (whole
runs vary by about 10 %). Prints the epoch times and the speed-ups; target: >= 1.6x at N = 2.
"""
import argparse
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CASES = {'network on': {'start': 0}, 'physics only': {'name': None}}


#: Environment variables that hold a process's rank: msrun's, then those of MPICH/Hydra, Open MPI,
#: MVAPICH, Intel MPI and Slurm.
RANK_VARIABLES = ('RANK_ID', 'PMI_RANK', 'OMPI_COMM_WORLD_RANK', 'MV2_COMM_WORLD_RANK', 'PMIX_RANK', 'SLURM_PROCID')


def process_rank(ranks):
    """This process's rank from its launcher's environment; exits naming the variables when a
    multi-process run sets none (an unpinned rank would share a core and spoil the timing)."""
    for name in RANK_VARIABLES:
        if name in os.environ:
            return int(os.environ[name])
    if ranks > 1:
        sys.exit(f"scaling worker: none of {', '.join(RANK_VARIABLES)} is set, so this process cannot pin "
                 "itself to its core; launch with mpiexec (MPICH, Open MPI, MVAPICH, Intel MPI), srun or msrun")
    return 0


def worker(epochs, frames, case, channel, batch_size, ranks):
    """One process: W1Net on MoonFlowerScan; rank 0 prints ``RESULT {json}``."""
    rank = process_rank(ranks)
    os.sched_setaffinity(0, {rank % os.cpu_count()})  # before MindSpore starts its threads
    from ptypy import utils as u
    from ptypy.core import Ptycho
    import ptypy_npu.ptypy_plugin  # noqa: F401  (registers W1Net)
    from ptypy_npu.ptypy_plugin.moonflower import moonflower_scan, use_structured_object
    use_structured_object()
    np.random.seed(1)
    p = u.Param(verbose_level='critical', io=u.Param(rfile=None, autosave=u.Param(active=False),
                                                     interaction=u.Param(active=False)))
    p.scans = u.Param(MF=moonflower_scan(frames=frames, shape=128, photons=1e8))
    p.engines = u.Param(e00=u.Param(name='W1Net', numiter=epochs, numiter_contiguous=1, distributed=channel,
                                    batch_size=batch_size, network=u.Param(CASES[case])))
    P = Ptycho(p, level=5)
    engine = list(P.engines.values())[0]
    if engine.communicator.rank == 0:
        durations = [float(info['duration']) for info in P.runtime.iter_info]
        frames_here = len(P.diff.views)  # every rank sees all views
        print('RESULT ' + json.dumps({'durations': durations, 'frames': frames_here}), flush=True)


def launch_command(ranks, channel, log_dir):
    if channel == 'mpi':
        return ['mpiexec', '-n', str(ranks), sys.executable]
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    return [shutil.which('msrun', path=str(Path(sys.executable).parent)) or 'msrun', f'--worker_num={ranks}', f'--local_worker_num={ranks}',
            f'--master_port={port}', f'--log_dir={log_dir}', '--join=True']


def measure(ranks, epochs, frames, case, channel, batch_size):
    """Median epoch time (s) and frame count of ``case`` on ``ranks`` processes joined by ``channel``."""
    with tempfile.TemporaryDirectory() as log_dir:
        command = launch_command(ranks, channel, log_dir) + [
            __file__, '--case', case, '--channel', channel, '--epochs', str(epochs), '--frames', str(frames),
            '--batch-sizes', str(batch_size), '--processes', str(ranks)]
        # msrun starts `python` from PATH: this interpreter's folder first
        environment = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        finished = subprocess.run(command, capture_output=True, text=True, env=environment)
        output = finished.stdout + ''.join(f.read_text() for f in Path(log_dir).glob('worker_0.log'))
    lines = [line for line in output.splitlines() if line.startswith('RESULT ')]
    if finished.returncode or not lines:
        sys.exit(f"{' '.join(command)} failed:\n{(finished.stderr + output)[-3000:]}")
    result = json.loads(lines[0][len('RESULT '):])
    return float(np.median(result['durations'][2:])), result['frames']


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--epochs', type=int, default=8, help='W1Net epochs per run (the first two are not timed)')
    parser.add_argument('--frames', type=int, default=200, help='frames MoonFlowerScan is asked for')
    parser.add_argument('--rounds', type=int, default=2,
                        help='interleaved rounds of the three runs; medians are printed (runs vary by +-10 %%)')
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[4, 16],
                        help='global batch sizes to measure (frames per step over all processes; 4 is the engine default)')
    parser.add_argument('--case', choices=sorted(CASES), help=argparse.SUPPRESS)  # a worker's case (msrun would read --worker as its own)
    parser.add_argument('--channel', choices=['mpi', 'mindspore'], default='mpi', help=argparse.SUPPRESS)
    parser.add_argument('--processes', type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.epochs < 3:
        parser.error('--epochs must be >= 3: the first two epochs compile and are not timed')
    if args.case:
        return worker(args.epochs, args.frames, args.case, args.channel, args.batch_sizes[0], args.processes)
    print(f"== W1Net on MoonFlowerScan, 128-px frames, one core per process, median of {args.epochs - 2} epochs, "
          f"median of {args.rounds} interleaved rounds ==")
    print(f"{'case':14s} {'batch':>5s} {'frames':>6s} {'N=1 s/epoch':>12s} {'N=2 MPI':>9s} {'speed-up':>9s} "
          f"{'N=2 msrun':>10s} {'speed-up':>9s}   MPI speed-ups of the rounds")
    runs = (('one', 1, 'mpi'), ('mpi', 2, 'mpi'), ('mindspore', 2, 'mindspore'))
    for case, batch_size in itertools.product(CASES, args.batch_sizes):
        rounds = [{label: measure(ranks, args.epochs, args.frames, case, channel, batch_size)
                   for label, ranks, channel in runs} for _ in range(args.rounds)]
        t = {label: float(np.median([r[label][0] for r in rounds])) for label, _, _ in runs}
        ratios = ' '.join(f"{r['one'][0] / r['mpi'][0]:.2f}" for r in rounds)
        print(f"{case:14s} {batch_size:5d} {rounds[0]['one'][1]:6d} {t['one']:12.2f} {t['mpi']:9.2f} "
              f"{t['one'] / t['mpi']:8.2f}x {t['mindspore']:10.2f} {t['one'] / t['mindspore']:8.2f}x   {ratios}", flush=True)
    print("target: speed-up >= 1.6x at N=2")


if __name__ == '__main__':
    main()
