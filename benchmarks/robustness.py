"""W1Net against PtyPy's DM, ePIE and ML on a family of scans: who wins, by how much, in what time.

    ONEDNN_MAX_CPU_ISA=AVX2 GLOG_v=3 python benchmarks/robustness.py [--quick] [--json results.json]

The family (:data:`CASES`): simulated far-field scans of frame sizes 64, 128 and 256 px, doses from
1e4 to 1e9 photons per frame, scan steps from dense to sparse overlap and three probes (ptypy-npu's
defocused disc and lens focus through PtyPy's loader ``SimulatedScan``, PtyPy's own MoonFlowerScan
"moon"), plus the measured Siemens star. On each, PtyPy's DM, ePIE and ML (the settings of PtyPy's
templates/engines/numpy scripts) and W1Net with its network off and on run the same number of
iterations (epochs), each in a fresh Ptycho from the same start, on the comparison runner.

Printed per case: the final registered object error against the truth (for the star, which has
none: the amplitude misfit and the half-set FRC resolution, the even against the odd frames), the
wall time of the iterations and of the set-up (W1Net's compilation) apart, the time each engine
needs to reach ePIE's final error as a fraction of ePIE's time, and the winner; then a summary:
in how many cases W1Net without network ends at or below the best PtyPy engine, its worst ratio,
whether it ever ends worse than its start, and network on against off at low dose at equal wall
time. ``--quick`` runs a subset (under 10 minutes on 2 cores); the whole family takes about an hour.
``--drift`` runs W1Net without network for six times the budget instead (default: the low-dose cases)
and prints its error at the budget and at the end: more epochs must never end worse.
"""
import argparse
import json
import math
import os
import time

from ptypy import utils as u

from ptypy_npu.comparison import Contestant, score
from ptypy_npu.ptypy_plugin.moonflower import moonflower_scan
from ptypy_npu.ptypy_plugin.npz_loader import npz_scan_tree
from ptypy_npu.ptypy_plugin.runner import halves_frc, run_contestant
from ptypy_npu.ptypy_plugin.simulated_scan import simulated_scan_tree

STAR = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'siemens-star-small.npz.bz2')

#: PtyPy's engines as its templates set them (templates/engines/numpy/moonflower_{DM,EPIE,ML_Gaussian}.py).
PTYPY_ENGINES = {
    'DM': {'name': 'DM'},
    'ePIE': {'name': 'EPIE', 'probe_center_tol': None, 'compute_log_likelihood': True, 'object_norm_is_global': True,
             'alpha': 1, 'beta': 1, 'probe_update_start': 2},
    'ML': {'name': 'ML', 'ML_type': 'Gaussian', 'reg_del2': True, 'reg_del2_amplitude': 1.0, 'scale_precond': True,
           'smooth_gradient': 20.0, 'smooth_gradient_decay': 1 / 50.0, 'floating_intensities': False},
}
W1NET_ENGINES = {'W1Net-off': {'name': 'W1Net', 'network': {'name': None}}, 'W1Net-on': {'name': 'W1Net'}}


def simulated(shape, photons, step=0.15, probe='disc', frames=100):
    return simulated_scan_tree(shape=shape, num_frames=frames, photons=photons, step=step, probe=probe, seed=1)


def moonflower(shape, photons, density=0.2, frames=200):
    scan = moonflower_scan(frames=frames, shape=shape, photons=photons)
    scan.data.density = density
    return scan


