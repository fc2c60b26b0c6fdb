"""Run under ``mpiexec -n N`` (channel ``mpi``) or ``msrun --worker_num=N`` (channel
``mindspore``): each rank reconstructs its shard of a simulated scan with the distributed
JointSolver and saves what it ends with to ``OUT/rank{r}.npz``.

Rank r holds frames r, r + N, r + 2N, ... (``shard``): the single-process solver in
tests/test_distributed.py composes its batches from the same shards.

Usage: ``distributed_solver_worker.py OUT EPOCHS SETTINGS_JSON CHANNEL``
"""
import json
import sys

import numpy as np

from helpers import make_solver

from ptypy_npu.device import select_device
from ptypy_npu.distributed import MindSporeCommunicator, communicator
from ptypy_npu.simulate import simulate_scan

SCAN = {'frame_size': 64, 'count': 30, 'photons': 1e6, 'seed': 3}


def shard(data, rank, size):
    """Rank ``rank``'s frames of ``data``: every ``size``-th frame from ``rank`` on."""
    return data.frames(np.arange(len(data.positions))[rank::size])


def channel_communicator(channel):
    if channel == 'mindspore':
        return MindSporeCommunicator()
    from mpi4py import MPI
    return communicator(MPI.COMM_WORLD)


if __name__ == '__main__':
    out, epochs, arguments, channel = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
    select_device('CPU')
    comm = channel_communicator(channel)
    data, _ = simulate_scan(**SCAN)
    solver = make_solver(shard(data, comm.rank, comm.size), arguments, communicator=comm)
    errors = solver.run(epochs)
    network = {} if solver.network is None else {f'network.{name}': p.asnumpy()
                                                 for name, p in solver.network.parameters_and_names()}
    np.savez(f'{out}/rank{comm.rank}.npz', object=solver.object, probe=solver.probe, errors=errors,
             losses=[h['loss'] for h in solver.history], **network)
