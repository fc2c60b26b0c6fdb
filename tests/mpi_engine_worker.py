"""Run under ``mpiexec -n N``: DM, then W1Net with its network, on a small MoonFlowerScan in
PtyPy; each rank saves its object, probe, active view IDs and object error to ``OUT/rank{r}.npz``."""
import sys
from pathlib import Path

import numpy as np
from helpers import object_error, parameter_tree, run

ENGINES = [{'name': 'DM', 'numiter': 6},
           {'name': 'W1Net', 'numiter': 6, 'network': {'start': 3, 'depth': 2, 'width': 4, 'binning': 1}}]

if __name__ == '__main__':
    from ptypy.utils import parallel
    out = sys.argv[1]
    P = run(parameter_tree(Path(out) / 'home', ENGINES, frames=40, shape=64))
    views = [v.ID for v in P.diff.views.values() if v.active]
    np.savez(f'{out}/rank{parallel.rank}.npz', object=next(iter(P.obj.storages.values())).data[0],
             probe=next(iter(P.probe.storages.values())).data, views=views, error=object_error(P))