#: name: (scan tree builder, iteration budget, in the --quick subset)
CASES = {
    'sim64 disc 1e4': (lambda: simulated(64, 1e4), 100, True),
    'sim64 disc 1e5': (lambda: simulated(64, 1e5), 100, False),
    'sim64 disc 1e6': (lambda: simulated(64, 1e6), 100, False),
    'sim64 disc 1e7': (lambda: simulated(64, 1e7), 100, True),
    'sim64 disc 1e9': (lambda: simulated(64, 1e9), 100, False),
    'sim64 disc 1e6 dense': (lambda: simulated(64, 1e6, step=0.08, frames=150), 100, False),
    'sim64 disc 1e6 sparse': (lambda: simulated(64, 1e6, step=0.3, frames=60), 100, False),
    'sim64 lens 1e5': (lambda: simulated(64, 1e5, probe='lens'), 100, True),
    'sim64 lens 1e7': (lambda: simulated(64, 1e7, probe='lens'), 100, False),
    'sim128 disc 1e6': (lambda: simulated(128, 1e6, frames=60), 50, False),
    'moon128 1e8': (lambda: moonflower(128, 1e8), 50, False),
    'moon128 1e5 sparse': (lambda: moonflower(128, 1e5, density=0.28, frames=100), 50, False),
    'moon64 1e6': (lambda: moonflower(64, 1e6, frames=100), 100, True),
    'moon256 1e9': (lambda: moonflower(256, 1e9, frames=40), 30, False),
    'Siemens star (measured)': (lambda: npz_scan_tree(os.path.abspath(STAR)), 50, False),
}


def case_tree(scan):
    p = u.Param(verbose_level='critical')
    p.io = u.Param(home='results/robustness')
    p.scans = u.Param(S=scan)
    return p


def time_to_reach(curve, key, target):
    """Iteration time of the first sample at or below ``target`` (None: never)."""
    return next((c['wall_s'] for c in curve if c[key] is not None and c[key] <= target), None)


def run_case(name, quick_budget=None, engines=None):
    """{engine: row} of one case; rows hold the final scores and the convergence curve."""
    build, budget, _ = CASES[name]
    budget = quick_budget or budget
    tree = case_tree(build())
    measured = name.startswith('Siemens')
    rows = {}
    for label, pars in {**PTYPY_ENGINES, **W1NET_ENGINES}.items():
        if engines and label not in engines:
            continue
        contestant = Contestant(label, [dict(pars, numiter=budget)])
        result, truth = run_contestant(tree, contestant, seed=1, sample_every=5)
        if truth:
            score(result, truth)
        row = dict(result.row, curve=result.curve)
        if measured and label != 'W1Net-on':  # the halves double the cost: the network-on engine is left out
            row['frc_halves_px'] = halves_frc(tree, contestant, seed=1)
        rows[label] = row
        print(f"  {label:10s} done in {row['wall_s'] + row['setup_s']:.1f} s", flush=True)
    return rows


def report(name, rows):
    """Print one case's table; returns its summary record."""
    measured = name.startswith('Siemens')
    key = 'amplitude_misfit' if measured else 'object_error'
    epie = rows.get('ePIE')
    target = epie[key] if epie else None
    print(f"\n== {name} ==")
    print(f"{'engine':10s} {key:>16s} {'FRC halves px':>13s} {'iter s':>7s} {'setup s':>7s} {'t(ePIE final)/t_ePIE':>20s}"
          f" {'start':>7s}")
    for label, row in rows.items():
        reached = time_to_reach(row['curve'], key, target) if target is not None else None
        ratio = '-' if reached is None or not epie['wall_s'] else f"{reached / epie['wall_s']:.2f}"
        start = row['curve'][0][key]
        frc = row.get('frc_halves_px')
        print(f"{label:10s} {row[key]:16.4f} {'-' if frc is None else f'{frc:.2f}':>13s} {row['wall_s']:7.1f} "
              f"{row['setup_s']:7.1f} {ratio:>20s} {start if start is None else round(start, 4)!s:>7s}")
    ptypy_best = min((rows[e][key] for e in PTYPY_ENGINES if e in rows), default=None)
    record = {'case': name, 'measure': key, 'ptypy_best': ptypy_best,
              'winner': min(rows, key=lambda e: rows[e][key])}
    if 'W1Net-off' in rows and ptypy_best is not None:  # --engines may leave PtyPy's out
        off = rows['W1Net-off']
        record.update(off=off[key], ratio=off[key] / ptypy_best,
                      worse_than_start=off['curve'][0][key] is not None and off[key] > off['curve'][0][key])
        if measured:
            best_frc = min(rows[e]['frc_halves_px'] for e in PTYPY_ENGINES if e in rows)
            record.update(frc_ratio=off['frc_halves_px'] / best_frc)
    if 'W1Net-on' in rows and 'W1Net-off' in rows:
        on, off = rows['W1Net-on'], rows['W1Net-off']
        equal = min(on['wall_s'], off['wall_s'])
        at = {label: min((c[key] for c in row['curve'] if c['wall_s'] <= equal), default=None)
              for label, row in (('on', on), ('off', off))}
        record.update(on=on[key], on_at_equal_time=at['on'], off_at_equal_time=at['off'], equal_time_s=equal)
    print(f"winner: {record['winner']}" + (f"; W1Net-off / best PtyPy = {record['ratio']:.2f}" if 'ratio' in record
                                         else ''))
    return record


