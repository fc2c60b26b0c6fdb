"""One-pass inference with a trained W1Net model: frames/s by batch size, and a whole scan against DM.

    ONEDNN_MAX_CPU_ISA=AVX2 GLOG_v=3 python benchmarks/inference.py [--skip-ptypy] [--variants fast,default]

1. Frames per second of predict + stitch (``StreamingReconstruction.feed``) at batch
   sizes 1, 16, 64 and 256, for 64-px frames (W1Net, binning 1) and 128-px frames (the
   engine's default W1Net, binning 2), after one warm-up pass that compiles the graph
   (its time is printed too). The weights are untrained: the speed does not depend on them.
2. MoonFlowerScan, 161 frames of 128 px (needs PtyPy), one process: DM's 100 iterations, then for
   each network variant (:data:`VARIANTS`) pretrained for the scan's instrument (DM's probe, the
   scan's geometry, dose and step; library objects, MoonFlower's photograph never among them,
   ``--objects``, ``--corpus-frames``, ``--epochs``): MFLOP per frame, frames/s and DM's time over
   the one pass (predict + stitch, warm, median of 5), and the registered error of the one pass against the
   truth (the object is unseen); beside them, the ablation without a network (the frames' single-shot
   estimates stitched, ``SingleFrameEstimates``: no MFLOP of a network, no pretraining). Then the last
   variant's whole engine call in mode 'infer'
   (initialize, loading the model; prepare, compiling; one iterate with PtyPy's errors; finalize).
   Targets: one pass <= 1/100 of DM's time; unseen error <= 0.25.
"""
import argparse
import math
import os
import tempfile
import time

import numpy as np

BATCH_SIZES = (1, 16, 64, 256)
#: Network variants of the MoonFlowerScan table (W1Network options), all with the holographic input.
VARIANTS = {'default (depth 3, width 8, bin 2)': dict(depth=3, width=8, binning=2, input='holographic'),
            'narrow (depth 3, width 4, bin 4)': dict(depth=3, width=4, binning=4, input='holographic'),
            'shallow (depth 2, width 4, bin 4)': dict(depth=2, width=4, binning=4, input='holographic'),
            'fast (depth 3, width 4, bin 4, light decoder)': dict(depth=3, width=4, binning=4, input='holographic',
                                                                  decoder='light')}
#: One-pass timings per variant; the median is reported.
ONE_PASS_REPEATS = 5
FRAMES = 512


def frames_per_second(frame_size, binning):
    """{batch size: frames/s} of predict + stitch, and the warm-up (compile) time in s."""
    from ptypy_npu import plugins
    from ptypy_npu.device import select_device
    from ptypy_npu.models import StreamingReconstruction, TrainedModel
    from ptypy_npu.simulate import simulate_scan
    select_device('CPU')  # graph mode, as load_model sets it
    data, _ = simulate_scan(frame_size=frame_size, count=FRAMES, photons=1e7)
    network = plugins.network_factory('W1Network')(frame_size, depth=3, width=8, binning=binning)
    sidecar = {'frame_shape': [frame_size, frame_size], 'geometry': {},
               'input': {'scale': float(np.log1p(data.intensities.max()))}}
    model = TrainedModel(None, network, sidecar, data.probe)
    rates, warm_up = {}, {}
    for batch_size in BATCH_SIZES:
        stream = StreamingReconstruction(model, data.obj.shape, data.probe, batch_size)
        tick = time.perf_counter()
        stream.feed(data.intensities[:batch_size], data.positions[:batch_size])
        warm_up[batch_size] = time.perf_counter() - tick
        rates[batch_size] = stream.feed(data.intensities, data.positions)
    return rates, warm_up


def w1_mflops(frame_size, depth, width, binning, input='diffraction', decoder='twin'):
    """Multiply-adds x 2 per frame (MFLOP) of a W1Network's convolutions: the encoder on the binned frame,
    the decoders back to full size (a transposed convolution spreads each input pixel over its 4 x 4 kernel):
    two, each ending in a 3x3 convolution, or one light one whose last transposed convolution gives both."""
    side = frame_size // binning
    channels = [min(width * 2 ** k, 8 * width) for k in range(depth + 1)]
    flops = 2 * 9 * (1 if input == 'diffraction' else 3) * channels[0] * side ** 2
    for k in range(depth):
        side //= 2
        flops += 2 * 9 * channels[k] * channels[k + 1] * side ** 2
    light = decoder == 'light'
    trunk, current = 0, channels[-1]
    for k in range(depth + int(math.log2(binning)) - light):
        following = channels[max(len(channels) - 2 - k, 0)]
        trunk += 2 * 16 * current * following * side ** 2
        side, current = side * 2, following
    if light:
        return (flops + trunk + 2 * 16 * current * 2 * side ** 2) / 1e6
    return (flops + 2 * (trunk + 2 * 9 * current * side ** 2)) / 1e6


