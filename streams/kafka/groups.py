"""Consumer groups deleted with their committed offsets (DeleteGroups), for a generation's groups
when it is deleted: a group left behind would hand its offsets to whatever later reuses its name.

aiokafka's admin client has no call for it: the request goes through the admin's connection to
the group's coordinator.
"""

from __future__ import annotations

from aiokafka.errors import for_code
from aiokafka.protocol.admin import DeleteGroupsRequest

from streams.kafka.clients import new_admin
from streams.settings import Settings

GROUP_ID_NOT_FOUND = 69


async def delete_groups(settings: Settings, groups: list[str]) -> dict[str, str | None]:
    """Each group -> None once deleted (or if it never existed), else why not."""
    found: dict[str, str | None] = {}
    admin = new_admin(settings)
    await admin.start()
    try:
        for group in groups:
            node = await admin.find_coordinator(group)
            response = await admin._client.send(node, DeleteGroupsRequest([group]))
            for name, code in response.results:
                found[name] = None if code in (0, GROUP_ID_NOT_FOUND) else for_code(code).__name__
    finally:
        await admin.close()
    return found
