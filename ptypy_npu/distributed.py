"""The processes of one reconstruction: what the solver needs of MPI, and nothing more.

:class:`JointSolver` sums gradients, batch illumination and Hessian-vector products over
the ranks with :meth:`allreduce` and learns the ranks' frame counts with :meth:`allgather`.
The PtyPy engine hands it PtyPy's own communicator (``ptypy.utils.parallel.comm``), the
channel PtyPy's engines use; a standalone script can hand it ``mpi4py.MPI.COMM_WORLD``.
"""
import numpy as np


class SingleProcess:
    """The communicator of a run in one process: every collective is the identity."""

    size = 1
    rank = 0

    def allreduce(self, array, op='sum'):
        return array

    def allgather(self, value):
        return [value]


class MPICommunicator:
    """Collectives over an mpi4py communicator ``comm``."""

    def __init__(self, comm):
        from mpi4py import MPI
        self.comm = comm
        self.size = comm.Get_size()
        self.rank = comm.Get_rank()
        self._ops = {'sum': MPI.SUM, 'max': MPI.MAX}
        self._in_place = MPI.IN_PLACE

    def allreduce(self, array, op='sum'):
        """Reduce the C-contiguous numpy ``array`` over all ranks, in place (``op``: 'sum' or 'max'); returns it."""
        if not (isinstance(array, np.ndarray) and array.flags.c_contiguous):
            raise TypeError("allreduce needs a C-contiguous numpy array")
        self.comm.Allreduce(self._in_place, array, op=self._ops[op])
        return array

    def allgather(self, value):
        """The list of every rank's ``value`` (any picklable object), in rank order."""
        return self.comm.allgather(value)


def communicator(comm=None):
    """:class:`MPICommunicator` over ``comm`` when it spans more than one rank, else :class:`SingleProcess`."""
    if comm is None or comm.Get_size() == 1:
        return SingleProcess()
    return MPICommunicator(comm)
