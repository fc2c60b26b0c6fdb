"""Adam, AdamW, Lion and AdaHessian side by side on the W1Net engine's joint step.

    ONEDNN_MAX_CPU_ISA=AVX2 GLOG_v=3 python benchmarks/optimizers.py [--epochs 30]

1. Step cost: each optimizer trains the network group of the default joint step
   (network on, 128-px frames, batch 8) on a simulated scan. The timed solvers share one
   process and take turns epoch by epoch (``--rounds`` turns each, default 30), so drifts of the
   machine's speed hit them alike; each optimizer's peak memory (max RSS) is measured in a
   process of its own. Prints ms per step and the ratio to Adam, with each round's ratio.
   AdaHessian is timed with its Hessian estimate refreshed every step (the paper's
   setting, also the solver's default ``hessian_interval``) and every 10 steps.
   Targets: Lion <= 1.0x Adam, AdaHessian <= 2.5x Adam.
2. Convergence on MoonFlowerScan (needs PtyPy), from PtyPy's initial object and probe:
   the epochs and wall time each optimizer needs to reach a common object error (against
   the simulated object), first in the engine's joint step (network on from the first
   epoch; the optimizer refines network, object and probe, except AdaHessian, which
   refines the network there, see ``_cases``), then with the network off (object and
   probe only), beside the engine's default (Adam for the network, illumination-normalised
   SGD for object and probe). Every optimizer runs at its rate in
   ``ptypy_npu.settings.DEFAULT_LEARNING_RATES``. Wall time counts graph compilation. A run
   whose divergence guard gave up is printed as "diverged", with the epoch.
   Target: Lion or AdaHessian reaches it in less wall time than Adam.
"""
import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

from ptypy_npu import settings
from ptypy_npu.plugins import build_solver

OPTIMIZERS = ('adam', 'adamw', 'lion', 'adahessian')
#: AdaHessian's refresh interval in the convergence runs: the one that meets its step-cost target.
CONVERGENCE_HESSIAN_INTERVAL = 10


