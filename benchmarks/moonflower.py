"""DM, ePIE, W1Net and W1Net without its network, side by side on PtyPy's MoonFlowerScan.

    ONEDNN_MAX_CPU_ISA=AVX2 GLOG_v=3 python benchmarks/moonflower.py [--case standard|lowdose|both]

One process, same seed (identical Poisson noise), each engine in a fresh Ptycho. The
object error against the truth (:func:`ptypy_npu.metrics.registered_error`) is sampled
during the run, outside the timed iterations. Prints wall time, PtyPy's final errors,
the object error, and each engine's time to reach DM's final object error and a target
error, as ratios of DM's wall time; then network-on against network-off at equal time
(the physics-only ablation is given the wall time the network-on engine took).

Cases: ``standard``: 128-px frames, 200 requested frames (161 simulated), 1e8 photons;
``lowdose``: 1e5 photons and half the frames spread over the same field (density
0.2 * sqrt(2)), where iterative solvers struggle.
"""
import argparse
import json
import time

import numpy as np
import ptypy_npu  # noqa: F401  (registers W1Net)
from ptypy import utils as u
from ptypy.core import Ptycho
from ptypy.engines import by_name
from ptypy.utils import parallel

from ptypy_npu.metrics import registered_error
from ptypy_npu.moonflower import moonflower_scan, true_object, use_structured_object

CASES = {
    'standard': dict(frames=200, photons=1e8, density=0.2, target=0.075),
    'lowdose': dict(frames=100, photons=1e5, density=0.2 * np.sqrt(2), target=0.25),
}


def contestants(epochs):
    """Engine parameters; the physics-only ablation runs as long as W1Net took (equal wall time)."""
    return {
        'DM': dict(name='DM', numiter=100),
        'ePIE': dict(name='EPIE', numiter=100),
        'W1Net': dict(name='W1Net', numiter=epochs),
        'W1Net-physics-only': dict(name='W1Net', numiter=100 * epochs, network=u.Param(name=None)),
    }


def run_engine(case, engine_pars, sample_every, seed, time_limit=float('inf')):
    """Run one engine on a fresh Ptycho (until done or ``time_limit`` s); returns its convergence record."""
    parallel.loadmanager.reset()
    np.random.seed(seed)
    p = u.Param(verbose_level='critical')
    p.io = u.Param(home='results/benchmark', rfile=None, autosave=u.Param(active=False),
                   interaction=u.Param(active=False))
    p.scans = u.Param(MF=moonflower_scan(frames=case['frames'], shape=128, photons=case['photons']))
    p.scans.MF.data.density = case['density']
    p.engines = u.Param()
    P = Ptycho(p, level=4)
    P.runtime.iter_info = []
    truth, region = true_object(P)
    storage = next(iter(P.obj.storages.values()))
    engine = by_name(engine_pars['name'])(P, u.Param(engine_pars))
    start = time.perf_counter()
    engine.initialize()
    P.new_data = [(d.label, d) for d in P.diff.S.values()]
    engine.prepare()
    elapsed = time.perf_counter() - start
    curve = [(elapsed, 0, registered_error(storage.data[0], truth, region))]
    while not engine.finished and elapsed < time_limit:
        tick = time.perf_counter()
        engine.iterate(min(sample_every, engine.numiter - engine.curiter))
        elapsed += time.perf_counter() - tick
        curve.append((elapsed, engine.curiter, registered_error(storage.data[0], truth, region)))
    engine.finalize()
    return {'time': elapsed, 'curve': curve, 'frames': len(P.diff.V),
            'ptypy_errors': [float(x) for x in P.runtime.iter_info[-1]['error']], 'object_error': curve[-1][2]}


def time_to_reach(curve, error):
    """Wall time of the first sample at or below ``error``; None if never reached."""
    return next((t for t, _, e in curve if e <= error), None)


def error_at(curve, seconds):
    """Best object error reached within ``seconds``."""
    reached = [e for t, _, e in curve if t <= seconds]
    return min(reached) if reached else None


def error_when_stopped(curve, seconds):
    """Object error of the last sample within ``seconds``: what a user stopping then holds."""
    reached = [e for t, _, e in curve if t <= seconds]
    return reached[-1] if reached else None


def ratio(value, reference):
    return '-' if value is None else f"{value / reference:.2f}"


def report(case_name, case, results):
    dm = results['DM']
    print(f"\n== {case_name}: {dm['frames']} frames, {case['photons']:.0e} photons ==")
    print(f"{'engine':20s} {'wall s':>7s} {'fourier':>9s} {'photon':>9s} {'exit':>9s} {'obj err':>8s} "
          f"{'t(DM err)/t_DM':>15s} {'t(' + str(case['target']) + ')/t_DM':>14s} {'err@t_DM':>9s}")
    for name, r in results.items():
        at_dm = error_at(r['curve'], dm['time'])
        print(f"{name:20s} {r['time']:7.1f} {r['ptypy_errors'][0]:9.3g} {r['ptypy_errors'][1]:9.3g} "
              f"{r['ptypy_errors'][2]:9.3g} {r['object_error']:8.4f} "
              f"{ratio(time_to_reach(r['curve'], dm['object_error']), dm['time']):>15s} "
              f"{ratio(time_to_reach(r['curve'], case['target']), dm['time']):>14s} "
              f"{'-' if at_dm is None else f'{at_dm:.4f}':>9s}")
    on, off = results.get('W1Net'), results.get('W1Net-physics-only')
    if on and off:
        print("network on vs off at equal wall time (object error when stopped there; best so far):")
        for seconds in sorted({round(dm['time'], 1), round(min(on['time'], off['time']), 1)}):
            print(f"  t = {seconds:6.1f} s: on {error_when_stopped(on['curve'], seconds):.4f} "
                  f"({error_at(on['curve'], seconds):.4f}), off {error_when_stopped(off['curve'], seconds):.4f} "
                  f"({error_at(off['curve'], seconds):.4f})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--case', default='both', choices=['standard', 'lowdose', 'both'])
    parser.add_argument('--epochs', type=int, default=60, help='W1Net epochs')
    parser.add_argument('--engines', nargs='*', help='subset of DM ePIE W1Net W1Net-physics-only')
    parser.add_argument('--sample-every', type=int, default=5, help='iterations between object-error samples')
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--json', help='also write all records to this JSON file')
    args = parser.parse_args()
    use_structured_object()
    records = {}
    for case_name in (['standard', 'lowdose'] if args.case == 'both' else [args.case]):
        case = CASES[case_name]
        engines = contestants(args.epochs)
        chosen = ['DM'] + [e for e in (args.engines or engines) if e != 'DM']
        results = {}
        for name in chosen:
            limit = results['W1Net']['time'] if name == 'W1Net-physics-only' and 'W1Net' in results else float('inf')
            results[name] = run_engine(case, engines[name], args.sample_every, args.seed, limit)
        records[case_name] = results
        report(case_name, case, records[case_name])
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(records, f, indent=1)


if __name__ == '__main__':
    main()
