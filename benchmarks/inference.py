"""One-pass inference with a trained W1Net model: frames/s by batch size, and a whole scan against DM.

    ONEDNN_MAX_CPU_ISA=AVX2 GLOG_v=3 python benchmarks/inference.py [--skip-ptypy]

1. Frames per second of predict + stitch (``StreamingReconstruction.feed``) at batch
   sizes 1, 16, 64 and 256, for 64-px frames (W1Net, binning 1) and 128-px frames (the
   engine's default W1Net, binning 2), after one warm-up pass that compiles the graph
   (its time is printed too). The weights are untrained: the speed does not depend on them.
2. MoonFlowerScan, 161 frames of 128 px (needs PtyPy), one process: DM's 100 iterations
   against W1Net in mode 'infer' with a model trained briefly on the same scan: the
   one-pass reconstruction (predict + stitch, warm) and the whole engine run (initialize,
   loading the model; prepare, compiling; one iterate, which also computes PtyPy's errors;
   finalize), as fractions of DM's engine run (same steps). Target: infer <= 1/100 of DM's time.
"""
import argparse
import os
import tempfile
import time

import numpy as np

BATCH_SIZES = (1, 16, 64, 256)
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


def moonflower_versus_dm(workdir):
    """Seconds of DM (100 iterations) and of W1Net 'infer' on the same MoonFlowerScan."""
    from ptypy import utils as u
    from ptypy.core import Ptycho
    from ptypy.engines import by_name
    from ptypy.utils import parallel
    from ptypy_npu.models import load_model
    from ptypy_npu.ptypy_plugin.engine import W1Net
    from ptypy_npu.ptypy_plugin.moonflower import moonflower_scan, use_structured_object
    use_structured_object()

    def ptycho(engines):
        parallel.loadmanager.reset()
        np.random.seed(1)
        p = u.Param(verbose_level='critical', io=u.Param(home=workdir, rfile=None, autosave=u.Param(active=False),
                                                         interaction=u.Param(active=False)))
        p.scans = u.Param(MF=moonflower_scan(frames=200, shape=128, photons=1e8))
        p.engines = u.Param({f'e{k:02d}': u.Param(e) for k, e in enumerate(engines)})
        P = Ptycho(p, level=5 if engines else 3)  # with engines: run them
        P.runtime.iter_info = []
        return P

    def timed(pars):
        """Seconds of one engine on a fresh scan: initialize, prepare, all iterations, finalize."""
        P = ptycho([])
        engine = by_name(pars['name'])(P, u.Param(pars))
        tick = time.perf_counter()
        engine.initialize()
        engine.prepare()
        while not engine.finished:
            engine.iterate()
        engine.finalize()
        return time.perf_counter() - tick, P

    dm, _ = timed(dict(name='DM', numiter=100))
    model_dir = os.path.join(workdir, 'moonflower_model')
    ptycho([dict(name='W1Net', numiter=3, network=u.Param(start=0), model=u.Param(save=model_dir))])
    whole, P = timed(dict(name='W1Net', mode='infer', numiter=1, model=u.Param(load=model_dir)))
    engine = W1Net(P, u.Param(name='W1Net'))
    engine.initialize()
    data, _ = engine.scan_data()
    model = load_model(model_dir)
    model.reconstruct(data)  # compile
    tick = time.perf_counter()
    model.reconstruct(data)
    one_pass = time.perf_counter() - tick
    return {'frames': len(data.positions), 'dm': dm, 'one_pass': one_pass, 'engine': whole}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--skip-ptypy', action='store_true', help='only the frames/s table')
    args = parser.parse_args()
    print(f"== predict + stitch, frames/s ({FRAMES} frames; warm-up = first batch, compiles the graph) ==")
    print(f"{'frame':>6s} " + ' '.join(f"{'batch ' + str(b):>10s}" for b in BATCH_SIZES) + '   warm-up s')
    for frame_size, binning in ((64, 1), (128, 2)):
        rates, warm_up = frames_per_second(frame_size, binning)
        print(f"{frame_size:6d} " + ' '.join(f"{rates[b]:10.0f}" for b in BATCH_SIZES) +
              '   ' + ' '.join(f"{warm_up[b]:.2f}" for b in BATCH_SIZES))
    if args.skip_ptypy:
        return
    with tempfile.TemporaryDirectory() as workdir:
        r = moonflower_versus_dm(workdir)
    print(f"\n== MoonFlowerScan, {r['frames']} frames of 128 px ==")
    print(f"DM, 100 iterations:                      {r['dm']:7.2f} s")
    print(f"W1Net infer, one pass (predict+stitch):  {r['one_pass']:7.3f} s  = 1/{r['dm'] / r['one_pass']:.0f} of DM")
    print(f"W1Net infer, whole engine call:          {r['engine']:7.2f} s  = 1/{r['dm'] / r['engine']:.0f} of DM")


if __name__ == '__main__':
    main()