def _step_cost_solver(name, hessian_interval):
    """A solver of the step-cost part, with ``name`` on the network group, and its steps per epoch."""
    from ptypy_npu.simulate import simulate_scan
    data, _ = simulate_scan(frame_size=128, count=64, photons=1e7)
    chosen = settings.make({'network_update.optimizer': name, 'network.start': 0, 'batch_size': 8,
                            'hessian_interval': hessian_interval})
    return build_solver(data, chosen), -(-len(data.positions) // chosen.batch_size)


def step_times(runs, rounds):
    """{label: [(wall ms, CPU ms) per step, one per round]} of the ``runs`` {label: (name, interval)},
    their solvers taking turns epoch by epoch in this process after one compiling epoch each."""
    solvers = {label: _step_cost_solver(*run) for label, run in runs.items()}
    for solver, _ in solvers.values():
        solver.run(1)  # compile
    times = {label: [] for label in runs}
    for _ in range(rounds):
        for label, (solver, steps) in solvers.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            solver.run(1)
            times[label].append((1e3 * (time.perf_counter() - start) / steps,
                                 1e3 * (time.process_time() - start_cpu) / steps))
    return times


def peak_memory(name, hessian_interval):
    """Worker: this process's peak RSS (MB) after compiling and running two epochs with ``name``."""
    solver, _ = _step_cost_solver(name, hessian_interval)
    solver.run(2)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def convergence(epochs, target):
    """Epochs and wall time each optimizer needs to reach ``target``, per case of :func:`_cases`.

    The optimizers of a case run side by side, one epoch each in turn. Returns
    {case: {label: {'reached': (epochs, seconds) or None, 'best_error', 'time'}}}.
    """
    from ptypy import utils as u
    from ptypy.core import Ptycho
    from ptypy_npu.metrics import registered_error
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
    results = {}
    for case, runs in _cases().items():
        solvers = {label: build_solver(data, chosen) for label, chosen in runs.items()}
        results[case] = {label: {'reached': None, 'best_error': None, 'time': 0.0} for label in runs}
        for epoch in range(1, epochs + 1):
            # one epoch of each in turn: a drift of the machine's speed hits every optimizer alike
            for label, solver in solvers.items():
                r = results[case][label]
                if r['reached'] or r.get('diverged'):
                    continue
                tick = time.perf_counter()
                try:
                    solver.run(1)
                except FloatingPointError:  # the divergence guard gave up
                    r['diverged'] = epoch
                    continue
                r['time'] += time.perf_counter() - tick
                error = registered_error(solver.object, truth, region)
                r['best_error'] = error if r['best_error'] is None else min(r['best_error'], error)
                if r['best_error'] <= target:
                    r['reached'] = (epoch, r['time'])
    return results


def _cases():
    """{case: {label: Settings}} of the convergence runs.

    AdaHessian's object and probe estimate must come from the batch it steps on (a
    refresh on other frames leaves the newly lit pixels' curvature at 0, and the step
    diverges), so it refreshes every step on them; in the joint step it refines the network
    (refreshed every ``CONVERGENCE_HESSIAN_INTERVAL`` steps) beside the default object and probe.
    """
    def case(name, network, object_name=None, hessian_interval=1):
        object_name = object_name or name
        overrides = {'network.start': 0, 'object_update.optimizer': object_name,
                     'probe_update.optimizer': object_name, 'hessian_interval': hessian_interval}
        if network:
            overrides['network_update.optimizer'] = name
        else:
            overrides['network.name'] = None
        return settings.make(overrides)
    joint = {'engine default': case('adam', True, 'sgd')}
    joint.update({name: case(name, True) for name in ('adam', 'adamw', 'lion')})
    joint['adahessian (network)'] = case('adahessian', True, 'sgd', CONVERGENCE_HESSIAN_INTERVAL)
    return {'joint W1Net step (network on from epoch 0; each optimizer refines network, object and probe, '
            'unless named)': joint,
            'object and probe only (network off)': {name: case(name, False) for name in ('sgd',) + OPTIMIZERS}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    parser.add_argument('--epochs', type=int, default=30, help='epoch budget of the convergence part')
    parser.add_argument('--target', type=float, default=0.15, help='common object error to reach')
    parser.add_argument('--skip-convergence', action='store_true')
    parser.add_argument('--rounds', type=int, default=30, help='turns (one epoch each) of the timed optimizers')
    args = parser.parse_args()
    if args.worker:
        name, interval = args.worker.split(':')
        print(json.dumps(peak_memory(name, int(interval))))
        return
    default_interval = settings.Settings().hessian_interval
    runs = {name: (name, 1) for name in OPTIMIZERS}
    runs.update({f"adahessian/{i}": ('adahessian', i) for i in sorted({default_interval, 10} - {1})})
    memory = {label: json.loads(subprocess.run([sys.executable, __file__, '--worker', f"{name}:{interval}"],
                                               capture_output=True, text=True, check=True).stdout.splitlines()[-1])
              for label, (name, interval) in runs.items()}
    times = step_times(runs, args.rounds)
    print(f"== joint W1Net step (network group), 128-px frames, batch 8; mean of {args.rounds} turns, "
          "one epoch each, the optimizers taking turns ==")
    print("(wall ms per step; CPU ms per step, both cores summed, which other load on the machine disturbs less)")
    print(f"{'optimizer':13s} {'ms/step':>8s} {'x Adam':>7s} {'CPU ms':>8s} {'x Adam':>7s} {'peak RSS MB':>12s}"
          f"   wall ratios of the rounds")
    adam_wall, adam_cpu = np.mean(times['adam'], axis=0)
    for label, rounds in times.items():
        wall, cpu = np.mean(rounds, axis=0)  # the mean: AdaHessian refreshes in some epochs only
        ratios = ' '.join(f"{r[0] / a[0]:.2f}" for r, a in zip(rounds, times['adam']))
        print(f"{label:13s} {wall:8.1f} {wall / adam_wall:7.2f} {cpu:8.1f} {cpu / adam_cpu:7.2f} "
              f"{memory[label]:12.0f}   {ratios}")
    if args.skip_convergence:
        return
    for case, results in convergence(args.epochs, args.target).items():
        print(f"\n== MoonFlowerScan, {case}: epochs / wall time to object error {args.target} ==")
        adam = results['adam']['reached']
        for name, r in results.items():
            reached = f"{r['reached'][0]:4d} epochs {r['reached'][1]:7.1f} s" if r['reached'] else 'not reached'
            ratio = f"{r['reached'][1] / adam[1]:5.2f} x Adam" if r['reached'] and adam else ''
            best = f"best error {r['best_error']:.4f}" if r['best_error'] is not None else 'no epoch finished'
            diverged = f", then diverged in epoch {r['diverged']}" if r.get('diverged') else ''
            print(f"{name:22s} {reached:>24s} {ratio:>12s}   {best}{diverged}")


if __name__ == '__main__':
    main()
