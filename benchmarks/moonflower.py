"""DM, ePIE, W1Net and W1Net without its network, side by side on PtyPy's MoonFlowerScan.

    ONEDNN_MAX_CPU_ISA=AVX2 GLOG_v=3 python benchmarks/moonflower.py [--case standard|lowdose|both]

Runs on the comparison harness (:mod:`ptypy_npu.ptypy_plugin.runner`): one process, same seed
(identical Poisson noise), each engine in a fresh Ptycho. The object error against the truth
(:func:`ptypy_npu.metrics.registered_error`) is sampled during the run, outside the timed
iterations; ``--out DIR`` also writes the harness's table and figures per case. Prints wall time, PtyPy's final errors,
the object error, and each engine's time to reach DM's final object error and a target
error, as ratios of DM's wall time; then network-on against network-off at equal time
(the physics-only ablation is given the wall time the network-on engine took).

Cases: ``standard``: 128-px frames, 200 requested frames (161 simulated), 1e8 photons;
``lowdose``: 1e5 photons and half the frames spread over the same field (density
0.2 * sqrt(2)), where iterative solvers struggle.
"""
import argparse
import json
import os

import numpy as np
from ptypy import utils as u

from ptypy_npu.comparison import Contestant, score, write_outputs
from ptypy_npu.ptypy_plugin.moonflower import moonflower_scan
from ptypy_npu.ptypy_plugin.runner import run_contestant

CASES = {
    'standard': dict(frames=200, photons=1e8, density=0.2, target=0.075),
    'lowdose': dict(frames=100, photons=1e5, density=0.2 * np.sqrt(2), target=0.25),
}


def contestants(epochs):
    """The engines; the physics-only ablation runs as long as W1Net took (equal wall time)."""
    return {
        'DM': Contestant('DM', [dict(name='DM', numiter=100)]),
        'ePIE': Contestant('ePIE', [dict(name='EPIE', numiter=100)]),
        'W1Net': Contestant('W1Net', [dict(name='W1Net', numiter=epochs)]),
        'W1Net-physics-only': Contestant('W1Net-physics-only', [dict(name='W1Net', numiter=100 * epochs,
                                                                     network=u.Param(name=None))]),
    }


def case_tree(case):
    p = u.Param(verbose_level='critical')
    p.io = u.Param(home='results/benchmark')
    p.scans = u.Param(MF=moonflower_scan(frames=case['frames'], shape=128, photons=case['photons']))
    p.scans.MF.data.density = case['density']
    return p


def time_to_reach(curve, error):
    """Wall time of the first sample at or below object ``error``; None if never reached."""
    return next((c['wall_s'] for c in curve if c['object_error'] <= error), None)


def error_at(curve, seconds):
    """Best object error reached within ``seconds``."""
    reached = [c['object_error'] for c in curve if c['wall_s'] <= seconds]
    return min(reached) if reached else None


def error_when_stopped(curve, seconds):
    """Object error of the last sample within ``seconds``: what a user stopping then holds."""
    reached = [c['object_error'] for c in curve if c['wall_s'] <= seconds]
    return reached[-1] if reached else None


def ratio(value, reference):
    return '-' if value is None else f"{value / reference:.2f}"


def report(case_name, case, results):
    """Print the performance table of one case; ``results`` maps names to harness Results."""
    dm = results['DM'].row
    print(f"\n== {case_name}: {dm['frames']} frames, {case['photons']:.0e} photons ==")
    print(f"{'engine':20s} {'wall s':>7s} {'fourier':>9s} {'photon':>9s} {'exit':>9s} {'obj err':>8s} "
          f"{'SSIM amp':>8s} {'FRC px':>6s} {'t(DM err)/t_DM':>15s} {'t(' + str(case['target']) + ')/t_DM':>14s} "
          f"{'err@t_DM':>9s}")
    for name, result in results.items():
        row, curve = result.row, result.curve
        at_dm = error_at(curve, dm['wall_s'])
        print(f"{name:20s} {row['wall_s']:7.1f} {row['fourier_error']:9.3g} {row['photon_error']:9.3g} "
              f"{row['exit_error']:9.3g} {row['object_error']:8.4f} {row['ssim_amplitude']:8.3f} "
              f"{row['frc_half_period_px']:6.2f} "
              f"{ratio(time_to_reach(curve, dm['object_error']), dm['wall_s']):>15s} "
              f"{ratio(time_to_reach(curve, case['target']), dm['wall_s']):>14s} "
              f"{'-' if at_dm is None else f'{at_dm:.4f}':>9s}")
    on, off = results.get('W1Net'), results.get('W1Net-physics-only')
    if on and off:
        print("network on vs off at equal wall time (object error when stopped there; best so far):")
        for seconds in sorted({round(dm['wall_s'], 1), round(min(on.row['wall_s'], off.row['wall_s']), 1)}):
            print(f"  t = {seconds:6.1f} s: on {error_when_stopped(on.curve, seconds):.4f} "
                  f"({error_at(on.curve, seconds):.4f}), off {error_when_stopped(off.curve, seconds):.4f} "
                  f"({error_at(off.curve, seconds):.4f})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--case', default='both', choices=['standard', 'lowdose', 'both'])
    parser.add_argument('--epochs', type=int, default=60, help='W1Net epochs')
    parser.add_argument('--engines', nargs='*', help='subset of DM ePIE W1Net W1Net-physics-only')
    parser.add_argument('--sample-every', type=int, default=5, help='iterations between object-error samples')
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--json', help='also write all rows and curves to this JSON file')
    parser.add_argument('--out', help="also write the harness's table and figures into OUT/<case>/")
    args = parser.parse_args()
    records = {}
    for case_name in (['standard', 'lowdose'] if args.case == 'both' else [args.case]):
        case = CASES[case_name]
        engines = contestants(args.epochs)
        chosen = ['DM'] + [e for e in (args.engines or engines) if e != 'DM']
        results = {}
        for name in chosen:
            limit = results['W1Net'].row['wall_s'] if name == 'W1Net-physics-only' and 'W1Net' in results else np.inf
            results[name], truth = run_contestant(case_tree(case), engines[name], args.seed, args.sample_every, limit)
            score(results[name], truth)
        report(case_name, case, results)
        records[case_name] = {name: dict(r.row, curve=r.curve) for name, r in results.items()}
        if args.out:
            os.makedirs(os.path.join(args.out, case_name), exist_ok=True)
            write_outputs(os.path.join(args.out, case_name), list(results.values()), truth)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(records, f, indent=1)


if __name__ == '__main__':
    main()
