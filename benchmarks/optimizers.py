"""Adam, AdamW, Lion and AdaHessian side by side: step cost, convergence, robustness, the joint setting.

    ONEDNN_MAX_CPU_ISA=AVX2 GLOG_v=3 python benchmarks/optimizers.py [--parts cost convergence joint robustness]

1. ``cost``: ms per step of each optimizer, its solvers taking turns epoch by epoch in one process
   (``--rounds`` turns each), so drifts of the machine's speed hit them alike: on the network group of
   the joint step (128-px frames, batch 8; peak memory of a process per optimizer; AdaHessian at the
   refresh interval the settings document, 8, and at the paper's 1), and on object and probe (the
   physics-only step, 128-px frames, batch 8; AdaHessian with its default closed-form curvature, and
   with the Hutchinson estimate of ``curvature='gauss_newton'`` refreshed every 8th and every step).
   Target: AdaHessian at its documented setting <= 2.5x Adam.
2. ``convergence`` on MoonFlowerScan (161 frames of 128 px, 1e8 photons; needs PtyPy), from PtyPy's
   initial object and probe: epochs and wall time (compilation timed apart) to object error 0.15, the
   optimizers taking turns epoch by epoch; object and probe only (network off; AdaHessian also with its
   curvature estimated, ``'gauss_newton'``), then the joint step (network on from epoch 0). Every optimizer runs at its defaults (``ptypy_npu.settings``). Targets:
   AdaHessian on object and probe within 1.2x the epochs of sgd on both and in less wall time than
   Adam; Lion in less wall time than Adam in the joint step. The engine's default (sgd on the object,
   AdaHessian on the probe) runs beside them.
3. ``joint`` (MoonFlowerScan, needs PtyPy): the mission's setting, Lion on the network and AdaHessian on
   object and probe, against the engine's default (Adam on the network, sgd on the object, AdaHessian on
   the probe), both
   with the network from epoch 5, ``--joint-epochs`` epochs: the wall time Lion + AdaHessian needs to
   reach the default's final error. Target: no more than the default's.
4. ``robustness``: AdaHessian against Adam on object and probe (network off; sgd on both beside) on
   simulated scans of 64 and 128 px at 1e5, 1e7 and 1e9 photons, 30 epochs each. Target: it never diverges and ends at or
   below Adam's error.

A run whose divergence guard gave up is printed as "diverged", with its epoch.
"""
import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

from ptypy_npu import settings
from ptypy_npu.metrics import illuminated_region, registered_error
from ptypy_npu.plugins import build_solver
from ptypy_npu.simulate import simulate_scan

OPTIMIZERS = ('adam', 'adamw', 'lion', 'adahessian')
#: The settings each group of optimizer labels stands for.
PHYSICS = {'network.name': None}
#: AdaHessian on object and probe with the Hutchinson estimate of the Gauss-Newton diagonal instead of its
#: closed form (the default).
ESTIMATED = {f'{group}_update.options': {'curvature': 'gauss_newton'} for group in ('object', 'probe')}


def with_optimizer(name, groups, **more):
    """Settings overrides putting optimizer ``name`` on ``groups`` ('network', 'object', 'probe')."""
    return {**{f"{group}_update.optimizer": name for group in groups}, **more}


