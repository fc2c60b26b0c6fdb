"""Run under ``mpiexec -n N`` (channel ``mpi``) or ``msrun --worker_num=N`` (channel
``mindspore``): each rank stitches its shard of a simulated scan with a trained model,
the ranks summing their stitching weights, and saves the object to ``OUT/rank{r}.npz``.

Usage: ``distributed_infer_worker.py OUT MODEL_DIRECTORY CHANNEL``
"""
import sys

import numpy as np
from distributed_solver_worker import SCAN, channel_communicator, shard

from ptypy_npu.models import load_model
from ptypy_npu.simulate import simulate_scan

if __name__ == '__main__':
    out, directory, channel = sys.argv[1:4]
    model = load_model(directory)
    comm = channel_communicator(channel)
    data, _ = simulate_scan(**SCAN)
    obj = model.reconstruct(shard(data, comm.rank, comm.size), communicator=comm)
    np.savez(f'{out}/rank{comm.rank}.npz', object=obj)
