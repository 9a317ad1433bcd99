"""Connection names to URIs: from the environment or a secrets file, never from the model files.

A source declares ``Postgres(connection="shop", ...)``; the URI comes from
``STARSMITH_CONN_SHOP``, else from the ``[connections]`` table of the secrets file the project
names (``secrets_file = "~/.config/starsmith/secrets.toml"`` in its config, or
``STARSMITH_SECRETS_FILE``). The environment wins, so a deployment can override one connection
without editing the file. A URI is never logged or shown: :func:`mask` hides its password in
any message that might quote it.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from urllib.parse import unquote

from starsmith.errors import ConfigError

SECRETS_ENV = "STARSMITH_SECRETS_FILE"
_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?P<tail>@)",
                       re.IGNORECASE)
_KEYWORD = re.compile(r"(?P<head>password\s*=\s*)(?P<pw>'[^']*'|\S+)", re.IGNORECASE)


def env_name(name: str) -> str:
    return f"STARSMITH_CONN_{name.upper()}"


def mask(text: str, *secrets: str) -> str:
    """``text`` with any URI's password, ``password=...`` keyword and given secret replaced by
    ``***`` (driver messages may quote what they were given)."""
    out = text
    # the given secrets first, as written and decoded (a URI's p%40ss is p@ss to the driver):
    # a pattern replacing part of one first would leave the rest unmatched
    for secret in sorted({s for raw in secrets if raw for s in (raw, unquote(raw))}, key=len,
                         reverse=True):
        out = out.replace(secret, "***")
    out = _PASSWORD.sub(lambda m: f"{m['head']}***{m['tail']}", out)
    return _KEYWORD.sub(lambda m: f"{m['head']}***", out)


def password_of(uri: str) -> str:
    """The URI's password (to scrub it from messages), or ''."""
    found = _PASSWORD.search(uri)
    if found:
        return found["pw"]
    keyword = _KEYWORD.search(uri)
    return keyword["pw"].strip("'") if keyword else ""


def secrets_path(project_file: Path | None) -> Path | None:
    given = os.environ.get(SECRETS_ENV)
    if given:
        return Path(given).expanduser()
    return project_file


def resolve(name: str, secrets_file: Path | None) -> str:
    """The URI of connection ``name``; a ConfigError saying where it was looked for if none."""
    from_env = os.environ.get(env_name(name), "").strip()
    if from_env:
        return from_env
    path = secrets_path(secrets_file)
    if path is not None and path.is_file():
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"cannot read the secrets file: {type(err).__name__}",
                              where=str(path), fix="Fix its TOML syntax") from None
        table = raw.get("connections", {})
        value = table.get(name) if isinstance(table, dict) else None
        if value is None and isinstance(table, dict):  # names are case-insensitive
            value = next((v for k, v in table.items() if k.lower() == name.lower()), None)
        if isinstance(value, str) and value.strip():
            return value.strip()
    looked = [env_name(name)]
    if path is not None:
        looked.append(f"[connections] {name} in {path}" + ("" if path.is_file() else
                                                            " (no such file)"))
    raise ConfigError(
        f"connection {name!r} is not configured", where=" or ".join(looked),
        fix=f"Set {env_name(name)}=postgresql://USER:PASSWORD@HOST:PORT/DB, or add it to the "
            "[connections] table of the secrets file the project names (secrets_file = ...)")
