"""Pretraining for an instrument, then one pass and warm starts on objects the network never saw.

    ONEDNN_MAX_CPU_ISA=AVX2 GLOG_v=3 python benchmarks/pretraining.py [--objects 16] [--epochs 20]

The instrument: the project's simulator, 64-px frames, 1e7 photons per frame, its defocused disc probe,
scan step 0.15 of the frame (``--photons``, ``--frame-size`` change it). A corpus of ``--objects`` random
library objects (ptypy_npu.objects) is simulated with it and a W1Network pretrained on it, supervised by
the truth (``ptypy-npu pretrain``'s defaults), once with the holographic input and once with the frames
alone (the ablation). The unseen objects: the Siemens star (its spokes are no library image) and random
library objects of seeds outside the corpus, scanned with the same instrument.

Printed per unseen object, registered error against the truth:

* ``flat``: the object of transmission 1; ``estimate``: the stitched single-frame estimates that the
  holographic network starts from (no network);
* ``one pass``: each pretrained network's stitched patches, and its frames per second;
* ``solve``: physics-only refinement (network off) from the flat object, ``--solve-epochs`` epochs;
* ``warm``: the same refinement from the holographic one pass: the epochs and seconds it needs to reach
  the from-scratch final error, against the from-scratch run's. Target: at most a third of either.
  ``from est.``: the same from the stitched estimates (no network), and its final error: whether a
  better start shortens the refinement at all.
"""
import argparse
import dataclasses
import tempfile
import time

from ptypy_npu import settings
from ptypy_npu.metrics import illuminated_region, registered_error
from ptypy_npu.models import SingleFrameEstimates, StreamingReconstruction, load_model, save_model
from ptypy_npu.plugins import build_solver
from ptypy_npu.pretraining import PRETRAINING_DEFAULTS, corpus, instrument, pretraining_solver
from ptypy_npu.simulate import simulate_scan

#: Unseen objects: (simulator object, seed); corpus seeds run from --corpus-seed upwards.
UNSEEN = (('star', 1000), ('random', 1001), ('random', 1002), ('random', 1003), ('random', 1004))
INPUTS = ('holographic', 'diffraction')


def stitched(model, data):
    stream = StreamingReconstruction(model, data.obj.shape, data.probe, propagator=data.propagator)
    stream.feed(data.intensities, data.positions)
    return stream.object, stream.frames_done / stream.seconds


def pretrain(args, input_kind, workdir):
    like, _ = simulate_scan(frame_size=args.frame_size, count=args.frames, photons=args.photons, seed=7, obj='random')
    data, truth, _ = corpus(instrument(like), args.objects, args.frames, args.corpus_seed)
    chosen = settings.make({**PRETRAINING_DEFAULTS, 'network.input': input_kind})
    solver = pretraining_solver(data, truth, chosen)
    tick = time.perf_counter()
    solver.run(args.epochs)
    seconds = time.perf_counter() - tick
    directory = f"{workdir}/{input_kind}"
    save_model(directory, solver.export_network())
    return load_model(directory), seconds


def solve(data, truth, region, epochs, target=None):
    """Physics-only refinement: (final error, seconds, epochs to ``target`` or None, seconds to it)."""
    solver = build_solver(data, settings.make({'network.name': None}))
    solver.compile()
    tick, reached = time.perf_counter(), None
    for epoch in range(1, epochs + 1):
        solver.run(1)
        if target is not None and reached is None and registered_error(solver.object, truth, region) <= target:
            reached = (epoch, time.perf_counter() - tick)
    return registered_error(solver.object, truth, region), time.perf_counter() - tick, reached


def reached(refinement, epochs):
    """'epochs/total seconds' at which a :func:`solve` reached its target, or 'never'."""
    hit = refinement[2]
    return f"{'never':>12s} {'-':>7s}" if hit is None else f"{f'{hit[0]}/{epochs}':>12s} {hit[1]:7.1f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--objects', type=int, default=16, help='corpus objects')
    parser.add_argument('--frames', type=int, default=60, help='frames per scan (corpus and unseen)')
    parser.add_argument('--epochs', type=int, default=20, help='pretraining epochs')
    parser.add_argument('--solve-epochs', type=int, default=100, help='epochs of the physics-only refinements')
    parser.add_argument('--frame-size', type=int, default=64)
    parser.add_argument('--photons', type=float, default=1e7)
    parser.add_argument('--corpus-seed', type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        models = {}
        for input_kind in INPUTS:
            models[input_kind], seconds = pretrain(args, input_kind, workdir)
            print(f"pretrained ({input_kind} input): {args.objects} objects x {args.frames} frames, {args.epochs} "
                  f"epochs in {seconds:.0f} s", flush=True)
        print(f"\n{'unseen object':16s} {'flat':>6s} {'estimate':>8s} " +
              ' '.join(f"{'one pass ' + k[:5]:>15s}" for k in INPUTS) +
              f" {'frames/s':>8s} {'solve':>6s} {'solve s':>7s} {'warm: epochs':>12s} {'warm s':>7s}"
              f" {'from est.':>12s} {'s':>7s} {'final':>6s}")
        for name, seed in UNSEEN:
            data, truth = simulate_scan(frame_size=args.frame_size, count=args.frames, photons=args.photons,
                                        seed=seed, obj=name)
            region = illuminated_region(data.probe, data.positions, truth.shape)
            errors = {k: registered_error(stitched(m, data)[0], truth, region) for k, m in models.items()}
            estimate_object = SingleFrameEstimates(data.probe).reconstruct(data)
            estimate = registered_error(estimate_object, truth, region)
            one_pass, rate = stitched(models['holographic'], data)
            scratch, scratch_s, _ = solve(data, truth, region, args.solve_epochs)
            warm = solve(dataclasses.replace(data, obj=one_pass), truth, region, args.solve_epochs, scratch)
            from_estimate = solve(dataclasses.replace(data, obj=estimate_object), truth, region, args.solve_epochs,
                                  scratch)
            print(f"{name + ' ' + str(seed):16s} {registered_error(data.obj, truth, region):6.3f} {estimate:8.3f} " +
                  ' '.join(f"{errors[k]:15.3f}" for k in INPUTS) +
                  f" {rate:8.0f} {scratch:6.3f} {scratch_s:7.1f} {reached(warm, args.solve_epochs)} "
                  f"{reached(from_estimate, args.solve_epochs)} {from_estimate[0]:6.3f}", flush=True)


if __name__ == '__main__':
    main()
