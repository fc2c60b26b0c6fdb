"""Writing outputs without ever losing what the user had: checks before any compute, atomic writes.

Every output (results, figures, models, checkpoints) goes through :func:`check_output` before a
run starts and :func:`atomic_output` when it is written: a file or directory that exists is
replaced only when asked (``force``), and a crash while writing leaves the old one intact and no
half-written one behind.
"""
import contextlib
import os
import shutil


def check_output(path, force=False, what='output'):
    """Raise unless ``path`` can be written: ``FileExistsError`` if it exists and not ``force``,
    ``ValueError`` naming the folder if that does not exist or is not writable."""
    if os.path.exists(path) and not force:
        raise FileExistsError(f"{what} {path} exists; choose another path or pass --force to replace it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{what} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: the folder {folder} is not writable")


@contextlib.contextmanager
def atomic_output(path, force=False, what='output'):
    """Yield a temporary path beside ``path`` (same name ending) to write a file or a directory to;
    when the block succeeds it takes the place of ``path``, otherwise it is removed.

    ``path`` may exist only with ``force`` (checked first, as :func:`check_output` does).
    """
    check_output(path, force, what)
    folder, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(folder, f".partial-{os.getpid()}-{name}")
    _remove(temporary)
    try:
        yield temporary
    except BaseException:
        _remove(temporary)
        raise
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    os.replace(temporary, path)


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)
