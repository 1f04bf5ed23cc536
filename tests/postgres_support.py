"""A real PostgreSQL server on 127.0.0.1 for tests and benchmarks (imported, not a conftest).

``initdb`` into a fresh temp folder, ``pg_ctl start`` on a free port with the socket in that
folder, one database; :meth:`PostgresServer.stop` stops it and removes the folder. PostgreSQL
refuses to run as root, so under root its commands run as the ``postgres`` user (``nobody``
where there is none) through ``runuser``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from mlflow_finops.ray_cluster import free_ports

__all__ = ["PostgresServer", "pg_bin_dir", "why_no_postgres"]


def pg_bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: on PATH, or Debian's ``/usr/lib/postgresql/N/bin``."""
    found = shutil.which("initdb")
    if found and (Path(found).parent / "pg_ctl").exists():
        return Path(found).parent
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    return None


def _run_as() -> list[str] | None:
    """The command prefix that drops root (``[]`` when not root); None when root cannot be dropped."""
    if os.geteuid() != 0:
        return []
    if shutil.which("runuser") is None:
        return None
    return ["runuser", "-u", _owner().pw_name, "--"]


def _owner() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise LookupError("no 'postgres' or 'nobody' user to run PostgreSQL as")


def why_no_postgres() -> str | None:
    """Why a PostgreSQL server cannot be started here, or None when it can."""
    if pg_bin_dir() is None:
        return "no PostgreSQL server binaries (initdb, pg_ctl) here: run .ci/install-postgres"
    if _run_as() is None:
        return "running as root without runuser: PostgreSQL refuses to run as root"
    try:  # the driver SQLAlchemy picks for postgresql:// (psycopg2 up to 2.0, psycopg 3 from 2.1)
        from sqlalchemy.engine import make_url

        make_url("postgresql://").get_dialect().import_dbapi()
    except ImportError as exc:
        return f"no PostgreSQL driver ({exc}): pip install 'mlflow-finops[postgres]'"
    return None


class PostgresServer:
    """One PostgreSQL cluster in a temp folder, on 127.0.0.1:``port``, with database ``database``.

    Durability is off (``fsync``, ``synchronous_commit``, ``full_page_writes``): the data is
    thrown away at :meth:`stop`, and tests should not wait on the disk.
    """

    def __init__(self, user: str = "mlflow", database: str = "mlflow") -> None:
        bin_dir = pg_bin_dir()
        if bin_dir is None:
            raise RuntimeError(why_no_postgres())
        self.bin = bin_dir
        self.user = user
        self.database = database
        self.port = free_ports(1)[0]
        self.root = Path(tempfile.mkdtemp(prefix="mlflow-finops-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.uri = f"postgresql://{user}@127.0.0.1:{self.port}/{database}"
        self._started = False

    def _pg(self, tool: str, *args: str) -> None:
        prefix = _run_as()
        if prefix is None:
            raise RuntimeError(why_no_postgres())
        done = subprocess.run([*prefix, str(self.bin / tool), *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr[-2000:]}{log}")

    def start(self) -> None:
        if os.geteuid() == 0:
            owner = _owner()
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        try:
            self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", self.user, "-E", "UTF8", "--no-locale",
                     "--no-sync")
            self._started = True  # from here on, stop() tries pg_ctl stop (harmless when it did not start)
            self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options, "start")
            self.execute(f'CREATE DATABASE "{self.database}"', database="postgres")
        except BaseException:
            self.stop()
            raise

    def execute(self, sql: str, database: str | None = None) -> list[tuple]:
        """Run one statement outside a transaction (as CREATE DATABASE needs); its rows, if any."""
        import sqlalchemy

        url = f"postgresql://{self.user}@127.0.0.1:{self.port}/{database or self.database}"
        engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as conn:
                result = conn.execute(sqlalchemy.text(sql))
                return [tuple(r) for r in result] if result.returns_rows else []
        finally:
            engine.dispose()

    def stop(self) -> None:
        try:
            if self._started and (self.data / "postmaster.pid").exists():
                self._pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
            self._started = False
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