def cost_solver(overrides):
    """A solver of the cost part (128-px frames, batch 8) and its steps per epoch."""
    data, _ = simulate_scan(frame_size=128, count=64, photons=1e7)
    chosen = settings.make({'batch_size': 8, 'network.start': 0, **overrides})
    return build_solver(data, chosen), -(-len(data.positions) // chosen.batch_size)


COST_RUNS = {
    'network group': {
        'adam': with_optimizer('adam', ['network']), 'adamw': with_optimizer('adamw', ['network']),
        'lion': with_optimizer('lion', ['network']), 'adahessian': with_optimizer('adahessian', ['network']),
        'adahessian/1': with_optimizer('adahessian', ['network'], hessian_interval=1)},
    'object and probe': {
        'sgd': with_optimizer('sgd', ['object', 'probe'], **PHYSICS),
        'adam': with_optimizer('adam', ['object', 'probe'], **PHYSICS),
        'lion': with_optimizer('lion', ['object', 'probe'], **PHYSICS),
        'adahessian': with_optimizer('adahessian', ['object', 'probe'], **PHYSICS),
        'adahessian, estimated/8': with_optimizer('adahessian', ['object', 'probe'], **PHYSICS, **ESTIMATED),
        'adahessian, estimated/1': with_optimizer('adahessian', ['object', 'probe'], hessian_interval=1, **PHYSICS,
                                                  **ESTIMATED)},
}


def step_times(runs, rounds):
    """{label: [(wall ms, CPU ms) per step, one per round]} of the ``runs`` {label: overrides}, their
    solvers taking turns epoch by epoch in this process after one compiling epoch each."""
    solvers = {label: cost_solver(overrides) for label, overrides in runs.items()}
    for solver, _ in solvers.values():
        solver.run(1)
    times = {label: [] for label in runs}
    for _ in range(rounds):
        for label, (solver, steps) in solvers.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            solver.run(1)
            times[label].append((1e3 * (time.perf_counter() - start) / steps,
                                 1e3 * (time.process_time() - start_cpu) / steps))
    return times


def peak_memory(overrides):
    """Worker: this process's peak RSS (MB) after compiling and running two epochs of ``overrides``."""
    solver, _ = cost_solver(overrides)
    solver.run(2)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report_cost(rounds):
    for part, runs in COST_RUNS.items():
        memory = {}
        if part == 'network group':
            memory = {label: json.loads(subprocess.run([sys.executable, __file__, '--worker', json.dumps(overrides)],
                                                       capture_output=True, text=True, check=True).stdout.splitlines()[-1])
                      for label, overrides in runs.items()}
        times = step_times(runs, rounds)
        print(f"\n== step cost, {part}, 128-px frames, batch 8; mean of {rounds} turns, one epoch each, in turn ==")
        print(f"{'optimizer':24s} {'ms/step':>8s} {'x Adam':>7s} {'CPU ms':>8s} {'x Adam':>7s} {'peak RSS MB':>12s}")
        adam_wall, adam_cpu = np.mean(times['adam'], axis=0)
        for label, measured in times.items():
            wall, cpu = np.mean(measured, axis=0)
            rss = f"{memory[label]:12.0f}" if label in memory else f"{'-':>12s}"
            print(f"{label:24s} {wall:8.1f} {wall / adam_wall:7.2f} {cpu:8.1f} {cpu / adam_cpu:7.2f} {rss}")


def moonflower():
    """(ScanData of MoonFlowerScan as the W1Net engine sees it, truth, region); needs PtyPy."""
    from ptypy import utils as u
    from ptypy.core import Ptycho
    from ptypy_npu.ptypy_plugin.engine import W1Net
    from ptypy_npu.ptypy_plugin.moonflower import moonflower_scan, true_object, use_structured_object
    use_structured_object()
    np.random.seed(1)
    p = u.Param(verbose_level='critical', io=u.Param(rfile=None, autosave=u.Param(active=False),
                                                     interaction=u.Param(active=False)))
    p.scans = u.Param(MF=moonflower_scan(frames=200, shape=128, photons=1e8))
    p.engines = u.Param()
    P = Ptycho(p, level=3)
    P.runtime.iter_info = []
    engine = W1Net(P, u.Param(name='W1Net'))
    engine.initialize()
    data, _ = engine.scan_data()
    truth, region = true_object(P)
    return data, truth, region


def race(data, truth, region, runs, epochs, target=None):
    """Every run of ``runs`` {label: overrides} for ``epochs`` epochs, one epoch each in turn, its graphs
    compiled first and timed apart (as the PtyPy engine does in ``prepare``). Returns {label: {'errors':
    [per epoch], 'times': [cumulative s], 'compile_s': s, 'diverged': epoch or None}}; a run stops once it
    reaches ``target``."""
    solvers = {label: build_solver(data, settings.make(overrides)) for label, overrides in runs.items()}
    results = {label: {'errors': [], 'times': [], 'diverged': None} for label in runs}
    for label, solver in solvers.items():
        tick = time.perf_counter()
        solver.compile()
        results[label]['compile_s'] = time.perf_counter() - tick
    for epoch in range(1, epochs + 1):
        for label, solver in solvers.items():
            r = results[label]
            if r['diverged'] or (target and r['errors'] and min(r['errors']) <= target):
                continue
            tick = time.perf_counter()
            try:
                solver.run(1)
            except FloatingPointError:  # the divergence guard gave up
                r['diverged'] = epoch
                continue
            r['times'].append((r['times'][-1] if r['times'] else 0.0) + time.perf_counter() - tick)
            r['errors'].append(registered_error(solver.object, truth, region))
    return results


def first_reaching(result, target):
    """(epochs, seconds) of the first epoch at or below ``target``, or None."""
    return next(((k + 1, t) for k, (e, t) in enumerate(zip(result['errors'], result['times'])) if e <= target), None)


def report_convergence(data, truth, region, epochs, target):
    cases = {
        'object and probe only (network off)': {
            'sgd': with_optimizer('sgd', ['object', 'probe'], **PHYSICS),
            'default (probe adahessian)': dict(PHYSICS),
            **{name: with_optimizer(name, ['object', 'probe'], **PHYSICS) for name in OPTIMIZERS},
            'adahessian, estimated': with_optimizer('adahessian', ['object', 'probe'], **PHYSICS, **ESTIMATED)},
        'joint step (network on from epoch 0)': {
            'engine default': {'network.start': 0},
            **{name: with_optimizer(name, ['network', 'object', 'probe'], **{'network.start': 0})
               for name in ('adam', 'adamw', 'lion')},
            'adahessian (network)': with_optimizer('adahessian', ['network'], **{'network.start': 0})},
    }
    for case, runs in cases.items():
        results = race(data, truth, region, runs, epochs, target)
        print(f"\n== MoonFlowerScan, {case}: epochs / wall time to object error {target} ==")
        adam = first_reaching(results['adam'], target)
        for label, r in results.items():
            reached = first_reaching(r, target)
            text = f"{reached[0]:4d} epochs {reached[1]:7.1f} s" if reached else 'not reached'
            ratio = f"{reached[1] / adam[1]:5.2f} x Adam" if reached and adam else ''
            best = f"best error {min(r['errors']):.4f}" if r['errors'] else 'no epoch finished'
            diverged = f", diverged in epoch {r['diverged']}" if r['diverged'] else ''
            print(f"{label:22s} {text:>24s} {ratio:>12s}   {best}, compile {r['compile_s']:.1f} s{diverged}")


def report_joint(data, truth, region, epochs):
    runs = {'engine default': {'network.start': 5},
            'lion + adahessian': {'network.start': 5, 'network_update.optimizer': 'lion',
                                  'object_update.optimizer': 'adahessian', 'probe_update.optimizer': 'adahessian'}}
    results = race(data, truth, region, runs, epochs)
    default = results['engine default']
    final = default['errors'][-1] if default['errors'] else None
    print(f"\n== MoonFlowerScan, joint step, network from epoch 5, {epochs} epochs ==")
    for label, r in results.items():
        reached = first_reaching(r, final) if final is not None else None
        text = f"{reached[0]} epochs, {reached[1]:.1f} s" if reached else 'not reached'
        end = f"{r['errors'][-1]:.4f} after {r['times'][-1]:.1f} s" if r['errors'] else '-'
        diverged = f", diverged in epoch {r['diverged']}" if r['diverged'] else ''
        print(f"{label:20s} final error {end}; reaches the default's final error {final:.4f} in {text}{diverged}")


def report_robustness(epochs):
    print(f"\n== AdaHessian against Adam on object and probe (network off; sgd beside), simulated scans, "
          f"{epochs} epochs: final error ==")
    print(f"{'case':16s} {'sgd':>14s} {'adam':>10s} {'adahessian':>12s}  adahessian <= adam")
    for size in (64, 128):
        for photons in (1e5, 1e7, 1e9):
            data, truth = simulate_scan(frame_size=size, count=100 if size == 64 else 60, photons=photons, seed=1)
            region = illuminated_region(data.probe, data.positions, truth.shape)
            runs = {name: with_optimizer(name, ['object', 'probe'], **PHYSICS) for name in ('sgd', 'adam', 'adahessian')}
            results = race(data, truth, region, runs, epochs)
            cells = [f"diverged@{r['diverged']}" if r['diverged'] else f"{r['errors'][-1]:.4f}" for r in results.values()]
            adam, adahessian = results['adam'], results['adahessian']
            wins = not adahessian['diverged'] and (adam['diverged'] or adahessian['errors'][-1] <= adam['errors'][-1])
            print(f"{size:3d} px {photons:7.0e}   {cells[0]:>14s} {cells[1]:>10s} {cells[2]:>12s}  {'yes' if wins else 'no'}",
                  flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    parser.add_argument('--parts', nargs='+', default=['cost', 'convergence', 'joint', 'robustness'],
                        choices=['cost', 'convergence', 'joint', 'robustness'])
    parser.add_argument('--epochs', type=int, default=30, help='epoch budget of the convergence part')
    parser.add_argument('--joint-epochs', type=int, default=20, help='epochs of the joint part')
    parser.add_argument('--target', type=float, default=0.15, help='common object error to reach')
    parser.add_argument('--rounds', type=int, default=10, help='turns (one epoch each) of the timed optimizers')
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(peak_memory(json.loads(args.worker))))
        return
    if 'cost' in args.parts:
        report_cost(args.rounds)
    if {'convergence', 'joint'} & set(args.parts):
        scan = moonflower()
        if 'convergence' in args.parts:
            report_convergence(*scan, args.epochs, args.target)
        if 'joint' in args.parts:
            report_joint(*scan, args.joint_epochs)
    if 'robustness' in args.parts:
        report_robustness(30)


if __name__ == '__main__':
    main()
