"""Config versions of agents, kept in the shared cache so every process sees an edit.

Built agno objects are cached per process under (user, agent, version). Saving an agent, its
model config or one of its knowledge bases bumps the agent's version; every process then
rebuilds on its next use. This module does not import agno.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from django.core.cache import cache
from django.db import transaction

VERSION_KEY = "agentos_version_agent_{}"


def _key(agent_pk: int) -> str:
    return VERSION_KEY.format(agent_pk)


def agent_versions(agent_pks: Iterable[int]) -> dict[int, str | None]:
    """The current version of each agent; None when the shared cache cannot be reached."""
    pks = list(agent_pks)
    keys = {_key(pk): pk for pk in pks}
    found = cache.get_many(list(keys))
    missing = [key for key in keys if key not in found]
    for key in missing:
        # A first version that differs from any earlier one, agreed on by every process
        # through the atomic add, so a flushed cache still invalidates what processes hold.
        cache.add(key, time.time_ns(), timeout=None)
    if missing:
        found.update(cache.get_many(missing))
    return {pk: (str(found[key]) if key in found else None) for key, pk in keys.items()}


def bump(agent_pks: Iterable[int]) -> None:
    """Give these agents new versions, now and again once the transaction commits."""
    pks = list(agent_pks)
    if not pks:
        return
    _bump(pks)
    # Bumping again after commit closes the window where another process rebuilds from rows
    # that are not committed yet and caches them under the new version.
    transaction.on_commit(lambda: _bump(pks))


def _bump(pks: list[int]) -> None:
    cache.set_many({_key(pk): time.time_ns() for pk in pks}, timeout=None)
