"""Run under ``mpiexec -n N`` (channel ``mpi``) or ``msrun --worker_num=N`` (channel
``mindspore``): DM, then W1Net with its network and ``distributed = CHANNEL``, on a small
MoonFlowerScan in PtyPy; each rank saves its object, probe, the view IDs W1Net trained on
the object error and whether it writes the .ptyr file to ``OUT/rank{r}.npz``.

Usage: ``distributed_engine_worker.py OUT CHANNEL``
"""
import os
import sys
from pathlib import Path

import numpy as np
from helpers import object_error, parameter_tree, run

if __name__ == '__main__':
    out, channel = sys.argv[1], sys.argv[2]
    engines = [{'name': 'DM', 'numiter': 6},
               {'name': 'W1Net', 'numiter': 6, 'distributed': channel,
                'network': {'start': 3, 'depth': 2, 'width': 4, 'binning': 1}}]
    # under msrun every process simulates the scan itself: other noise on each, so DM hands W1Net
    # different objects, which W1Net must replace by rank 0's for the ranks to start alike
    seed = int(os.environ.get('RANK_ID', 0)) if channel == 'mindspore' else 0
    P = run(parameter_tree(Path(out) / 'home', engines, frames=40, shape=64), seed=seed)
    engine = list(P.engines.values())[-1]
    np.savez(f'{out}/rank{engine.communicator.rank}.npz', object=next(iter(P.obj.storages.values())).data[0],
             probe=next(iter(P.probe.storages.values())).data, views=engine._view_ids, error=object_error(P),
             writes_ptyr=bool(P.p.io.rfile))
