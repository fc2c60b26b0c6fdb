"""DM, ePIE, ML and W1Net side by side on measured X-ray data: the Siemens star of shared/data.

    ONEDNN_MAX_CPU_ISA=AVX2 GLOG_v=3 python examples/siemens_star_compare.py [--out results/siemens_star]

Needs PtyPy (install it from its upstream repository, see README). The scan (516 frames of
128 px, tike's test data) is read by ptypy-npu's PtyPy loader ``NpzScan``. There is no
ground truth: every engine is scored by PtyPy's own errors and by the Fourier ring
correlation of two reconstructions from disjoint halves of the frames (even and odd), at
the half-bit threshold. Writes the table (results.csv/json), objects.png,
convergence.png and one .ptyr per engine into the output folder, which must not hold earlier
results (``--force`` replaces them).
"""
import argparse
import os

from ptypy import utils as u

from ptypy_npu.comparison import parse_contestants
from ptypy_npu.ptypy_plugin.npz_loader import npz_scan_tree
from ptypy_npu.ptypy_plugin.runner import compare, known_engines

DATA = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'siemens-star-small.npz.bz2')


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data', default=DATA, help='the Siemens-star npz file')
    parser.add_argument('--engines', nargs='+', default=['DM', 'EPIE', 'ML', 'W1Net'])
    parser.add_argument('--numiter', nargs='+', type=int, default=[50, 50, 50, 40],
                        help='iterations (epochs for ePIE and W1Net), one for all or one per engine')
    parser.add_argument('--out', default='results/siemens_star')
    parser.add_argument('--force', action='store_true', help='replace earlier results in --out')
    args = parser.parse_args()
    p = u.Param(verbose_level='critical')
    p.io = u.Param(home=os.path.dirname(args.out) or '.')
    p.scans = u.Param(star=npz_scan_tree(os.path.abspath(args.data)))
    contestants = parse_contestants(args.engines, args.numiter, known_engines())
    compare(p, contestants, args.out, force=args.force, halves=True)


if __name__ == '__main__':
    main()
