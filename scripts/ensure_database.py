"""Create the PostgreSQL database named in DATABASE_URL when it does not exist yet (idempotent)."""
import os
import sys
from urllib.parse import unquote, urlparse

import psycopg
from psycopg import sql

url = urlparse(os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/llm_registry"))
name = unquote(url.path.lstrip("/"))
connect = dict(host=url.hostname or "127.0.0.1", port=url.port or 5432, user=unquote(url.username or "postgres"),
               password=unquote(url.password or "") or None, dbname="postgres", autocommit=True)
try:
    with psycopg.connect(**connect) as connection:
        exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            print(f"created database {name}")
except psycopg.OperationalError as error:
    sys.exit(f"PostgreSQL is not reachable at {url.hostname}:{url.port or 5432}: {error}")