def summary(records):
    rated = [r for r in records if 'ratio' in r]
    if not rated:
        return
    wins = sum(r['ratio'] <= 1.0 for r in rated)
    worst = max(rated, key=lambda r: r['ratio'])
    print(f"\n== summary over {len(rated)} cases ==")
    print(f"W1Net network off ends at or below the best PtyPy engine in {wins}/{len(rated)} cases "
          f"({100 * wins / len(rated):.0f} %; target >= 90 %); worst ratio {worst['ratio']:.2f} ({worst['case']}; "
          "target <= 1.1)")
    print(f"ends worse than its start in {sum(r['worse_than_start'] for r in rated)} cases (target 0)")
    for r in records:
        if 'on_at_equal_time' in r and r['on_at_equal_time'] is not None:
            print(f"  {r['case']:26s} network on {r['on_at_equal_time']:.4f} vs off {r['off_at_equal_time']:.4f} "
                  f"at {r['equal_time_s']:.0f} s")


def drift(name, factor=6):
    """W1Net without network for ``factor`` times the case's budget: its errors at the budget and at the end."""
    build, budget, _ = CASES[name]
    tree = case_tree(build())
    key = 'amplitude_misfit' if name.startswith('Siemens') else 'object_error'
    contestant = Contestant('W1Net-off', [dict(W1NET_ENGINES['W1Net-off'], numiter=factor * budget)])
    result, _ = run_contestant(tree, contestant, seed=1, sample_every=budget)
    at = {c['iterations']: c[key] for c in result.curve}
    print(f"{name:26s} {key} start {at[0]:.4f}, at {budget} epochs {at[budget]:.4f}, at {factor * budget} "
          f"{at[factor * budget]:.4f}: {'worse' if at[factor * budget] > at[budget] else 'not worse'}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='the subset marked in CASES, 50 iterations each')
    parser.add_argument('--cases', nargs='+', help='run these cases only (names as in CASES)')
    parser.add_argument('--engines', nargs='+', help='run these engines only (DM ePIE ML W1Net-off W1Net-on)')
    parser.add_argument('--json', help='also write every row and curve to this JSON file')
    parser.add_argument('--drift', action='store_true', help='instead: W1Net without network for 6x the budget on '
                                                             'the cases (default: the low-dose ones)')
    args = parser.parse_args()
    if args.drift:
        for name in args.cases or [name for name in CASES if '1e4' in name or '1e5' in name]:
            drift(name)
        return
    names = args.cases or [name for name, (_, _, quick) in CASES.items() if quick or not args.quick]
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}; known: {sorted(CASES)}")
    records, everything, start = [], {}, time.perf_counter()
    for name in names:
        print(f"\n-- {name}", flush=True)
        rows = run_case(name, 50 if args.quick else None, args.engines)
        records.append(report(name, rows))
        everything[name] = rows
    summary(records)
    print(f"\nwhole run: {(time.perf_counter() - start) / 60:.1f} min")
    if args.json:
        with open(args.json, 'w') as handle:
            json.dump({'records': records, 'rows': everything}, handle, indent=1,
                      default=lambda value: None if isinstance(value, float) and math.isnan(value) else str(value))


if __name__ == '__main__':
    main()
