"""The processes of one reconstruction: what the solver needs of them, and nothing more.

:class:`JointSolver` sums gradients, batch illumination and Hessian-vector products over
the ranks with :meth:`allreduce` and learns the ranks' frame counts with :meth:`allgather`.
Two channels provide them:

* MPI (:class:`MPICommunicator`, launched with ``mpiexec``): the PtyPy engine hands it
  PtyPy's own communicator (``ptypy.utils.parallel.comm``), the channel PtyPy's engines
  use; a standalone script can hand it ``mpi4py.MPI.COMM_WORLD``. Sums pass through the host.
* MindSpore's collective communication (:class:`MindSporeCommunicator`, launched with
  ``msrun``): HCCL on Ascend, NCCL on GPU, MindSpore's own "mccl" on CPU. Its
  ``sums_in_graph`` tells the solver to sum the gradients inside the compiled step
  (``nn.DistributedGradReducer``), so on a device they never leave it.
"""
import numpy as np
from mindspore import Tensor, communication, nn, ops


class SingleProcess:
    """The communicator of a run in one process: every collective is the identity."""

    size = 1
    rank = 0
    sums_in_graph = False

    def allreduce(self, array, op='sum'):
        return array

    def allgather(self, value):
        return [value]


class MPICommunicator:
    """Collectives over an mpi4py communicator ``comm``."""

    sums_in_graph = False

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


class _Collective(nn.Cell):
    """One collective primitive of MindSpore in a cell of its own (graph mode runs cells)."""

    def __init__(self, primitive):
        super().__init__()
        self.primitive = primitive

    def construct(self, tensor):
        return self.primitive(tensor)


class MindSporeCommunicator:
    """Collectives of MindSpore's world group, for processes launched by ``msrun`` (or, on
    Ascend, by a rank table or ``mpirun`` as MindSpore documents).

    Initialises MindSpore's collective communication on the device already selected
    (:func:`~ptypy_npu.solver.select_device`); the backend follows the device (hccl,
    nccl, mccl). Raises ``RuntimeError`` when the process was not launched for it.
    """

    sums_in_graph = True

    def __init__(self):
        if not communication.GlobalComm.INITED:
            try:
                communication.init()
            except Exception as error:  # MindSpore raises RuntimeError, sometimes ValueError
                raise RuntimeError(
                    "MindSpore's collective communication could not start: launch the processes with "
                    "`msrun --worker_num=N --local_worker_num=N SCRIPT` (CPU and GPU) or as MindSpore "
                    f"documents for Ascend (README, 'Scale out'); MindSpore said: {error}") from error
        self.rank = communication.get_rank()
        self.size = communication.get_group_size()
        self._collectives = {}

    def _collective(self, kind):
        """The compiled :class:`_Collective` of ``kind`` ('allreduce' (sum) or 'allgather'), cached."""
        if kind not in self._collectives:
            self._collectives[kind] = _Collective(ops.AllGather() if kind == 'allgather' else ops.AllReduce())
        return self._collectives[kind]

    def allreduce(self, array, op='sum'):
        """Reduce the float32 numpy ``array`` over all ranks, in place (``op``: 'sum' or 'max'); returns it.

        float32 only, and 'max' through a gather: MindSpore's CPU collectives sum float32 alone.
        """
        if not isinstance(array, np.ndarray) or array.dtype != np.float32:
            raise TypeError("allreduce over MindSpore's collectives needs a float32 numpy array")
        if op == 'max':
            gathered = self._collective('allgather')(Tensor(array.reshape(1, -1))).asnumpy()
            array[...] = gathered.max(axis=0).reshape(array.shape)
        else:
            array[...] = self._collective('allreduce')(Tensor(array)).asnumpy().reshape(array.shape)
        return array

    def allgather(self, value):
        """The list of every rank's integer ``value``, in rank order."""
        gathered = self._collective('allgather')(Tensor(np.array([value], np.int32)))
        return [int(v) for v in gathered.asnumpy()]


def allreduce_arrays(communicator, arrays):
    """numpy ``arrays`` (real or complex) summed over the ranks through one float32 buffer (one
    collective call); complex arrays travel as real/imag parts. Returns new arrays in their dtypes,
    or ``arrays`` themselves in a single process."""
    if communicator.size == 1:
        return list(arrays)
    parts = [np.stack([a.real, a.imag]) if np.iscomplexobj(a) else np.asarray(a) for a in arrays]
    buffer = communicator.allreduce(np.concatenate([p.ravel() for p in parts]).astype(np.float32, copy=False))
    bounds = np.cumsum([0] + [p.size for p in parts])
    totals = []
    for array, part, low, high in zip(arrays, parts, bounds[:-1], bounds[1:]):
        total = buffer[low:high].reshape(part.shape)
        totals.append((total[0] + 1j * total[1] if np.iscomplexobj(array) else total).astype(np.asarray(array).dtype))
    return totals


def allreduce_tensors(communicator, tensors):
    """float32 MindSpore ``tensors`` summed over the ranks (one collective call); the tensors
    themselves in a single process."""
    if communicator.size == 1:
        return tuple(tensors)
    return tuple(Tensor(t) for t in allreduce_arrays(communicator, [t.asnumpy() for t in tensors]))


def communicator(comm=None):
    """:class:`MPICommunicator` over ``comm`` when it spans more than one rank, else :class:`SingleProcess`."""
    if comm is None or comm.Get_size() == 1:
        return SingleProcess()
    return MPICommunicator(comm)
