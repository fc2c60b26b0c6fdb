"""DM, then W1Net, on PtyPy's simulated MoonFlowerScan; prints PtyPy's errors and the true object error.

    ONEDNN_MAX_CPU_ISA=AVX2 GLOG_v=3 python examples/moonflower_w1net.py [--frames 200] [--dm 50] [--w1net 40]
    ONEDNN_MAX_CPU_ISA=AVX2 GLOG_v=3 mpiexec -n 2 python examples/moonflower_w1net.py   # frames shared by 2 ranks
    ONEDNN_MAX_CPU_ISA=AVX2 GLOG_v=3 msrun --worker_num=2 --local_worker_num=2 --log_dir=msrun_logs \
        --join=True examples/moonflower_w1net.py --distributed mindspore   # MindSpore's collectives; logs per worker

Needs PtyPy (install it from its upstream repository, see README). Writes .ptyr files
under ./results/moonflower/.
"""
import argparse

import numpy as np
from ptypy import utils as u
from ptypy.core import Ptycho
from ptypy.utils import parallel

import ptypy_npu.ptypy_plugin  # noqa: F401  (registers the W1Net engine with PtyPy)
from ptypy_npu.metrics import registered_error
from ptypy_npu.ptypy_plugin.moonflower import moonflower_scan, true_object, use_structured_object


def report(P, label):
    """PtyPy's last errors and the registered object error against the truth, printed by rank 0."""
    if not parallel.master:  # every rank holds the same object
        return
    truth, region = true_object(P)
    error = registered_error(next(iter(P.obj.storages.values())).data[0], truth, region)
    errors = ''
    if P.runtime.get('iter_info'):
        fourier, photon, exit_error = P.runtime.iter_info[-1]['error']
        errors = f"PtyPy errors fourier {fourier:.3g}, photon {photon:.3g}, exit {exit_error:.3g}; "
    print(f"{label:>11s}: {errors}object error against the truth {error:.4f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--frames', type=int, default=200, help='frames MoonFlowerScan is asked for')
    parser.add_argument('--dm', type=int, default=50, help='DM iterations')
    parser.add_argument('--w1net', type=int, default=40, help='W1Net epochs')
    parser.add_argument('--network-start', type=int, default=20,
                        help='W1Net epochs of physics-only refinement before its network joins')
    parser.add_argument('--distributed', choices=['mpi', 'mindspore'], default='mpi',
                        help="W1Net's channel between processes: 'mpi' under mpiexec, 'mindspore' under msrun")
    parser.add_argument('--precision', choices=['float32', 'float16', 'bfloat16'], default='float32',
                        help="W1Net's network arithmetic (bfloat16 needs a GPU or Ascend)")
    args = parser.parse_args()

    structured = use_structured_object()
    if parallel.master:
        print('structured object:', structured)
    p = u.Param()
    p.verbose_level = 'warning'
    p.io = u.Param(home='results/moonflower', autosave=u.Param(active=False), interaction=u.Param(active=False))
    p.scans = u.Param(MF=moonflower_scan(frames=args.frames, shape=128, photons=1e8))
    p.engines = u.Param()
    p.engines.e00 = u.Param(name='DM', numiter=args.dm)
    # continues from DM's object and probe
    p.engines.e01 = u.Param(name='W1Net', numiter=args.w1net, network=u.Param(start=args.network_start),
                            distributed=args.distributed, precision=args.precision)
    np.random.seed(0)  # MoonFlowerScan's Poisson noise: the same data in every process msrun starts
    P = Ptycho(p, level=4)
    report(P, 'initial')
    P.run('e00')
    report(P, 'after DM')
    P.run('e01')
    report(P, 'after W1Net')


if __name__ == '__main__':
    main()
