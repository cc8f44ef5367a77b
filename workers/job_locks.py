"""The advisory lock a worker holds on each job it runs (see workers.runner), and the check the reconciler makes
for it. The lock lives in the worker's database session, so it goes when the worker dies."""
import contextlib

from django.db import InterfaceError, OperationalError, connection

# The database connection was lost (a restart, a failover, a terminated backend): worth a retry, like storage.
DATABASE_LOST = (OperationalError, InterfaceError)
# pg_advisory_lock(namespace, job id) held while a job runs; reports use 0x7201-0x7203 for their own steps.
JOB_LOCK_NAMESPACE = 0x7301


@contextlib.contextmanager
def job_lock(job_id: int):
    """pg_try_advisory_lock on a job for the duration: the runner's for its job, a sweep's for each job it runs
    inline (the reconciler leaves a locked running job alone). Yields whether it was acquired."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [JOB_LOCK_NAMESPACE, int(job_id)])
        acquired = cursor.fetchone()[0]
    try:
        yield acquired
    finally:
        # When the connection was lost (and closed) the session, and the lock with it, is gone already.
        if acquired and connection.connection is not None:
            with contextlib.suppress(*DATABASE_LOST), connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [JOB_LOCK_NAMESPACE, int(job_id)])


def job_is_running_somewhere(job_id: int) -> bool:
    """Whether a worker session holds the job's lock (reads pg_locks; takes nothing)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2 "
            "AND classid = %s AND objid = %s "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
            [JOB_LOCK_NAMESPACE, int(job_id)])
        return cursor.fetchone()[0]