def moonflower_versus_dm(workdir, args):
    """DM's 100 iterations on MoonFlowerScan, then per network variant: pretraining on a corpus of the scan's
    instrument (DM's probe, its geometry, dose and scan step; library objects, MoonFlower's photograph
    never among them), the one-pass time and the error on MoonFlowerScan."""
    from ptypy import utils as u
    from ptypy.core import Ptycho
    from ptypy.engines import by_name
    from ptypy.utils import parallel
    from ptypy_npu import settings
    from ptypy_npu.metrics import registered_error
    from ptypy_npu.models import SingleFrameEstimates, load_model, save_model
    from ptypy_npu.pretraining import PRETRAINING_DEFAULTS, corpus, instrument, pretraining_solver
    from ptypy_npu.ptypy_plugin.engine import W1Net
    from ptypy_npu.ptypy_plugin.moonflower import moonflower_scan, true_object, use_structured_object
    use_structured_object()

    def ptycho():
        parallel.loadmanager.reset()
        np.random.seed(1)
        p = u.Param(verbose_level='critical', io=u.Param(home=workdir, rfile=None, autosave=u.Param(active=False),
                                                         interaction=u.Param(active=False)))
        p.scans = u.Param(MF=moonflower_scan(frames=200, shape=128, photons=1e8))
        P = Ptycho(p, level=3)
        P.runtime.iter_info = []
        return P

    def timed(P, pars):
        """Seconds of one engine: initialize, prepare, all iterations, finalize."""
        engine = by_name(pars['name'])(P, u.Param(pars))
        tick = time.perf_counter()
        engine.initialize()
        engine.prepare()
        while not engine.finished:
            engine.iterate()
        engine.finalize()
        return time.perf_counter() - tick

    P = ptycho()
    dm = timed(P, dict(name='DM', numiter=100))
    truth, region = true_object(P)
    engine = W1Net(P, u.Param(name='W1Net'))
    engine.initialize()
    data, _ = engine.scan_data()
    data.probe = next(iter(P.probe.storages.values())).data.copy()  # the instrument's probe: DM's

    def one_pass(model):
        """The object of ``model``'s one pass and its median time over :data:`ONE_PASS_REPEATS` warm runs."""
        model.reconstruct(data)  # compiles
        seconds = []
        for _ in range(ONE_PASS_REPEATS):
            tick = time.perf_counter()
            obj = model.reconstruct(data)
            seconds.append(time.perf_counter() - tick)
        return obj, float(np.median(seconds))

    obj, seconds = one_pass(SingleFrameEstimates(data.probe))
    rows = [('no network (single-frame estimates)', None, len(data.positions) / seconds, dm / seconds,
             registered_error(obj, truth, region), 0.0)]
    for name, options in VARIANTS.items():
        if name.split()[0] not in args.variants:
            continue
        chosen = settings.make({**PRETRAINING_DEFAULTS, 'network': options})
        scans, truths, _ = corpus(instrument(data), args.objects, args.corpus_frames, seed=0)
        solver = pretraining_solver(scans, truths, chosen)
        tick = time.perf_counter()
        solver.run(args.epochs)
        pretraining = time.perf_counter() - tick
        directory = os.path.join(workdir, name)
        save_model(directory, solver.export_network())
        obj, seconds = one_pass(load_model(directory))
        rows.append((name, w1_mflops(128, **options), len(data.positions) / seconds, dm / seconds,
                     registered_error(obj, truth, region), pretraining))
    flat = registered_error(np.ones_like(truth), truth, region)
    infer = timed(ptycho(), dict(name='W1Net', mode='infer', numiter=1, model=u.Param(load=directory)))
    return {'frames': len(data.positions), 'dm': dm, 'rows': rows, 'flat': flat, 'engine': infer,
            'engine_variant': rows[-1][0]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--skip-ptypy', action='store_true', help='only the frames/s table')
    parser.add_argument('--objects', type=int, default=8, help='corpus objects of the variants\' pretraining')
    parser.add_argument('--corpus-frames', type=int, default=100, help='frames per corpus object')
    parser.add_argument('--epochs', type=int, default=10, help='pretraining epochs of each variant')
    parser.add_argument('--variants', default=','.join(name.split()[0] for name in VARIANTS),
                        help='comma-separated first words of the variants to run (default: all)')
    args = parser.parse_args()
    args.variants = args.variants.split(',')
    known = [name.split()[0] for name in VARIANTS]
    if set(args.variants) - set(known):
        parser.error(f"--variants: unknown {sorted(set(args.variants) - set(known))}; known: {known}")
    print(f"== predict + stitch, frames/s ({FRAMES} frames; warm-up = first batch, compiles the graph) ==")
    print(f"{'frame':>6s} " + ' '.join(f"{'batch ' + str(b):>10s}" for b in BATCH_SIZES) + '   warm-up s')
    for frame_size, binning in ((64, 1), (128, 2)):
        rates, warm_up = frames_per_second(frame_size, binning)
        print(f"{frame_size:6d} " + ' '.join(f"{rates[b]:10.0f}" for b in BATCH_SIZES) +
              '   ' + ' '.join(f"{warm_up[b]:.2f}" for b in BATCH_SIZES))
    if args.skip_ptypy:
        return
    with tempfile.TemporaryDirectory() as workdir:
        r = moonflower_versus_dm(workdir, args)
    print(f"\n== MoonFlowerScan, {r['frames']} frames of 128 px; DM, 100 iterations: {r['dm']:.2f} s ==")
    print(f"pretrained on {args.objects} library objects x {args.corpus_frames} frames, {args.epochs} epochs, "
          f"with DM's probe; a flat object scores {r['flat']:.3f}")
    print(f"{'variant':32s} {'MFLOP/frame':>11s} {'frames/s':>9s} {'DM / one pass':>13s} {'unseen error':>12s} "
          f"{'pretraining s':>13s}")
    for name, mflop, rate, ratio, error, seconds in r['rows']:
        print(f"{name:32s} {'-' if mflop is None else f'{mflop:.1f}':>11s} {rate:9.0f} {ratio:13.0f} {error:12.3f} "
              f"{seconds:13.0f}")
    print(f"W1Net mode 'infer', whole engine call ({r['engine_variant']}; loading, compiling, one pass, PtyPy's "
          f"errors): {r['engine']:.2f} s = 1/{r['dm'] / r['engine']:.0f} of DM")


if __name__ == '__main__':
    main()
